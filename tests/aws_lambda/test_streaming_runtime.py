"""The streaming runtime, driven as Lambda drives it: a Runtime API stand-in on loopback hands it events."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from runtime_api_standin import Call, RuntimeApiStandIn, runtime_api_standin

from distilgpt2_api.aws_lambda.runtime_api import HTTP_INTEGRATION_RESPONSE, RuntimeApi, RuntimeApiError
from distilgpt2_api.aws_lambda.streaming_runtime import StreamingRuntime, is_streamed_event
from distilgpt2_api.http_api import streaming
from distilgpt2_api.http_api.auth import split_keys

from event_factory import http_api_event, rest_api_event, scheduled_event
from slowdown import STEP_SECONDS, slow_down, wait_until_idle

PROMPT = "Once upon a time"
NEVER = ["never in this text"]  # a stop string that keeps generation going to max tokens


@pytest.fixture
def lambda_api(app: FastAPI, lambda_handler: Any) -> Iterator[RuntimeApiStandIn]:
    """The stand-in, with the runtime serving it on a thread of this process (so engines can be slowed)."""
    with runtime_api_standin() as api:
        runtime = StreamingRuntime(RuntimeApi(api.address), lambda_handler)
        thread = threading.Thread(target=_serve, args=(runtime,), daemon=True)
        thread.start()
        yield api
    thread.join(timeout=30)
    assert not thread.is_alive(), "the runtime did not stop when the Runtime API went away"


def _serve(runtime: StreamingRuntime) -> None:
    with contextlib.suppress(RuntimeApiError):  # the stand-in closed: the loop ends, as a runtime exits on Lambda
        runtime.serve()


def sse_data(payload: bytes) -> list[str]:
    events = []
    for block in payload.decode().replace("\r\n", "\n").split("\n\n"):
        lines = [line[len("data:") :].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return events


def event_arrivals(call: Call) -> list[float]:
    """When each chunk carrying an event arrived at Lambda's side."""
    return [arrival for arrival, data in call.chunks[1:] if b"data:" in data]


def function_url_event(path: str, body: object) -> dict[str, Any]:
    return http_api_event("POST", path, body=body, function_url=True)


def test_which_events_stream() -> None:
    assert is_streamed_event(function_url_event("/generate_stream", {}))
    assert is_streamed_event(rest_api_event("POST", "/generate_stream", stage="Prod"))
    assert not is_streamed_event(http_api_event("POST", "/generate_stream"))  # HTTP APIs buffer
    assert not is_streamed_event({**rest_api_event("GET", "/"), "version": "1.0"})  # an HTTP API's payload 1.0
    assert not is_streamed_event(scheduled_event())
    assert not is_streamed_event({"warmup": True})
    assert not is_streamed_event(["not", "an", "event"])


@pytest.mark.parametrize(
    ("source", "path", "body"),
    [
        ("function-url", "/generate_stream", {"prompt": PROMPT, "max_new_tokens": 40, "stop": NEVER}),
        (
            "rest-api",
            "/v1/completions",
            {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stop": NEVER, "stream": True},
        ),
    ],
)
def test_tokens_leave_as_they_are_generated(
    lambda_api: RuntimeApiStandIn,
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    path: str,
    body: dict[str, Any],
) -> None:
    slow_down(app.state.scheduler.engine, monkeypatch)
    event = function_url_event(path, body) if source == "function-url" else rest_api_event("POST", path, body=body)
    sent = time.monotonic()
    call = lambda_api.invoke_and_wait(event)
    assert call.streamed and call.prelude()["statusCode"] == 200
    arrivals = event_arrivals(call)
    assert len(arrivals) == 40  # one event a token (greedy, no stop string met), each in its own chunk
    first, last = arrivals[0] - sent, arrivals[-1] - sent
    print(f"\n{source} {path}: {len(arrivals)} events, first after {first:.3f} s, last after {last:.3f} s")
    # Generating takes at least STEP_SECONDS a token: the first event came while most were still to come.
    assert arrivals[-1] - arrivals[0] >= 0.5 * (len(arrivals) - 1) * STEP_SECONDS
    assert first < last / 4


def test_the_stream_is_well_formed(lambda_api: RuntimeApiStandIn) -> None:
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True}
    call = lambda_api.invoke_and_wait(function_url_event("/v1/completions", body))
    # The request: streaming mode, chunked, the HTTP integration's content type, the error trailers declared.
    assert call.headers["lambda-runtime-function-response-mode"] == "streaming"
    assert call.headers["transfer-encoding"] == "chunked"
    assert call.headers["content-type"] == HTTP_INTEGRATION_RESPONSE
    assert {t.strip().lower() for t in call.headers["trailer"].split(",")} == {
        "lambda-runtime-function-error-type",
        "lambda-runtime-function-error-body",
    }
    # The first chunk is exactly the prelude: JSON metadata and 8 NUL bytes; events follow in their own chunks.
    first_chunk = call.chunks[0][1]
    assert first_chunk.endswith(b"\0" * 8) and first_chunk.count(b"\0") == 8
    prelude = call.prelude()
    assert set(prelude) == {"statusCode", "headers", "cookies"}
    assert prelude["statusCode"] == 200
    assert prelude["headers"]["content-type"].startswith("text/event-stream")
    assert prelude["headers"]["x-request-id"] == call.request_id  # the invocation's id, as under Mangum
    assert "content-length" not in prelude["headers"] and "transfer-encoding" not in prelude["headers"]
    *chunks, done = sse_data(call.payload())
    assert done == "[DONE]"
    plain = lambda_api.invoke_and_wait(http_api_event("POST", "/v1/completions", body={**body, "stream": False}))
    text = json.loads(plain.result()["body"])["choices"][0]["text"]
    assert "".join(json.loads(c)["choices"][0]["text"] for c in chunks) == text
    assert call.trailers == {} and call.error is None


def test_an_error_before_the_first_token_keeps_its_status_and_body(lambda_api: RuntimeApiStandIn) -> None:
    too_long = "word " * 300
    for path, body in [
        ("/generate_stream", {"prompt": too_long, "max_new_tokens": 5}),
        ("/v1/completions", {"prompt": too_long, "max_tokens": 5, "stream": True}),
    ]:
        call = lambda_api.invoke_and_wait(rest_api_event("POST", path, stage="Prod", body=body))
        prelude = call.prelude()
        assert prelude["statusCode"] == 400
        assert prelude["headers"]["content-type"] == "application/json"
        assert json.loads(call.payload())["error"]["code"] == "context_length_exceeded"
        assert call.trailers == {}


def test_api_keys_apply_to_streams(lambda_api: RuntimeApiStandIn, app: FastAPI) -> None:
    previous, app.state.api_keys = app.state.api_keys, lambda: split_keys("sesame")
    try:
        event = function_url_event("/generate_stream", {"prompt": PROMPT, "max_new_tokens": 3})
        refused = lambda_api.invoke_and_wait(event)
        assert refused.prelude()["statusCode"] == 401
        assert json.loads(refused.payload())["error"]["code"] == "missing_api_key"
        event["headers"]["authorization"] = "Bearer sesame"
        served = lambda_api.invoke_and_wait(event)
        assert served.prelude()["statusCode"] == 200
        events = [json.loads(data) for data in sse_data(served.payload())]
        assert len(events) == events[-1]["details"]["generated_tokens"] <= 3
    finally:
        app.state.api_keys = previous


def test_an_error_after_the_first_token_ends_the_stream_with_trailers(
    lambda_api: RuntimeApiStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The app turns engine errors into an error event; an error in the framing itself escapes it.
    sse = streaming._sse
    calls = 0

    def failing_sse(event: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise RuntimeError("secret framing detail")
        return sse(event)

    monkeypatch.setattr(streaming, "_sse", failing_sse)
    call = lambda_api.invoke_and_wait(function_url_event("/generate_stream", {"prompt": PROMPT, "stop": NEVER}))
    assert call.prelude()["statusCode"] == 200  # sent before the error
    assert len(sse_data(call.payload())) == 3
    assert call.trailers["lambda-runtime-function-error-type"] == "RuntimeError"
    error = call.error_trailer()
    assert error is not None and error["errorType"] == "RuntimeError"
    assert "secret" not in json.dumps(error)


def test_a_client_that_goes_away_frees_the_model(
    lambda_api: RuntimeApiStandIn, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = app.state.scheduler
    slow_down(scheduler.engine, monkeypatch)
    long = {"prompt": PROMPT, "max_new_tokens": 200, "stop": NEVER}  # >= 10 s of generating
    dropped = lambda_api.invoke_and_wait(function_url_event("/generate_stream", long), drop_after_chunks=3)
    assert dropped.dropped
    # The abandoned request had ~10 s to go: it ends within a few steps of the client leaving, not after all of them.
    assert wait_until_idle(scheduler, timeout=10) < 3.0
    assert scheduler.running == 0
    call = lambda_api.invoke_and_wait(http_api_event("POST", "/generate", body={"prompt": PROMPT, "max_new_tokens": 2}))
    assert call.result()["statusCode"] == 200
    assert json.loads(call.result()["body"])["usage"]["completion_tokens"] == 2


def test_buffered_invocations_get_their_usual_answers(lambda_api: RuntimeApiStandIn) -> None:
    health = lambda_api.invoke_and_wait(http_api_event("GET", "/"))
    assert not health.streamed
    assert health.result()["statusCode"] == 200
    assert health.result()["headers"]["x-request-id"] == health.request_id
    whole = lambda_api.invoke_and_wait(http_api_event("POST", "/generate_stream", body={"prompt": PROMPT}))
    assert whole.result()["headers"]["content-type"].startswith("text/event-stream")  # the whole stream at once
    events = [json.loads(data) for data in sse_data(whole.result()["body"].encode())]
    assert events[-1]["details"]["generated_tokens"] == len(events)
    assert events[-1]["generated_text"] == PROMPT + "".join(e["token"]["text"] for e in events)
    warm = lambda_api.invoke_and_wait(scheduled_event())
    assert warm.result()["warmed"] is True
    foreign = lambda_api.invoke_and_wait({"Records": []})
    assert foreign.result()["statusCode"] == 400


def test_a_malformed_streamed_event_gets_the_usual_400(lambda_api: RuntimeApiStandIn) -> None:
    event = function_url_event("/generate", {"prompt": PROMPT})
    event["requestContext"]["http"]["method"] = 5
    call = lambda_api.invoke_and_wait(event)
    assert call.streamed
    assert call.prelude()["statusCode"] == 400
    assert json.loads(call.payload())["error"]["code"] == "malformed_event"


def test_an_invocation_that_raises_is_reported_to_error(app: FastAPI) -> None:
    def broken(event: Any, context: Any) -> Any:
        raise ValueError("handler broke")

    with runtime_api_standin() as api:
        runtime = StreamingRuntime(RuntimeApi(api.address), broken)
        thread = threading.Thread(target=_serve, args=(runtime,), daemon=True)
        thread.start()
        call = api.invoke_and_wait({"direct": "invocation"})
        assert call.error is not None and call.error["errorType"] == "ValueError"
        assert call.headers["lambda-runtime-function-error-type"] == "ValueError"
    thread.join(timeout=30)


def test_the_request_is_logged_and_its_metrics_flushed_before_the_stream_ends(
    lambda_api: RuntimeApiStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lambda may freeze the instance once a response ends: what the app does after its last body message (its
    log line, EMF metrics) must come first."""
    from distilgpt2_api import observability

    flushed: list[float] = []
    flush = observability.flush_metrics
    monkeypatch.setattr(observability, "flush_metrics", lambda: (flushed.append(time.monotonic()), flush()))
    call = lambda_api.invoke_and_wait(function_url_event("/generate_stream", {"prompt": PROMPT, "max_new_tokens": 3}))
    assert call.streamed and call.ended_at is not None
    assert flushed and flushed[0] < call.ended_at
