"""Under Lambda, Mangum buffers a response: a streamed request gets the whole event stream at once, still valid."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import openai

from event_factory import http_api_event

PROMPT = "Once upon a time"


def _through_lambda(lambda_handler: Any, lambda_context: Any) -> httpx.MockTransport:
    """An HTTP transport that turns each request into an API Gateway (HTTP API) event for the handler."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        event = http_api_event(request.method, request.url.path, query=request.url.query.decode(), body=body)
        response = lambda_handler(event, lambda_context)
        content = response["body"]
        raw = base64.b64decode(content) if response.get("isBase64Encoded") else content.encode()
        return httpx.Response(response["statusCode"], headers=response.get("headers", {}), content=raw)

    return httpx.MockTransport(handle)


def test_the_sdk_reads_a_buffered_stream(lambda_handler: Any, lambda_context: Any) -> None:
    http_client = httpx.Client(transport=_through_lambda(lambda_handler, lambda_context), base_url="https://api")
    sdk = openai.OpenAI(base_url="https://api/v1", api_key="unused", http_client=http_client, max_retries=0)
    request: dict[str, Any] = {"model": "tiny-gpt2", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = sdk.completions.create(**request)
    chunks = list(sdk.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage is not None and plain.usage is not None
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # what the prefix cache reused may differ
    assert [getattr(chunks[-1].usage, k) for k in counts] == [getattr(plain.usage, k) for k in counts]


def test_a_buffered_stream_is_a_whole_event_stream(lambda_handler: Any, lambda_context: Any) -> None:
    event = http_api_event("POST", "/generate_stream", body={"prompt": PROMPT, "max_new_tokens": 6})
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200
    assert response["headers"]["content-type"].startswith("text/event-stream")
    body = base64.b64decode(response["body"]).decode() if response.get("isBase64Encoded") else response["body"]
    events = [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1]["details"]["generated_tokens"] == len(events)
    assert events[-1]["details"]["finish_reason"] == ("length" if len(events) == 6 else "eos")
    assert events[-1]["generated_text"] == PROMPT + "".join(e["token"]["text"] for e in events)
    assert all(e["generated_text"] is None for e in events[:-1])
