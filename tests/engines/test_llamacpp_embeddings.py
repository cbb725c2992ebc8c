"""The llama.cpp engine's embeddings (`embed`): transformers' hidden states pooled as the model says (mean for a
causal LM, the GGUF's own pooling for a sentence-embedding BERT prepared by prepare-model), unit length, the same
whether inputs come together or one by one, and computed beside generation without changing it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from distilgpt2_api.engines import ModelInfo
from distilgpt2_api.engines.base import Chunk, TextTokenizer
from distilgpt2_api.engines.llamacpp_engine import EMBED_SEQUENCES, LlamaCppEngine

from model_factory import BERT_CONTEXT, Pooling, prepared_tiny_bert, reference_embedding

TEXTS = (
    "Once upon a time there was a little library in the town",
    "The children came to read",
    "On Saturdays the reading room fills with older visitors who study maps",
    "Most people agree",
)
# The float32 GGUF against transformers in float32: the KV cache's float16 and the order of sums differ.
ATOL = 2e-3


@pytest.fixture(scope="module")
def gpt2(model_dir: Path) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(ModelInfo.read(model_dir), threads=1, slots=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module", params=["cls", "mean"])
def bert_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_tiny_bert(tmp_path_factory.mktemp("models"), request.param)


def ids_of(model_dir: Path) -> list[list[int]]:
    tokenizer = TextTokenizer(model_dir)
    return [tokenizer.encode(text) for text in TEXTS]


def test_a_causal_lm_embeds_the_mean_of_its_last_hidden_states(gpt2: LlamaCppEngine, model_dir: Path) -> None:
    assert gpt2.pooling == "mean" and gpt2.embedding_size == 64 and gpt2.embedding_tokens == 256
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()  # GPT2Model: ln_f's output
    inputs = ids_of(model_dir)
    vectors = np.array(gpt2.embed(inputs))
    assert vectors.shape == (len(inputs), 64)
    for ids, vector in zip(inputs, vectors, strict=True):
        with torch.inference_mode():
            mean = model(torch.tensor([ids])).last_hidden_state[0].mean(dim=0)
        np.testing.assert_allclose(vector, (mean / mean.norm()).numpy(), atol=ATOL)


def test_vectors_are_unit_length_and_the_same_together_or_one_by_one(gpt2: LlamaCppEngine, model_dir: Path) -> None:
    inputs = ids_of(model_dir) * 10  # 40 inputs: more than one call's EMBED_SEQUENCES
    assert len(inputs) > EMBED_SEQUENCES
    together = np.array(gpt2.embed(inputs))
    alone = np.array([gpt2.embed([ids])[0] for ids in inputs[:4]])
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together[:4], alone, atol=1e-5)
    np.testing.assert_allclose(together[4:8], alone, atol=1e-5)  # same text, another call and position in it


def test_a_too_long_or_empty_input_is_refused(gpt2: LlamaCppEngine) -> None:
    with pytest.raises(ValueError, match="1 to 256"):
        gpt2.embed([[1] * 257])
    with pytest.raises(ValueError, match="0 tokens"):
        gpt2.embed([[]])


def test_generation_is_unchanged_while_embeddings_run(gpt2: LlamaCppEngine, model_dir: Path) -> None:
    """The step loop's thread feeds the generation context while another thread embeds in its own context."""
    prompt = ids_of(model_dir)[2]
    alone = gpt2.forward([Chunk(slot=0, token_ids=prompt, start=0)])
    inputs = ids_of(model_dir) * 8
    expected = np.array(gpt2.embed(inputs))
    stop, embedded, failures = threading.Event(), [], []

    def embed_until_stopped() -> None:
        try:
            while not stop.is_set():
                embedded.append(np.array(gpt2.embed(inputs)))
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(error)

    worker = threading.Thread(target=embed_until_stopped)
    worker.start()
    try:
        for _ in range(20):
            np.testing.assert_array_equal(gpt2.forward([Chunk(slot=0, token_ids=prompt, start=0)]), alone)
    finally:
        stop.set()
        worker.join()
    assert not failures and embedded
    for vectors in embedded:
        np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_a_prepared_sentence_embedding_bert_embeds_with_its_own_pooling(bert_dir: Path) -> None:
    pooling: Pooling = "cls" if "cls" in bert_dir.name else "mean"
    info = ModelInfo.read(bert_dir)
    assert info.embedding_only and (bert_dir / "model.gguf").is_file() and (bert_dir / "manifest.json").is_file()
    engine = LlamaCppEngine(info, threads=1, slots=2)
    try:
        assert engine.pooling == pooling  # read from the GGUF, written there from 1_Pooling/config.json
        assert engine.embedding_tokens == BERT_CONTEXT
        inputs = ids_of(bert_dir)
        vectors = engine.embed(inputs)
        for ids, vector in zip(inputs, vectors, strict=True):
            np.testing.assert_allclose(vector, reference_embedding(bert_dir, ids, pooling).numpy(), atol=ATOL)
        with pytest.raises(RuntimeError, match="only embeds"):
            engine.forward([Chunk(slot=0, token_ids=inputs[0], start=0)])
    finally:
        engine.close()
