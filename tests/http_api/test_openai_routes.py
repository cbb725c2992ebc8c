"""The OpenAI-compatible routes, through the official `openai` SDK against a real server."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server_process import serving_in_thread


@pytest.fixture(scope="module")
def base_url(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn on an ephemeral loopback port."""
    with serving_in_thread(app) as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


def test_sdk_lists_the_served_model(sdk: openai.OpenAI) -> None:
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["tiny-gpt2"]


def test_sdk_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model="tiny-gpt2", prompt="Once upon a time", max_tokens=8, n=2, seed=5)
    assert completion.object == "text_completion"
    assert completion.model == "tiny-gpt2"
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    again = sdk.completions.create(model="tiny-gpt2", prompt="Once upon a time", max_tokens=8, n=2, seed=5)
    assert [c.text for c in again.choices] == [c.text for c in completion.choices]


@pytest.mark.parametrize("temperature", [0, 5e-324, 0.001])
def test_sdk_temperature_near_zero_is_greedy(sdk: openai.OpenAI, client: TestClient, temperature: float) -> None:
    completion = sdk.completions.create(model="tiny-gpt2", prompt="The fox", max_tokens=6, temperature=temperature)
    greedy = client.post("/generate", json={"prompt": "The fox", "max_new_tokens": 6, "return_full_text": False})
    assert completion.choices[0].text == greedy.json()["generated_sequences"][0]


def test_sdk_stop_string(sdk: openai.OpenAI) -> None:
    free = sdk.completions.create(model="tiny-gpt2", prompt="The", max_tokens=30, seed=3).choices[0].text
    stop = next(free[i : i + 2] for i in range(1, len(free) // 2) if free[i : i + 2].isascii())
    stopped = sdk.completions.create(model="tiny-gpt2", prompt="The", max_tokens=30, seed=3, stop=stop)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == free[: free.find(stop)]


def test_sdk_unknown_model_is_not_found(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert "tiny-gpt2" in str(raised.value)


def test_sdk_out_of_range_is_unprocessable(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.completions.create(model="tiny-gpt2", prompt="hi", max_tokens=100_000)
    assert "max_tokens" in str(raised.value)


def test_completions_without_model_field(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("cmpl-")
    assert len(body["choices"]) == 1
