"""text-generation-inference's wire format, proven with its own client (huggingface_hub's `InferenceClient`) on the
default engine: `POST /` (plain, details, streamed), `/generate` and `/generate_stream` with `inputs` + `parameters`
beside the flat body, and TGI's parameter semantics."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from huggingface_hub import InferenceClient

from server_process import serving_in_thread

PROMPT = "Once upon a time"
TGI_REASONS = {"length", "eos_token", "stop_sequence"}


@pytest.fixture(scope="module")
def hf(base_url: str) -> InferenceClient:
    return InferenceClient(base_url=base_url, timeout=60)


def flat(client: TestClient, **fields: Any) -> dict[str, Any]:
    """This API's own answer to the same request: its continuation and details."""
    body = {"prompt": PROMPT, "max_new_tokens": 8, "details": True, "return_full_text": False, **fields}
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    return {"text": answer["generated_sequences"][0], "details": answer["details"][0], "usage": answer["usage"]}


def test_text_generation_answers_as_this_apis_own_route(hf: InferenceClient, client: TestClient) -> None:
    own = flat(client)
    assert hf.text_generation(PROMPT, max_new_tokens=8) == own["text"]
    output = hf.text_generation(PROMPT, max_new_tokens=8, details=True, top_n_tokens=2)
    assert output.generated_text == own["text"]
    details = output.details
    assert details is not None and details.finish_reason in TGI_REASONS
    assert [t.id for t in details.tokens] == [t["id"] for t in own["details"]["tokens"]]
    assert details.generated_tokens == own["details"]["generated_tokens"] == len(details.tokens)
    assert details.finish_reason == {"length": "length", "eos": "eos_token"}[own["details"]["finish_reason"]]
    assert details.prefill == [] and details.top_tokens is not None
    assert [len(top) for top in details.top_tokens] == [2] * len(details.tokens)
    full = hf.text_generation(PROMPT, max_new_tokens=8, return_full_text=True)
    assert full == PROMPT + own["text"]


def test_streamed_text_generation(hf: InferenceClient, client: TestClient) -> None:
    own = flat(client)
    events = list(hf.text_generation(PROMPT, max_new_tokens=8, stream=True, details=True))
    assert [e.token.id for e in events] == [t["id"] for t in own["details"]["tokens"]]
    last = events[-1]
    assert last.generated_text == own["text"] and last.details is not None
    assert last.details.finish_reason in TGI_REASONS and last.details.generated_tokens == len(events)
    assert last.details.input_length == own["usage"]["prompt_tokens"]
    assert all(e.details is None for e in events[:-1])


def test_chat_completion_through_the_client(chat_app: Any) -> None:
    """The client names a model of its own: the one served answers (MODEL_NAME_POLICY=any)."""
    with serving_in_thread(chat_app) as url:
        answer = InferenceClient(base_url=url, timeout=60).chat_completion(
            [{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
        )
    assert answer.model == "tiny-chat-llama" and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens == 4 or answer.choices[0].finish_reason == "stop"


def test_generate_routes_take_both_shapes(client: TestClient) -> None:
    own = flat(client)
    tgi = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 8}}).json()
    assert tgi == {"generated_text": own["text"], "details": None}
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8}}
    with client.stream("POST", "/generate_stream", json=body) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert "".join(e["token"]["text"] for e in events) == own["text"]
    assert events[-1]["details"]["finish_reason"] in TGI_REASONS  # TGI's names on TGI's shape
    flat_stream = {"prompt": PROMPT, "max_new_tokens": 8}
    with client.stream("POST", "/generate_stream", json=flat_stream) as response:
        last = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")][-1]
    assert last["details"]["finish_reason"] == own["details"]["finish_reason"]  # this API's own names


def test_a_temperature_samples_as_in_tgi(client: TestClient) -> None:
    """Without do_sample, a temperature, top_k or top_p other than neutral turns sampling on (TGI's rule)."""
    tgi = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "temperature": 1.5, "seed": 3}}
    own = flat(client, do_sample=True, temperature=1.5, seed=3)
    assert client.post("/generate", json=tgi).json()["generated_text"] == own["text"]
    greedy = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "temperature": 1.0, "seed": 3}}
    assert client.post("/generate", json=greedy).json()["generated_text"] == flat(client)["text"]


@pytest.mark.parametrize(
    ("parameters", "param"),
    [
        ({"watermark": True}, "parameters.watermark"),
        ({"best_of": 2}, "parameters.best_of"),
        ({"decoder_input_details": True}, "parameters.decoder_input_details"),
        ({"truncate": 10}, "parameters.truncate"),
        ({"typical_p": 0.5}, "parameters.typical_p"),
        ({"temperature": 0}, "parameters.temperature"),
        ({"max_new_tokens": 100_000}, "parameters.max_new_tokens"),
        ({"no_such": 1}, "parameters.no_such"),
    ],
)
def test_what_cannot_be_honoured_is_a_422_naming_it(client: TestClient, parameters: dict[str, Any], param: str) -> None:
    for path in ("/", "/generate"):
        response = client.post(path, json={"inputs": PROMPT, "parameters": parameters})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == param


def test_the_compat_route_streams_too(base_url: str, client: TestClient) -> None:
    own = flat(client)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8}, "stream": True}
    with httpx.stream("POST", f"{base_url}/", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1]["generated_text"] == own["text"]
    plain = client.post("/", json={**body, "stream": False}).json()
    assert plain == [{"generated_text": own["text"], "details": None}]


def test_a_vanishing_temperature_is_greedy(client: TestClient) -> None:
    """Found by fuzzing: TGI allows any temperature above 0, and dividing logits by 5e-324 overflowed, so a grammar
    saw a token it had masked. Below 0.01 a temperature is greedy, as on the OpenAI routes."""
    tiny = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "temperature": 5e-324, "seed": 1}}
    assert client.post("/generate", json=tiny).json()["generated_text"] == flat(client)["text"]
    grammar = {"type": "json", "value": {}}
    constrained = {"inputs": "0", "parameters": {"max_new_tokens": 8, "temperature": 5e-324, "grammar": grammar}}
    response = client.post("/", json=constrained)
    assert response.status_code == 200, response.text
