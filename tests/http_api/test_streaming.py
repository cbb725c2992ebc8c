"""Streaming: Server-Sent Events on a real server, read by the `openai` SDK and by a plain HTTP client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.core.time_budget import TimeBudget

from server_process import serving_in_thread
from slowdown import STEP_SECONDS, fail_after, slow_down, wait_until_idle

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def chat_sdk(chat_app: FastAPI) -> Iterator[openai.OpenAI]:
    with serving_in_thread(chat_app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def sse_data(text: str) -> list[str]:
    """The `data` of each event of an event stream (comment lines, such as pings, skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line[len("data:") :].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return events


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0},
        {"seed": 3, "n": 2},
        {"seed": 4, "stop": [" the", "e"]},
        {"temperature": 0, "logprobs": 2},
    ],
    ids=["greedy", "seeded-n2", "stop-strings", "logprobs"],
)
def test_streamed_completion_is_the_plain_completion(sdk: openai.OpenAI, params: dict[str, Any]) -> None:
    request = {"model": "tiny-gpt2", "prompt": PROMPT, "max_tokens": 24, **params}
    plain = sdk.completions.create(**request)
    chunks = list(sdk.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    *choice_chunks, usage_chunk = chunks
    n = params.get("n", 1)
    for choice in plain.choices:
        mine = [c.choices[0] for c in choice_chunks if c.choices[0].index == choice.index]
        assert len(mine) > 1  # text arrived in pieces
        assert "".join(c.text for c in mine) == choice.text  # never a partial stop string, never more
        assert [c.finish_reason for c in mine] == [None] * (len(mine) - 1) + [choice.finish_reason]
        if "logprobs" in params:
            assert plain.choices[0].logprobs is not None
            streamed = [lp for c in mine if c.logprobs for lp in c.logprobs.token_logprobs]
            assert streamed == pytest.approx(plain.choices[0].logprobs.token_logprobs)
    assert len({c.id for c in chunks}) == 1
    assert usage_chunk.choices == [] and usage_chunk.usage is not None and plain.usage is not None
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # what the prefix cache reused may differ
    assert [getattr(usage_chunk.usage, k) for k in counts] == [getattr(plain.usage, k) for k in counts]
    assert len(plain.choices) == n


def test_streamed_chat_is_the_plain_chat(chat_sdk: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": "tiny-chat-llama",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 16,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    plain = chat_sdk.chat.completions.create(**request)
    chunks = list(chat_sdk.chat.completions.create(**request, stream=True))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert plain.choices[0].logprobs is not None and plain.choices[0].logprobs.content is not None
    assert [(t.token, len(t.top_logprobs)) for t in streamed] == [
        (t.token, 2) for t in plain.choices[0].logprobs.content
    ]


def test_generate_stream_has_tgi_events(base_url: str, client: TestClient) -> None:
    body = {"prompt": PROMPT, "max_new_tokens": 12, "do_sample": True, "seed": 9, "top_n_tokens": 2}
    plain = client.post("/generate", json={**body, "details": True}).json()
    with httpx.stream("POST", f"{base_url}/generate_stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(data) for data in sse_data(response.read().decode())]
    assert len(events) == plain["details"][0]["generated_tokens"]  # one event per token
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["generated_text"] == plain["generated_sequences"][0]
    assert last["generated_text"] == PROMPT + "".join(e["token"]["text"] for e in events)
    assert last["details"] == {
        "finish_reason": plain["finish_reasons"][0],
        "generated_tokens": plain["details"][0]["generated_tokens"],
        "input_length": plain["usage"]["prompt_tokens"],
        "seed": 9,
    }
    logprobs = [e["token"]["logprob"] for e in events]
    assert logprobs == pytest.approx([t["logprob"] for t in plain["details"][0]["tokens"]][: len(events)])
    assert all(len(e["top_tokens"]) == 2 for e in events)


def test_tokens_leave_as_they_are_generated(base_url: str, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_down(app.state.scheduler.engine, monkeypatch)
    tokens = 40
    arrivals = []
    with httpx.stream(
        "POST",
        f"{base_url}/generate_stream",
        json={"prompt": PROMPT, "max_new_tokens": tokens, "stop": ["never in this text"]},
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == tokens  # one event a token (greedy, and no stop string met)
    # Generating takes at least STEP_SECONDS a token: the first event came while most were still to come.
    assert arrivals[-1] - arrivals[0] >= 0.5 * (len(arrivals) - 1) * STEP_SECONDS


def test_a_client_that_leaves_frees_the_model(base_url: str, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = app.state.scheduler
    slow_down(scheduler.engine, monkeypatch)
    long = {"prompt": PROMPT, "max_new_tokens": 200, "stop": ["never in this text"]}  # >= 10 s of generating
    with httpx.stream("POST", f"{base_url}/generate_stream", json=long, timeout=60) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data:")
            if seen == 3:
                break  # and the connection closes
        assert scheduler.running == 1
    # The abandoned request had ~10 s to go: it ends within a few steps of the client leaving, not after all of them.
    assert wait_until_idle(scheduler, timeout=10) < 3.0
    assert scheduler.running == 0
    answer = httpx.post(f"{base_url}/generate", json={"prompt": PROMPT, "max_new_tokens": 2}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2


def test_errors_before_the_first_token_keep_their_status(base_url: str) -> None:
    too_long = "word " * 300
    for path, body in [
        ("/generate_stream", {"prompt": too_long, "max_new_tokens": 5}),
        ("/v1/completions", {"prompt": too_long, "max_tokens": 5, "stream": True}),
    ]:
        response = httpx.post(f"{base_url}{path}", json=body, timeout=60)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == "context_length_exceeded"


def test_a_stream_without_time_left_is_a_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TimeBudget, "seconds_for", lambda self, scope: 0.0)
    response = client.post("/generate_stream", json={"prompt": PROMPT, "max_new_tokens": 5})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "deadline_exceeded"


def _fail_after_two_tokens(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """The model fails after a lone request's first two tokens (its prompt read, one decode step)."""
    return fail_after(app.state.scheduler.engine, monkeypatch, 2, "secret engine detail")


def test_an_error_after_the_first_token_ends_the_stream_with_an_error_event(
    base_url: str, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = httpx.post(f"{base_url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, "temperature": 0}).json()
    rearm = _fail_after_two_tokens(app, monkeypatch)
    body = {"prompt": PROMPT, "max_tokens": 20, "temperature": 0, "stream": True}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200  # sent before the error
    *chunks, error, done = sse_data(response.text)
    # The two tokens made before the failure arrived, as the greedy answer begins; no finish reason came.
    choices = [choice for chunk in chunks for choice in json.loads(chunk)["choices"]]
    assert "".join(choice["text"] for choice in choices) == plain["choices"][0]["text"]
    assert [choice["finish_reason"] for choice in choices] == [None] * len(choices)
    assert json.loads(error)["error"]["code"] == "internal_error"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert done == "[DONE]"
    rearm()
    events = sse_data(httpx.post(f"{base_url}/generate_stream", json={"prompt": PROMPT}, timeout=60).text)
    *tokens, last = (json.loads(event) for event in events)
    assert len(tokens) == 2 and all("token" in event for event in tokens)
    assert last["error"]["code"] == "internal_error"


def test_the_sdk_raises_on_an_error_event(sdk: openai.OpenAI, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_after_two_tokens(app, monkeypatch)
    with pytest.raises(openai.APIError, match="internal error"):
        list(sdk.completions.create(model="tiny-gpt2", prompt=PROMPT, max_tokens=20, temperature=0, stream=True))


def test_openapi_documents_the_streams(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, event in [
        ("/generate_stream", "StreamResponse"),
        ("/v1/completions", "CompletionChunk"),
        ("/v1/chat/completions", "ChatCompletionChunk"),
    ]:
        stream = schema["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
        data = json.dumps(stream["itemSchema"]["properties"]["data"])
        assert f"#/components/schemas/{event}" in data
        assert event in schema["components"]["schemas"]
    top = schema["components"]["schemas"]["GenerateRequest"]["properties"]["top_n_tokens"]
    assert top["maximum"] == 5
