"""`POST /v1/embeddings` on the default engine (llama.cpp) over the tiny GPT-2, through the routes and the `openai`
SDK; on an engine that cannot embed (CTranslate2); and on a sentence-embedding BERT prepared by prepare-model, a
model that only embeds."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine_apps import engine_app, llamacpp_app
from model_factory import BERT_CONTEXT, prepared_tiny_bert, reference_embedding

TEXTS = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]
SIZE = 64  # the tiny GPT-2's hidden size
CONTEXT = 256  # and its context: the most tokens one input may have


def embed(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def vectors(result: dict[str, Any]) -> np.ndarray:
    return np.array([item["embedding"] for item in result["data"]])


def refusal(client: TestClient, status: int, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def token_ids(client: TestClient, text: str) -> list[int]:
    ids: list[int] = client.post("/tokenize", json={"prompt": text}).json()["tokens"]
    return ids


def test_the_response_has_openais_shape(client: TestClient) -> None:
    result = embed(client, input=TEXTS)
    assert result["object"] == "list" and result["model"] == client.get("/v1/models").json()["data"][0]["id"]
    assert [item["object"] for item in result["data"]] == ["embedding"] * 3
    assert [item["index"] for item in result["data"]] == [0, 1, 2]
    assert vectors(result).shape == (3, SIZE)
    tokens = sum(len(token_ids(client, text)) for text in TEXTS)
    assert result["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_vectors_are_unit_length_and_one_by_one_as_together(client: TestClient) -> None:
    together = vectors(embed(client, input=TEXTS))
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.array([vectors(embed(client, input=text))[0] for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[2])  # different texts, different vectors


def test_base64_holds_the_same_float32_values(client: TestClient) -> None:
    floats = vectors(embed(client, input=TEXTS))
    encoded = embed(client, input=TEXTS, encoding_format="base64")
    decoded = np.array([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in encoded["data"]])
    np.testing.assert_array_equal(decoded, floats.astype(np.float32))


def test_token_ids_embed_as_their_text(client: TestClient) -> None:
    ids = [token_ids(client, text) for text in TEXTS]
    from_text = vectors(embed(client, input=TEXTS))
    np.testing.assert_array_equal(vectors(embed(client, input=ids)), from_text)
    np.testing.assert_allclose(vectors(embed(client, input=ids[1])), from_text[1:2], atol=1e-6)  # one input alone


def test_dimensions_keep_the_first_ones_normalised_again(client: TestClient) -> None:
    full = vectors(embed(client, input=TEXTS))
    cut = vectors(embed(client, input=TEXTS, dimensions=16))
    assert cut.shape == (3, 16)
    first = full[:, :16]
    np.testing.assert_allclose(cut, first / np.linalg.norm(first, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(vectors(embed(client, input=TEXTS, dimensions=SIZE)), full)


def test_bad_inputs_are_refused_with_what_to_change(client: TestClient) -> None:
    for body in ({"input": []}, {"input": ""}, {"input": [[]]}, {"input": ["a", ""]}, {"input": 3}):
        error = refusal(client, 422, **body)
        assert error["code"] == "validation_error" and error["param"].startswith("input"), body
    assert refusal(client, 422, input="a", dimensions=0)["param"] == "dimensions"
    assert refusal(client, 422, input="a", encoding_format="int8")["param"] == "encoding_format"
    too_long = refusal(client, 400, input=[[5] * (CONTEXT + 1)])
    assert too_long["code"] == "context_length_exceeded" and f"{CONTEXT + 1} tokens" in too_long["message"]
    assert "never truncated" in too_long["message"]
    unknown = refusal(client, 400, input=[1, 2, 10**6])
    assert unknown["code"] == "unknown_token" and unknown["param"] == "input"
    dimensions = refusal(client, 400, input="a", dimensions=SIZE + 1)
    assert dimensions["code"] == "invalid_dimensions" and f"1 to {SIZE}" in dimensions["message"]
    budget = refusal(client, 400, input=[[5] * 250] * 13)  # 3250 tokens: over MAX_BATCH_TOKENS' 3072
    assert budget["code"] == "token_budget_exceeded" and "MAX_BATCH_TOKENS" in budget["message"]


def test_the_sdk_gets_base64_by_default_and_floats_alike(sdk: openai.OpenAI) -> None:
    model = sdk.models.list().data[0].id
    default = sdk.embeddings.create(model=model, input=TEXTS)  # the SDK asks for base64 and decodes it
    floats = sdk.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    assert [e.index for e in default.data] == [0, 1, 2] and len(default.data[0].embedding) == SIZE
    np.testing.assert_array_equal([e.embedding for e in default.data], [e.embedding for e in floats.data])
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0
    (one,) = sdk.embeddings.create(model=model, input=TEXTS[0], dimensions=8).data
    assert len(one.embedding) == 8 and abs(np.linalg.norm(one.embedding) - 1) < 1e-5


def test_generation_is_unchanged_while_embeddings_run(base_url: str) -> None:
    """Embeddings run on their own threads and context while the step loop generates."""
    completion = {"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0}
    with httpx.Client(base_url=base_url, timeout=60) as http:
        alone = http.post("/v1/completions", json=completion).json()["choices"][0]["text"]
        expected = vectors(http.post("/v1/embeddings", json={"input": TEXTS * 4}).json())

        def embed_one(_: int) -> np.ndarray:
            return vectors(http.post("/v1/embeddings", json={"input": TEXTS * 4}).json())

        with ThreadPoolExecutor(4) as pool:
            embedded = pool.map(embed_one, range(16))
            texts = [http.post("/v1/completions", json=completion).json()["choices"][0]["text"] for _ in range(4)]
            embedded = list(embedded)
    assert texts == [alone] * 4
    for result in embedded:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_an_engine_that_cannot_embed_says_which_can(model_dir: Path) -> None:
    with TestClient(engine_app(model_dir, "ctranslate2"), raise_server_exceptions=False) as client:
        error = refusal(client, 400, input=TEXTS)
    assert error["code"] == "unsupported_by_engine" and "ENGINE=llamacpp" in error["message"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_tiny_bert(tmp_path_factory.mktemp("models"), "cls")


@pytest.fixture(scope="module")
def bert_client(bert_dir: Path) -> Any:
    with TestClient(llamacpp_app(bert_dir), raise_server_exceptions=False) as client:
        yield client


def test_a_sentence_embedding_model_serves_embeddings(bert_client: TestClient, bert_dir: Path) -> None:
    result = embed(bert_client, input=TEXTS)
    ids = [token_ids(bert_client, text) for text in TEXTS]
    assert all(i[0] == ids[0][0] and i[-1] == ids[0][-1] for i in ids)  # [CLS] ... [SEP]
    for item, input_ids in zip(result["data"], ids, strict=True):
        np.testing.assert_allclose(item["embedding"], reference_embedding(bert_dir, input_ids, "cls"), atol=2e-3)
    assert refusal(bert_client, 400, input=[[5] * (BERT_CONTEXT + 1)])["code"] == "context_length_exceeded"
    assert bert_client.get("/").status_code == 200


def test_a_sentence_embedding_model_refuses_to_generate(bert_client: TestClient) -> None:
    requests = [
        ("POST", "/v1/completions", {"prompt": "hello", "max_tokens": 4}),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}]}),
        ("POST", "/generate", {"prompt": "hello"}),
        ("POST", "/generate_stream", {"prompt": "hello"}),
        ("POST", "/", {"inputs": "hello"}),
        ("GET", "/hello", None),
    ]
    for method, path, body in requests:
        response = bert_client.request(method, path, json=body)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "embedding_model"
        assert "only embeds" in response.json()["error"]["message"]


def test_the_operation_conforms_to_its_schema(app: FastAPI, subtests: pytest.Subtests) -> None:
    """Schema-driven fuzzing of this operation alone (every operation: test_fuzz_openapi.py)."""
    from test_fuzz_openapi import fuzz_operations  # its module skips itself without schemathesis

    assert fuzz_operations(app, subtests, {"POST /v1/embeddings"}, examples=60) == {"POST /v1/embeddings"}
