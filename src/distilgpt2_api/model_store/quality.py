"""A quick quality signal for a loaded model: perplexity on a piece of text."""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str) -> float:
    """exp(mean next-token cross-entropy) of `text`: ~vocab size for random weights, tens for a real LM."""
    input_ids = tokenizer(text, return_tensors="pt").input_ids[:, : _context_length(model)]
    if input_ids.shape[1] < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    with torch.inference_mode():
        loss = model(input_ids=input_ids, labels=input_ids).loss
    return math.exp(loss.item())


def _context_length(model: PreTrainedModel) -> int:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1024
