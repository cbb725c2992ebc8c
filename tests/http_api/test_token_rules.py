"""`logit_bias`, `min_tokens` and `ignore_eos` on the OpenAI routes, on the default engine: what each changes in an
answer, what it leaves alone (logprobs describe the model), and how a request that cannot have them is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine_apps import engine_app

PROMPT = "Once upon a time"


def complete(client: TestClient, **fields: Any) -> dict[str, Any]:
    """A greedy completion of PROMPT (6 tokens, logprobs): its choice and usage."""
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 3, **fields}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    return {"choice": choice, "tokens": choice["logprobs"]["tokens"], **response.json()["usage"]}


def free_answer(client: TestClient) -> dict[str, Any]:
    """The same greedy answer through `/generate`, whose details name each token's id and the 3 likeliest."""
    body = {"prompt": PROMPT, "max_new_tokens": 6, "details": True, "top_n_tokens": 3}
    (details,) = client.post("/generate", json=body).json()["details"]
    return details  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def eos(app: FastAPI) -> int:
    (eos_id,) = app.state.scheduler.info.eos_token_ids
    return int(eos_id)


def test_a_banned_token_never_comes(client: TestClient) -> None:
    free = free_answer(client)
    first, runner_up = free["tokens"][0], free["top_tokens"][0][1]
    assert complete(client)["tokens"][0] == first["text"]  # the same answer on both routes
    banned = complete(client, logit_bias={str(first["id"]): -100})
    assert banned["tokens"][0] == runner_up["text"]  # the next likeliest takes its place (greedy)
    assert first["text"] not in banned["tokens"]


def test_a_bias_steers_and_logprobs_stay_the_models(client: TestClient) -> None:
    favoured = free_answer(client)["top_tokens"][0][2]  # the third likeliest first token
    steered = complete(client, logit_bias={str(favoured["id"]): 100})
    assert steered["tokens"] == [favoured["text"]] * 6 and steered["choice"]["finish_reason"] == "length"
    # The chosen token's logprob is the model's own, not the biased one (which would be ~0).
    assert steered["choice"]["logprobs"]["token_logprobs"][0] == pytest.approx(favoured["logprob"], abs=1e-3)


def test_min_tokens_and_ignore_eos_hold_the_end_of_sequence_back(client: TestClient, eos: int) -> None:
    eager = {"logit_bias": {str(eos): 100}}  # the model would end at once
    ended = complete(client, **eager)
    assert ended["completion_tokens"] == 1 and ended["choice"]["finish_reason"] == "stop"
    held = complete(client, min_tokens=4, **eager)
    assert held["completion_tokens"] == 5 and held["choice"]["finish_reason"] == "stop"  # 4 tokens, then the EOS
    eos_text = client.app.state.scheduler.tokenizer.token_text(eos)  # type: ignore[attr-defined]
    assert eos_text not in held["tokens"][:4]
    ignored = complete(client, ignore_eos=True, **eager)
    assert ignored["completion_tokens"] == 6 and ignored["choice"]["finish_reason"] == "length"
    assert eos_text not in ignored["tokens"]


def test_chat_takes_the_same_rules(chat_client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0, "logprobs": True}
    free = chat_client.post("/v1/chat/completions", json=body).json()["choices"][0]
    first = free["logprobs"]["content"][0]
    tokenizer = chat_client.app.state.scheduler.tokenizer  # type: ignore[attr-defined]
    first_id = next(i for i in range(tokenizer.vocab_size) if tokenizer.token_text(i) == first["token"])
    response = chat_client.post("/v1/chat/completions", json={**body, "logit_bias": {str(first_id): -100}})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["logprobs"]["content"][0]["token"] != first["token"]


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"logit_bias": {"99999999": 5}}, 400, "unknown_token", "logit_bias"),
        ({"min_tokens": 7}, 400, "min_tokens_over_max", "min_tokens"),
        ({"logit_bias": {"5": 101}}, 422, "invalid_request", None),
        ({"logit_bias": {"-1": 5}}, 422, "invalid_request", None),
        ({"min_tokens": -1}, 422, "invalid_request", None),
    ],
    ids=["unknown-token", "min-over-max", "bias-over-100", "negative-id", "negative-min"],
)
def test_what_cannot_be_honoured_is_refused(
    client: TestClient, fields: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 6, **fields})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code or status == 422
    if param is not None:
        assert error["param"] == param


@pytest.fixture(scope="module")
def ctranslate2_client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(engine_app(model_dir, "ctranslate2"), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("fields", [{"logit_bias": {"5": 1}}, {"min_tokens": 2}, {"ignore_eos": True}])
def test_an_engine_that_decides_whole_calls_says_which_can(
    ctranslate2_client: TestClient, fields: dict[str, Any]
) -> None:
    response = ctranslate2_client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 6, **fields})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_by_engine" and "ENGINE=llamacpp" in error["message"]
    assert error["param"] == next(iter(fields))
