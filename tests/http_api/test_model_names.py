"""MODEL_NAME_POLICY: with `any` (the default) a request naming another model is served by the one model and
answered with its name, as text-generation-inference and llama-server do; with `served` it is a 404, as vLLM does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine_apps import llamacpp_app

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def strict(chat_model_dir: Path) -> Iterator[TestClient]:
    with TestClient(llamacpp_app(chat_model_dir, model_name_policy="served"), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("name", ["tgi", "default", "model.gguf", "tiny-chat-llama"])
def test_any_name_is_served_and_the_answer_names_the_model(chat_client: TestClient, name: str) -> None:
    named = chat_client.post("/v1/chat/completions", json={**CHAT, "model": name}).json()
    unnamed = chat_client.post("/v1/chat/completions", json=CHAT).json()
    assert named["model"] == unnamed["model"] == "tiny-chat-llama"
    assert named["choices"][0]["message"] == unnamed["choices"][0]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "model": "tgi"}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 3, "model": "tgi"}),
    ],
)
def test_the_served_policy_refuses_other_names(strict: TestClient, path: str, body: dict[str, object]) -> None:
    response = strict.post(path, json=body)
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "'tiny-chat-llama'" in error["message"]
    assert strict.post(path, json={**body, "model": "tiny-chat-llama"}).status_code == 200
