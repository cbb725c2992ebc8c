"""Perplexity and the probe, the quality signals the model store uses: of the fp32 weights (the reference every
quality gate compares with), and of a CTranslate2 conversion.

Imports torch: prepare time only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from distilgpt2_api.engines.base import context_length

QUALITY_TOLERANCE = 0.05  # at most 5% higher perplexity than fp32
PROBE_TOKENS = 16  # and the same greedy answer as fp32 to a probe, this long
PROBE_QUESTION = "What is the capital of France?"  # asked through the chat template, when the model has one

# Plain English, written for this purpose, scored to compare compute types and GGUF types.
QUALITY_TEXT = (
    "The library in the centre of the town was built more than a hundred years ago. Every afternoon, children "
    "come to read and to do their homework, and the librarian helps them find the books they need. On Saturdays "
    "the reading room fills with older visitors who study maps of the region, look up old newspapers, or simply "
    "sit by the tall windows with a novel. The building has been repaired many times: the roof was replaced after "
    "a storm, the heating was modernised, and a small cafe opened in the former storage room. Most people in the "
    "town agree that the library is the heart of their community, a quiet place where anyone is welcome and where "
    "curiosity is treated as a virtue rather than a distraction."
)


@dataclass(frozen=True)
class Reference:
    """What the fp32 weights do, computed once per prepare and shared by every quality gate."""

    token_ids: list[int]  # QUALITY_TEXT, cut to the model's context
    perplexity: float  # of token_ids under the fp32 weights
    probe_ids: list[int]  # the probe prompt
    answer: list[int]  # fp32's greedy answer to it: up to PROBE_TOKENS tokens, its end token included if it stops

    def passes(self, perplexity: float, answer: Sequence[int]) -> bool:
        """The rule: perplexity within QUALITY_TOLERANCE of fp32's, and fp32's greedy answer to the probe."""
        return list(answer) == self.answer and perplexity <= self.perplexity * (1 + QUALITY_TOLERANCE)


def fp32_reference(model_dir: Path) -> Reference:
    """Load the fp32 model once and compute what the gates compare with: perplexity on QUALITY_TEXT and the probe's
    greedy answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    token_ids = list(tokenizer(QUALITY_TEXT)["input_ids"][: model_context_length(model)])
    probe = probe_ids(tokenizer)
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([probe]), max_new_tokens=PROBE_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    return Reference(
        token_ids=token_ids,
        perplexity=perplexity(model, token_ids),
        probe_ids=probe,
        answer=output[0, len(probe) :].tolist(),
    )


def probe_ids(tokenizer: Any) -> list[int]:
    """A chat model is probed through its template; any other with the quality text's first sentence."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": PROBE_QUESTION}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(QUALITY_TEXT.split(". ")[0])["input_ids"])


def model_context_length(model: PreTrainedModel) -> int:
    """The model's context window, from its config (as the serving engines read it)."""
    return context_length(model.config.to_dict()) or 1024


def perplexity(model: PreTrainedModel, token_ids: Sequence[int]) -> float:
    """exp(mean next-token cross-entropy) of `token_ids` under the fp32 model: ~vocab size for random weights."""
    if len(token_ids) < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    with torch.inference_mode():
        input_ids = torch.tensor([list(token_ids)])
        return math.exp(model(input_ids=input_ids, labels=input_ids).loss.item())


def ctranslate2_perplexity(generator: Any, tokens: list[str]) -> float:
    """The same figure under a ctranslate2.Generator (its `score_batch` gives per-token log-probabilities)."""
    log_probs = generator.score_batch([tokens])[0].log_probs
    return math.exp(-sum(log_probs) / len(log_probs))
