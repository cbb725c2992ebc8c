"""The OpenAI-compatible routes, through the official `openai` SDK against a real server."""

from __future__ import annotations

import openai
import pytest
from fastapi.testclient import TestClient


def test_sdk_lists_the_served_model(sdk: openai.OpenAI) -> None:
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["tiny-gpt2"]


def test_sdk_completion(sdk: openai.OpenAI, client: TestClient) -> None:
    completion = sdk.completions.create(model="tiny-gpt2", prompt="Once upon a time", max_tokens=8, n=2, seed=5)
    assert completion.object == "text_completion"
    assert completion.model == "tiny-gpt2"
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    tokenized = client.post("/tokenize", json={"prompt": "Once upon a time"}).json()
    assert completion.usage.prompt_tokens == tokenized["count"]  # the prompt read once for both choices
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


def test_sdk_any_model_name_is_answered_by_the_served_model(sdk: openai.OpenAI) -> None:
    named = sdk.completions.create(model="tgi", prompt="hi", max_tokens=3, temperature=0)
    served = sdk.completions.create(model="tiny-gpt2", prompt="hi", max_tokens=3, temperature=0)
    assert named.model == served.model == "tiny-gpt2"  # MODEL_NAME_POLICY=any, the default: the answer names it
    assert named.choices[0].text == served.choices[0].text


def test_sdk_out_of_range_is_unprocessable(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.completions.create(model="tiny-gpt2", prompt="hi", max_tokens=100_000)
    assert "max_tokens" in str(raised.value)


def test_completions_without_model_field(client: TestClient) -> None:
    request = {"prompt": "hi", "max_tokens": 3, "seed": 11}
    response = client.post("/v1/completions", json=request)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["model"] == "tiny-gpt2"
    named = client.post("/v1/completions", json={**request, "model": "tiny-gpt2"}).json()
    assert body["id"] != named["id"]  # each completion its own id
    assert body["choices"] == named["choices"]  # the served model, as if named
    assert [c["index"] for c in body["choices"]] == [0]


def _greedy(sdk: openai.OpenAI, prompt: object, **params: object) -> list[str]:
    completion = sdk.completions.create(model="tiny-gpt2", prompt=prompt, max_tokens=6, temperature=0, **params)
    return [c.text for c in sorted(completion.choices, key=lambda c: c.index)]


def test_a_list_of_prompts_answers_each_in_order(sdk: openai.OpenAI) -> None:
    """As OpenAI and vLLM do: prompt i's n choices are indices i*n to i*n+n-1."""
    prompts = ["Once upon a time", "The weather today", "In the beginning"]
    alone = [_greedy(sdk, prompt)[0] for prompt in prompts]
    assert len(set(alone)) > 1  # the check below could not pass by accident
    assert _greedy(sdk, prompts) == alone
    assert _greedy(sdk, prompts, n=2) == [text for text in alone for _ in range(2)]
    usage = sdk.completions.create(model="tiny-gpt2", prompt=prompts, max_tokens=6, temperature=0).usage
    singles = [sdk.completions.create(model="tiny-gpt2", prompt=p, max_tokens=6, temperature=0).usage for p in prompts]
    assert usage is not None and all(singles)
    assert usage.prompt_tokens == sum(u.prompt_tokens for u in singles if u)
    assert usage.completion_tokens == sum(u.completion_tokens for u in singles if u)


def test_prompts_as_token_ids_are_the_same_prompts(sdk: openai.OpenAI, client: TestClient) -> None:
    prompts = ["Once upon a time", "The weather today"]
    ids = [client.post("/tokenize", json={"prompt": p}).json()["tokens"] for p in prompts]
    assert _greedy(sdk, ids[0]) == _greedy(sdk, prompts[0])
    assert _greedy(sdk, ids) == _greedy(sdk, prompts)


def test_streamed_prompts_are_the_plain_prompts(sdk: openai.OpenAI) -> None:
    prompts = ["Once upon a time", "The weather today"]
    texts = {0: "", 1: "", 2: "", 3: ""}
    finished = set()
    for chunk in sdk.completions.create(
        model="tiny-gpt2", prompt=prompts, max_tokens=6, temperature=0, n=2, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason is not None:
                finished.add(choice.index)
    assert finished == {0, 1, 2, 3}
    assert [texts[i] for i in range(4)] == _greedy(sdk, prompts, n=2)


@pytest.mark.parametrize(
    ("prompt", "status", "code"),
    [
        ([[1, 2], [10**9]], 400, "unknown_token"),
        ([], 422, "validation_error"),
        ([[]], 422, "validation_error"),
        ([-1], 422, "validation_error"),
        (["a"] * 9, 422, "validation_error"),  # more prompts than MAX_RETURN_SEQUENCES
        ([1.5], 422, "validation_error"),
    ],
)
def test_bad_prompt_lists_are_refused(client: TestClient, prompt: object, status: int, code: str) -> None:
    response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_prompts_times_n_is_bounded(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"prompt": ["a", "b", "c"], "n": 3, "max_tokens": 2})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_choices"
