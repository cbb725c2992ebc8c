"""Model directories on disk: which files make a model, validation, and copying."""

from __future__ import annotations

import shutil
from fnmatch import fnmatch
from pathlib import Path

from .errors import ModelStoreError

# What a causal LM needs at inference time. Pickled weights (*.bin, *.pt) are deliberately absent:
# the service only loads safetensors.
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    # A sentence-transformers model's pooling (mean, CLS), which llama.cpp's converter writes into the GGUF.
    "modules.json",
    "*_Pooling/config.json",
)

# Any one of these file sets is a usable tokenizer.
_TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("vocab.json", "merges.txt"),
    ("tokenizer.model",),
)


def is_model_file(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def validate_model_dir(model_dir: Path) -> None:
    """Raise ModelStoreError naming what is missing unless `model_dir` holds config, safetensors and a tokenizer."""
    if not model_dir.is_dir():
        raise ModelStoreError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise ModelStoreError(f"{model_dir} is not a model directory: config.json is missing")
    if not any(model_dir.glob("*.safetensors")):
        raise ModelStoreError(f"{model_dir} has no *.safetensors weights (pickled .bin weights are not loaded)")
    if not any(all((model_dir / name).is_file() for name in names) for names in _TOKENIZER_FILE_SETS):
        raise ModelStoreError(
            f"{model_dir} has no tokenizer files (tokenizer.json, vocab.json + merges.txt, or tokenizer.model)"
        )


def copy_model_files(source: Path, dest: Path) -> None:
    """Copy the model files of `source` (MODEL_FILE_PATTERNS only: the top level, and a pooling config) into `dest`."""
    for path in sorted([*source.iterdir(), *source.glob("*/config.json")]):
        name = path.relative_to(source).as_posix()
        if path.is_file() and is_model_file(name):
            try:
                (dest / name).parent.mkdir(exist_ok=True)
                shutil.copy2(path, dest / name)  # follows symlinks, e.g. into the HF cache's blobs
            except OSError as error:
                raise ModelStoreError(f"cannot copy {path} to {dest}: {error}") from error
