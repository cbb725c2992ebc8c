"""Perplexity, the one quality signal the model store uses: of the fp32 weights, and of a CTranslate2 conversion.

Imports torch: prepare time only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from distilgpt2_api.engines.base import context_length


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
