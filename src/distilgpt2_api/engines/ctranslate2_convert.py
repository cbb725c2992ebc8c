"""Prepare-time conversion of a transformers model directory for the CTranslate2 engine.

Needs torch and transformers, so it runs when a model is prepared (or an image is built),
never at cold start.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ctranslate2.converters import TransformersConverter

from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR


class _Converter(TransformersConverter):  # type: ignore[misc]
    def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
        # CTranslate2 writes unk_token into its config and refuses a missing one;
        # byte-level BPE tokenizers never produce it, so EOS is a harmless stand-in.
        if tokenizer.unk_token is None:
            tokenizer.unk_token = tokenizer.eos_token
        return tokenizer


def convert_for_ctranslate2(model_dir: Path, quantization: str = "int8") -> Path:
    """Write `model_dir/ctranslate2-int8/` from the transformers weights in `model_dir`."""
    output = model_dir / CT2_SUBDIR
    partial = model_dir / f".{CT2_SUBDIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _Converter(str(model_dir), low_cpu_mem_usage=True).convert(str(partial), quantization=quantization, force=True)
    shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)  # a half-written conversion never looks ready
    return output
