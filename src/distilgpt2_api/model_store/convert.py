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
import torch
from ctranslate2.converters import TransformersConverter
from transformers import AutoModelForCausalLM, AutoTokenizer

from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR, QUALITY_FILE
from distilgpt2_api.model_store.quality import ctranslate2_perplexity, model_context_length, perplexity

QUALITY_TOLERANCE = 0.05  # at most 5% higher perplexity than fp32
PROBE_TOKENS = 16  # and the same greedy answer as fp32 to a probe, this long
PROBE_QUESTION = "What is the capital of France?"  # asked through the chat template, when the model has one
# Fastest first. "float32" runs the int8-stored weights in float32 arithmetic: it avoids
# int8 activations, by far the larger source of error (see docs/PERFORMANCE.md).
COMPUTE_TYPES = ("int8", "float32")

# Plain English, written for this purpose, scored to compare compute types.
QUALITY_TEXT = (
    "The library in the centre of the town was built more than a hundred years ago. Every afternoon, children "
    "come to read and to do their homework, and the librarian helps them find the books they need. On Saturdays "
    "the reading room fills with older visitors who study maps of the region, look up old newspapers, or simply "
    "sit by the tall windows with a novel. The building has been repaired many times: the roof was replaced after "
    "a storm, the heating was modernised, and a small cafe opened in the former storage room. Most people in the "
    "town agree that the library is the heart of their community, a quiet place where anyone is welcome and where "
    "curiosity is treated as a virtue rather than a distraction."
)


class _Converter(TransformersConverter):  # type: ignore[misc]
    def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
        # CTranslate2 writes unk_token into its config and refuses a missing one;
        # byte-level BPE tokenizers never produce it, so EOS is a harmless stand-in.
        if tokenizer.unk_token is None:
            tokenizer.unk_token = tokenizer.eos_token
        return tokenizer


def convert_for_ctranslate2(model_dir: Path) -> Path:
    """Write `model_dir/ctranslate2-int8/`: int8 weights, and the compute type that keeps quality."""
    output = model_dir / CT2_SUBDIR
    partial = model_dir / f".{CT2_SUBDIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _Converter(str(model_dir), low_cpu_mem_usage=True).convert(str(partial), quantization="int8", force=True)
    report = choose_compute_type(model_dir, partial)
    (partial / QUALITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)  # a half-written conversion never looks ready
    return output


def choose_compute_type(model_dir: Path, converted: Path) -> dict[str, Any]:
    """The fastest compute type whose perplexity on QUALITY_TEXT stays within QUALITY_TOLERANCE of fp32 and whose
    greedy answer to a probe is fp32's: average perplexity can hide a collapse on a near-tie (seen: int8 on an
    AVX-512 VNNI CPU, +2% perplexity, a chat answer in the wrong language)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    token_ids = tokenizer(QUALITY_TEXT)["input_ids"][: model_context_length(model)]
    reference = perplexity(model, token_ids)
    probe = _probe_ids(tokenizer)
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([probe]), max_new_tokens=PROBE_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    reference_answer = output[0, len(probe) :].tolist()
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
        (c for c in COMPUTE_TYPES if agrees[c] and scores[c] <= reference * (1 + QUALITY_TOLERANCE)),
        COMPUTE_TYPES[-1],
    )
    return {
        "compute_type": chosen,
        "reference_perplexity": reference,
        "perplexity": scores,
        "tolerance": QUALITY_TOLERANCE,
        "text_tokens": len(token_ids),
        "greedy_probe_agrees": agrees,
        "probe_tokens": len(reference_answer),
    }


def _probe_ids(tokenizer: Any) -> list[int]:
    """A chat model is probed through its template; any other with the quality text's first sentence."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": PROBE_QUESTION}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(QUALITY_TEXT.split(". ")[0])["input_ids"])
