"""Prepare-time GGUF for the llama.cpp engine: `model.gguf`, written with llama.cpp's own converter.

The converter (convert_hf_to_gguf.py, its `conversion` package and its gguf-py) is taken as published from the
llama-cpp-python sdist of the pinned version, which vendors llama.cpp: `make install` extracts it once into
CONVERTER_DIR (`fetch_converter`), so preparing a model needs no network for it; without that step it is fetched
with pip (its cache, else the package index) on first use. Nothing of it is copied into this project.

    python -m distilgpt2_api.model_store.llamacpp_gguf fetch   # what `make install` runs
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from .errors import ModelStoreError, NetworkUnavailableError

PACKAGE = "llama-cpp-python"
PACKAGE_VERSION = "0.3.36"  # requirements.txt pins the same (a test keeps them equal)
GGUF_NAME = "model.gguf"  # engines.llamacpp_engine reads it
# float32: the safetensors' own weights, bit for bit (the engine matches transformers' logits tightly), and the
# lossless source that any quantized type (Q8_0 via llama_model_quantize) is made from without rounding twice.
GGUF_TYPE = "f32"
CONVERTER_DIR = Path(os.environ.get("LLAMA_CPP_CONVERTER_DIR") or Path(sys.prefix) / "share" / "distilgpt2-api")
_VENDORED = "vendor/llama.cpp"
_WANTED_FILES = ("convert_hf_to_gguf.py", "LICENSE")  # under vendor/llama.cpp/
_WANTED_DIRS = ("conversion/", "gguf-py/")
_RUNNER = Path(__file__).with_name("_run_llamacpp_converter.py")
CONVERT_TIMEOUT_S = 3600


def converter_dir(root: Path = CONVERTER_DIR) -> Path:
    """Where the pinned version's converter is (or goes): one directory per version."""
    return root / f"llama.cpp-from-{PACKAGE}-{PACKAGE_VERSION}"


def fetch_converter(root: Path = CONVERTER_DIR) -> Path:
    """The converter's directory, extracted from the pinned sdist on first use (pip download: cache, else index)."""
    target = converter_dir(root)
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".llama-cpp-sdist-", dir=root) as workdir:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
            "--retries", "2", "--timeout", "30", "--disable-pip-version-check",
            "-d", workdir, f"{PACKAGE}=={PACKAGE_VERSION}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        sdists = sorted(Path(workdir).glob("*.tar.gz"))
        if result.returncode != 0 or not sdists:
            raise NetworkUnavailableError(
                f"pip could not download the {PACKAGE}=={PACKAGE_VERSION} sdist (llama.cpp's GGUF converter): "
                f"{result.stderr.strip()[-800:]}"
            )
        staging = Path(workdir) / "converter"
        _extract_converter(sdists[0], staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # a half-extracted converter never looks ready
    return target


def _extract_converter(sdist: Path, dest: Path) -> None:
    try:
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                parts = PurePosixPath(member.name).parts
                inner = PurePosixPath(*parts[1:]).as_posix()  # without the top `llama_cpp_python-X/`
                if not inner.startswith(_VENDORED + "/") or not member.isfile():
                    continue
                relative = inner[len(_VENDORED) + 1 :]
                if relative in _WANTED_FILES or relative.startswith(_WANTED_DIRS):
                    member.name = relative
                    archive.extract(member, dest, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise ModelStoreError(f"cannot extract llama.cpp's converter from {sdist}: {error}") from error
    if not (dest / "convert_hf_to_gguf.py").is_file():
        raise ModelStoreError(f"{sdist.name} holds no {_VENDORED}/convert_hf_to_gguf.py")


def write_gguf(model_dir: Path, *, outtype: str = GGUF_TYPE, name: str = GGUF_NAME) -> Path:
    """Convert the transformers model in `model_dir` into `model_dir/<name>` (model.gguf) with llama.cpp's
    converter, in `outtype` (f32, f16, bf16, q8_0: the converter's own)."""
    source = fetch_converter()
    output = model_dir / name
    partial = model_dir / f".{name}.partial"
    command = [
        sys.executable, str(_RUNNER), str(source), str(model_dir),
        "--outtype", outtype, "--outfile", str(partial),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        partial.unlink(missing_ok=True)
        raise ModelStoreError(f"llama.cpp's converter took over {CONVERT_TIMEOUT_S} s on {model_dir}") from error
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ModelStoreError(
            f"llama.cpp's converter could not convert {model_dir} to GGUF: {result.stderr.strip()[-1500:]}"
        )
    os.replace(partial, output)
    return output


# What llama_model_quantize can make here, by the name the gate records (llama.cpp's LLAMA_FTYPE_MOSTLY_*).
QUANTIZED_TYPES = ("f16", "q8_0", "q4_k_m")


def quantize_gguf(
    model_dir: Path, ftype: str = "q8_0", *, source: str = GGUF_NAME, name: str | None = None, threads: int = 0
) -> Path:
    """Write `model_dir/<name>` (default model.<ftype>.gguf) from the float32 `model_dir/<source>` with the binding's
    llama_model_quantize, as `ftype`: one of QUANTIZED_TYPES.

    Needs llama-cpp-python (built by `make install`). Which file the engine serves is not chosen here: the GGUF
    quality gate (model_store/gguf_gate.py) does.
    """
    if ftype not in QUANTIZED_TYPES:
        raise ModelStoreError(f"unsupported GGUF quantization {ftype!r}; expected one of {', '.join(QUANTIZED_TYPES)}")
    from distilgpt2_api.engines.llamacpp_engine import llama  # the binding, with llama.cpp's log kept quiet

    ftypes = {
        "f16": llama.LLAMA_FTYPE_MOSTLY_F16,
        "q8_0": llama.LLAMA_FTYPE_MOSTLY_Q8_0,
        "q4_k_m": llama.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    }
    source_path = model_dir / source
    output = model_dir / (name or quantized_name(ftype))
    partial = model_dir / f".{output.name}.partial"
    params = llama.llama_model_quantize_default_params()
    params.ftype = ftypes[ftype]
    params.nthread = threads
    status = llama.llama_model_quantize(str(source_path).encode(), str(partial).encode(), params)
    if status != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ModelStoreError(f"llama.cpp could not quantize {source_path} to {ftype} (status {status})")
    os.replace(partial, output)
    return output


def quantized_name(ftype: str) -> str:
    return f"{Path(GGUF_NAME).stem}.{ftype}.gguf"


def can_quantize() -> bool:
    """Whether llama-cpp-python is installed here (`make install`; not in the image's model stage)."""
    return importlib.util.find_spec("llama_cpp") is not None


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        raise SystemExit("usage: python -m distilgpt2_api.model_store.llamacpp_gguf fetch")
    print(f"llama.cpp's GGUF converter: {fetch_converter()}")
