"""Prepare-time conversion of a transformers model directory for the CTranslate2 engine.

Needs torch and transformers, so it runs when a model is prepared (or an image is built),
never at cold start. It also decides how the converted model may run: int8 arithmetic
only where it keeps perplexity within QUALITY_TOLERANCE of the fp32 weights and answers a probe as they do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ctranslate2
from ctranslate2.converters import TransformersConverter
from transformers import AutoTokenizer

from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR, QUALITY_FILE
from distilgpt2_api.model_store.quality import (  # noqa: F401 - the gate's constants, here since it began here
    PROBE_QUESTION,
    PROBE_TOKENS,
    QUALITY_TEXT,
    QUALITY_TOLERANCE,
    Reference,
    ctranslate2_perplexity,
    fp32_reference,
)

# Fastest first. "float32" runs the int8-stored weights in float32 arithmetic: it avoids
# int8 activations, by far the larger source of error (see docs/PERFORMANCE.md).
COMPUTE_TYPES = ("int8", "float32")


class _Converter(TransformersConverter):  # type: ignore[misc]
    def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
        # CTranslate2 writes unk_token into its config and refuses a missing one;
        # byte-level BPE tokenizers never produce it, so EOS is a harmless stand-in.
        if tokenizer.unk_token is None:
            tokenizer.unk_token = tokenizer.eos_token
        return tokenizer


def convert_for_ctranslate2(model_dir: Path, reference: Reference | None = None) -> Path:
    """Write `model_dir/ctranslate2-int8/`: int8 weights, and the compute type that keeps quality.

    `reference`: the fp32 weights' figures when the caller has them already (prepare computes them once for every
    gate); computed here otherwise."""
    output = model_dir / CT2_SUBDIR
    partial = model_dir / f".{CT2_SUBDIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _Converter(str(model_dir), low_cpu_mem_usage=True).convert(str(partial), quantization="int8", force=True)
    report = choose_compute_type(model_dir, partial, reference)
    (partial / QUALITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)  # a half-written conversion never looks ready
    return output


def choose_compute_type(model_dir: Path, converted: Path, reference: Reference | None = None) -> dict[str, Any]:
    """The fastest compute type whose perplexity on QUALITY_TEXT stays within QUALITY_TOLERANCE of fp32 and whose
    greedy answer to a probe is fp32's: average perplexity can hide a collapse on a near-tie (seen: int8 on an
    AVX-512 VNNI CPU, +2% perplexity, a chat answer in the wrong language)."""
    reference = reference or fp32_reference(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    token_ids, probe, reference_answer = reference.token_ids, reference.probe_ids, reference.answer
    scores: dict[str, float] = {}
    agrees: dict[str, bool] = {}
    for compute_type in COMPUTE_TYPES:
        generator = ctranslate2.Generator(str(converted), device="cpu", compute_type=compute_type)
        scores[compute_type] = ctranslate2_perplexity(generator, tokenizer.convert_ids_to_tokens(token_ids))
        answer = generator.generate_batch(
            [tokenizer.convert_ids_to_tokens(probe)],
            max_length=len(reference_answer),
            sampling_topk=1,
            include_prompt_in_result=False,
            end_token=[tokenizer.eos_token_id],
            return_end_token=True,  # fp32's answer holds its end token too
        )[0].sequences_ids[0]
        agrees[compute_type] = list(answer) == reference_answer
        del generator
    chosen = next(
        (c for c in COMPUTE_TYPES if agrees[c] and scores[c] <= reference.perplexity * (1 + QUALITY_TOLERANCE)),
        COMPUTE_TYPES[-1],
    )
    return {
        "compute_type": chosen,
        "reference_perplexity": reference.perplexity,
        "perplexity": scores,
        "tolerance": QUALITY_TOLERANCE,
        "text_tokens": len(token_ids),
        "greedy_probe_agrees": agrees,
        "probe_tokens": len(reference_answer),
    }
