"""`/v1/embeddings` on the real SmolLM2-135M-Instruct (smollm2_llamacpp_dir), mean-pooled, through the `openai` SDK:
a paraphrase is nearer than an unrelated sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openai
import pytest
from fastapi import FastAPI

from distilgpt2_api.model_store import smollm2

from engine_apps import llamacpp_app

pytestmark = pytest.mark.real_weights

# (sentence, a paraphrase of it, an unrelated sentence)
TRIPLES = [
    ("The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."),
    ("How do I bake bread at home?", "What is a recipe for homemade bread?", "The train to Berlin leaves at noon."),
    ("The weather is cold and rainy.", "It is raining and the air is chilly.", "She plays the violin in an orchestra."),
    ("He repaired the broken bicycle.", "He fixed the bike that was broken.", "Quantum computers use qubits."),
]


@pytest.fixture(scope="module")
def app(smollm2_llamacpp_dir: Path) -> FastAPI:
    return llamacpp_app(smollm2_llamacpp_dir)


def test_a_paraphrase_is_nearer_than_an_unrelated_sentence(sdk: openai.OpenAI) -> None:
    texts = [text for triple in TRIPLES for text in triple]
    response = sdk.embeddings.create(model=smollm2.MODEL_ID, input=texts)
    vectors = np.array([item.embedding for item in response.data]).reshape(len(TRIPLES), 3, -1)
    assert vectors.shape[-1] == 576  # SmolLM2-135M's hidden size
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)
    for (sentence, paraphrase, unrelated), triple in zip(TRIPLES, vectors, strict=True):
        near, far = float(triple[0] @ triple[1]), float(triple[0] @ triple[2])
        assert near > far, (sentence, paraphrase, unrelated, near, far)
