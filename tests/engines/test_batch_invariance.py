"""What a sequence computes does not depend on its batch mates, the KV cache's length or how its prompt was split.

On the real SmolLM2 (its shipped Q4_1 GGUF): llama.cpp's flash attention took other paths for a prompt of 64 tokens
or more in one call (tiled) and for a lone decode over 512 cached positions (split KV), and they changed the logits
by up to 1.5 against the path every other row takes; llamacpp/batch-invariant-attention.patch keeps every row on one
path, so the comparisons here are exact. Greedy answers then never depend on the prefix cache or on other requests,
and seeded ones draw from the same distributions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distilgpt2_api.engines.base import Chunk, ModelInfo
from distilgpt2_api.engines.llamacpp_engine import LlamaCppEngine

pytestmark = pytest.mark.real_weights

CONTEXT = 1024
THREADS = 2  # split KV splits the cache between threads: with one, it is the one-chunk path


@pytest.fixture(scope="module")
def engine(smollm2_llamacpp_dir: Path) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(ModelInfo.read(smollm2_llamacpp_dir), threads=THREADS, slots=4, context=CONTEXT)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompt(engine: LlamaCppEngine) -> list[int]:
    text = "The history of the Roman Empire spans many centuries, from the founding of the city to its fall. "
    ids = engine.tokenizer.encode(6 * text)
    assert len(ids) >= 96  # beyond one 64-row tile of flash attention
    return ids


OTHER = "Once upon a time in a small village by the sea there lived an old fisherman who"


def read(engine: LlamaCppEngine, slot: int, ids: list[int], splits: tuple[int, ...] = ()) -> np.ndarray:
    """The logits after `ids`, fed into an emptied `slot` in calls cut at `splits`."""
    engine.truncate(slot, 0)
    bounds = [0, *splits, len(ids)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        logits = engine.forward([Chunk(slot, ids[start:end], start)])[0]
    return logits


def test_a_prompt_read_whole_in_parts_or_token_by_token_gives_the_same_logits(
    engine: LlamaCppEngine, prompt: list[int]
) -> None:
    whole = read(engine, 0, prompt)
    assert np.array_equal(read(engine, 1, prompt, (70,)), whole)  # a prefix from the cache, then the rest
    tail_by_token = tuple(range(len(prompt) - 24, len(prompt)))  # as decoding reads them: one a call
    assert np.array_equal(read(engine, 2, prompt, tail_by_token), whole)


def test_a_prompt_read_beside_another_gives_its_logits_alone(engine: LlamaCppEngine, prompt: list[int]) -> None:
    alone = read(engine, 0, prompt)
    other = engine.tokenizer.encode(OTHER)
    engine.truncate(1, 0)
    engine.truncate(2, 0)
    together = engine.forward([Chunk(1, prompt, 0), Chunk(2, other, 0)])
    assert np.array_equal(together[0], alone)


def test_a_long_decode_alone_or_beside_others_gives_the_same_logits(engine: LlamaCppEngine) -> None:
    """Past 512 positions a lone decode took llama.cpp's split-KV path; with a batch mate, the one-chunk path."""
    long = engine.tokenizer.encode(60 * "Rome was not built in a day, and neither was its empire. ")[:700]
    other = engine.tokenizer.encode(OTHER)
    for slot in (0, 1):
        read(engine, slot, long)
    read(engine, 2, other)
    token = int(np.argmax(read(engine, 3, long)))
    alone = engine.forward([Chunk(0, [token], len(long))])[0]
    beside = engine.forward([Chunk(1, [token], len(long)), Chunk(2, [5], len(other))])[0]
    assert np.array_equal(alone, beside)
