"""`POST /tokenize` and `/detokenize`: what the served tokenizer makes of a prompt or a conversation."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

HELLO = [{"role": "user", "content": "Once upon a time"}]


@pytest.fixture
def chat(chat_client: TestClient) -> TestClient:
    """The chat model on the default engine (conftest's chat_app)."""
    return chat_client


def test_tokenize_a_prompt(client: TestClient, model_dir: Path) -> None:
    body = client.post("/tokenize", json={"prompt": "Hello world, café"}).json()
    expected = AutoTokenizer.from_pretrained(model_dir)("Hello world, café")["input_ids"]
    assert body == {"tokens": expected, "count": len(expected), "max_model_len": 256, "model": "tiny-gpt2"}


def test_prompt_tokens_are_what_generation_counts(client: TestClient) -> None:
    tokens = client.post("/tokenize", json={"prompt": "Once upon a time"}).json()["count"]
    usage = client.post("/generate", json={"prompt": "Once upon a time", "max_new_tokens": 2}).json()["usage"]
    assert tokens == usage["prompt_tokens"]


def test_tokenize_messages_as_chat_sends_them(chat: TestClient, chat_model_dir: Path) -> None:
    tokens = chat.post("/tokenize", json={"messages": HELLO}).json()
    usage = chat.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).json()["usage"]
    assert tokens["count"] == usage["prompt_tokens"] == len(tokens["tokens"])
    # The template's rendering, tokenized without adding special tokens again.
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    prompt = tokenizer.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    assert tokens["tokens"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_detokenize_round_trip(client: TestClient) -> None:
    tokens = client.post("/tokenize", json={"prompt": "Hello world, café"}).json()["tokens"]
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": "Hello world, café"}


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/tokenize", {}, 422, "validation_error"),
        ("/tokenize", {"prompt": "x", "messages": HELLO}, 422, "validation_error"),
        ("/tokenize", {"prompt": "x" * 8001}, 422, "validation_error"),
        ("/tokenize", {"messages": HELLO}, 400, "chat_template_missing"),
        ("/detokenize", {"tokens": [10**9]}, 422, "unknown_token"),
        ("/detokenize", {"tokens": [-1]}, 422, "validation_error"),
    ],
    ids=["nothing", "both", "too-long", "no-template", "unknown-id", "negative-id"],
)
def test_bad_requests(client: TestClient, path: str, body: dict[str, object], status: int, code: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_documented(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    assert {"/tokenize", "/detokenize"} <= paths.keys()
    schemas = app.openapi()["components"]["schemas"]
    assert schemas["TokenizeRequest"]["properties"]["prompt"]["anyOf"][0]["maxLength"] == 8000
