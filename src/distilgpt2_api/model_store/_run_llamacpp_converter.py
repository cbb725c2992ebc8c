"""Run llama.cpp's convert_hf_to_gguf.py as published, with two overrides for models it would refuse.

    python -m distilgpt2_api.model_store._run_llamacpp_converter LLAMA_CPP_DIR [convert_hf_to_gguf.py arguments]

The converter names a BPE pre-tokenizer by hashing the token ids of a test string and refuses a tokenizer whose
hash it does not know (the test suite's tiny BPE, a fine-tune's retrained one). The GGUF's tokenizer is never used
here (the service tokenizes with tokenizer.json and feeds token ids), so an unknown hash is written as "default"
instead of stopping the conversion. Known hashes (GPT-2's, SmolLM2's) keep their own names.
And a GPT-2 config saved by transformers 5 names its context n_positions only: the converter's n_ctx is filled in.
"""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path
from typing import Any

UNKNOWN_PRE_TOKENIZER = "default"


def _answer_default_for_unknown_hashes() -> None:
    import conversion.base as base  # llama.cpp's own module, found through sys.path

    owners = [cls for cls in vars(base).values() if isinstance(cls, type) and "get_vocab_base_pre" in vars(cls)]
    if not owners:
        raise SystemExit("this convert_hf_to_gguf.py has no get_vocab_base_pre to override")
    for owner in owners:
        original = owner.get_vocab_base_pre

        def get_vocab_base_pre(self: Any, tokenizer: Any, _original: Any = original) -> str:
            try:
                return str(_original(self, tokenizer))
            except NotImplementedError:
                logging.getLogger(__name__).warning(
                    "unknown BPE pre-tokenizer: written as %r (this service never uses the GGUF's tokenizer)",
                    UNKNOWN_PRE_TOKENIZER,
                )
                return UNKNOWN_PRE_TOKENIZER

        owner.get_vocab_base_pre = get_vocab_base_pre


def _fill_in_gpt2_context_length() -> None:
    # GPT-2's converter reads the context length as n_ctx, a key transformers 5 no longer writes (n_positions).
    from conversion.base import ModelBase

    original = ModelBase.load_hparams

    def load_hparams(dir_model: Path, is_mistral_format: bool) -> dict[str, Any]:
        hparams: dict[str, Any] = original(dir_model, is_mistral_format)
        if hparams.get("model_type") == "gpt2" and "n_positions" in hparams:
            hparams.setdefault("n_ctx", hparams["n_positions"])
        return hparams

    ModelBase.load_hparams = staticmethod(load_hparams)  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    source = Path(argv[1]).resolve()
    script = source / "convert_hf_to_gguf.py"
    sys.path[:0] = [str(source), str(source / "gguf-py")]  # its `conversion` package and its own gguf-py
    _answer_default_for_unknown_hashes()
    _fill_in_gpt2_context_length()
    sys.argv = [str(script), *argv[2:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv)
