"""The app on the llama.cpp engine with the real SmolLM2-135M-Instruct (smollm2_llamacpp_dir): it answers a
question with a well-known answer, through the routes and through the `openai` SDK against a served app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.model_store import smollm2

from engine_apps import llamacpp_app, openai_sdk
from server_process import serving_in_thread

pytestmark = pytest.mark.real_weights

# Asked for a short answer: the shipped Q4_1 weights, greedy, drift into French word lists on the bare question (as
# llama.cpp's own chat completion does with them; the float32 dequantization of the same weights answers it).
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def app(smollm2_llamacpp_dir: Path) -> FastAPI:
    return llamacpp_app(smollm2_llamacpp_dir)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def sdk(app: FastAPI) -> Iterator[openai.OpenAI]:
    with serving_in_thread(app) as base_url:
        yield openai_sdk(base_url)


def test_it_serves_the_real_smollm2(client: TestClient) -> None:
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [smollm2.MODEL_ID]


def test_greedy_chat_knows_the_capital_of_france(client: TestClient) -> None:
    body = {"messages": QUESTION, "max_tokens": 48, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "stop"  # <|im_end|> ended the turn
    assert "Paris" in choice["message"]["content"] and "<|im" not in choice["message"]["content"]


def test_the_sdk_gets_the_same_answer_whole_and_streamed(sdk: openai.OpenAI) -> None:
    whole = sdk.chat.completions.create(model=smollm2.MODEL_ID, messages=QUESTION, max_tokens=48, temperature=0)
    (choice,) = whole.choices
    assert choice.finish_reason == "stop" and choice.message.content and "Paris" in choice.message.content
    streamed = sdk.chat.completions.create(
        model=smollm2.MODEL_ID, messages=QUESTION, max_tokens=48, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == choice.message.content
