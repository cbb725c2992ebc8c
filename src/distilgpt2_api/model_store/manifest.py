"""manifest.json: what a prepared model directory holds, where it came from, and its checksums.

A directory counts as prepared only once its manifest is written, and the manifest is always the
last file written, so a half-built directory never looks ready.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from distilgpt2_api.engines import EngineName

from .errors import ModelStoreError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
# The fast engine's int8 weights: engines.ctranslate2_engine.CT2_SUBDIR, not imported from there
# because that module imports ctranslate2 (a test keeps the two equal).
CT2_SUBDIR = "ctranslate2-int8"
# The llama.cpp engine's weights: engines.llamacpp_engine.GGUF_NAME (that module imports llama_cpp).
GGUF_NAME = "model.gguf"
# The GGUF quality gate's record (model_store/gguf_gate.py): read at prepare time only, so no engine fetches it.
QUALITY_RECORD = "quality.json"
SMALL_FILES = (".json", ".jinja")  # config, tokenizer, chat template: every engine reads them

# safetensors dtype codes -> the torch names people know.
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}


class FileEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    manifest_version: int = MANIFEST_VERSION
    source: str
    """How the model was prepared: hub, smollm2, s3 or local."""
    model_id: str
    """The model's name (Hub repo id, or the upstream name of a packaged model)."""
    revision: str | None = None
    """Hub commit, package version, or None when unknown."""
    parameter_count: int
    dtype: str
    size_bytes: int
    created_at: datetime
    files: dict[str, FileEntry]
    """Every file in the directory except manifest.json, by POSIX relative path."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(model_dir: Path) -> list[Path]:
    return sorted(
        p for p in model_dir.rglob("*") if p.is_file() and p.relative_to(model_dir).as_posix() != MANIFEST_NAME
    )


def _weights_summary(model_dir: Path) -> tuple[int, str]:
    """Parameter count and dtype(s), read from safetensors headers without loading the tensors."""
    from safetensors import safe_open  # only needed when writing a manifest

    count = 0
    dtypes: set[str] = set()
    for weights in sorted(model_dir.glob("*.safetensors")):
        with safe_open(weights, framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open is not iterable
                tensor = tensors.get_slice(name)
                shape = tensor.get_shape()
                numel = 1
                for dim in shape:
                    numel *= dim
                count += numel
                dtypes.add(_DTYPE_NAMES.get(tensor.get_dtype(), tensor.get_dtype()))
    return count, ",".join(sorted(dtypes)) or "unknown"


def write_manifest(model_dir: Path, *, source: str, model_id: str, revision: str | None = None) -> Manifest:
    """Checksum every file in `model_dir` and write its manifest.json (atomically, last)."""
    files = {
        path.relative_to(model_dir).as_posix(): FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
        for path in _model_files(model_dir)
    }
    parameter_count, dtype = _weights_summary(model_dir)
    manifest = Manifest(
        source=source,
        model_id=model_id,
        revision=revision,
        parameter_count=parameter_count,
        dtype=dtype,
        size_bytes=sum(entry.size for entry in files.values()),
        created_at=datetime.now(UTC),
        files=files,
    )
    # Write-then-rename so a reader never sees a truncated manifest.
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=model_dir)
    with os.fdopen(fd, "w") as stream:
        stream.write(manifest.model_dump_json(indent=2) + "\n")
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a different serving user
    os.replace(tmp, model_dir / MANIFEST_NAME)
    return manifest


def read_manifest(model_dir: Path) -> Manifest | None:
    """The directory's manifest, or None when it has none or it does not parse."""
    try:
        return Manifest.model_validate_json((Path(model_dir) / MANIFEST_NAME).read_bytes())
    except (OSError, ValidationError):
        return None


def engine_files(manifest: Manifest, engine: EngineName) -> dict[str, FileEntry]:
    """The manifest's files that `engine` reads (manifest.json itself aside).

    ctranslate2: the int8 subdirectory and the top-level JSON and Jinja files (config, generation config,
    tokenizer, chat template), never the fp32 weights. llamacpp: model.gguf (the type the GGUF gate chose) and those
    same small files. transformers: everything except the int8 subdirectory and the GGUF.
    None of them reads the top-level quality.json, the GGUF gate's record.
    """
    in_ct2 = {name: name.startswith(f"{CT2_SUBDIR}/") for name in manifest.files}
    small = {
        name
        for name in manifest.files
        if "/" not in name
        and name.endswith((".json", ".jinja"))
        and not name.endswith(".index.json")
        and name != QUALITY_RECORD
    }
    if engine == "ctranslate2":
        keep = small | {name for name in manifest.files if in_ct2[name]}
    elif engine == "llamacpp":
        keep = small | {name for name in manifest.files if _is_gguf(name)}
    elif engine == "transformers":
        keep = {name for name in manifest.files if not in_ct2[name] and not _is_gguf(name) and name != QUALITY_RECORD}
    else:
        raise ModelStoreError(f"unknown engine {engine!r}; expected ctranslate2, transformers or llamacpp")
    return {name: entry for name, entry in manifest.files.items() if name in keep}


def _is_gguf(name: str) -> bool:
    """model.gguf and its quantized versions (model.q8_0.gguf)."""
    return "/" not in name and name.startswith(GGUF_NAME.removesuffix(".gguf")) and name.endswith(".gguf")


def is_prepared(model_dir: Path, *, engine: EngineName | None = None) -> bool:
    """True when the manifest parses and every file it lists is there with its recorded size.

    With `engine`, only the files that engine reads must be there (see `engine_files`).
    Cheap on purpose (no hashing): directories are checksummed before they are published.
    """
    manifest = read_manifest(model_dir)
    if manifest is None:
        return False
    files = manifest.files if engine is None else engine_files(manifest, engine)
    for name, entry in files.items():
        path = Path(model_dir) / name
        if not path.is_file() or path.stat().st_size != entry.size:
            return False
    return True


def verify_file(path: Path, name: str, entry: FileEntry, *, origin: str) -> None:
    """Raise ModelStoreError unless `path` (listed as `name`) has the manifest's size and SHA-256."""
    if not path.is_file():
        raise ModelStoreError(f"{origin}: {name} is listed in {MANIFEST_NAME} but missing")
    if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
        raise ModelStoreError(f"{origin}: checksum mismatch for {name} (it differs from {MANIFEST_NAME})")


def verify_checksums(model_dir: Path, manifest: Manifest, *, origin: str) -> None:
    """Raise ModelStoreError naming the first file that is missing or differs from the manifest."""
    for name, entry in manifest.files.items():
        verify_file(model_dir / name, name, entry, origin=origin)
