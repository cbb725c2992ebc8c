"""handler.handler: API Gateway REST and HTTP APIs, Function URLs, warm-up and foreign events."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from event_factory import http_api_event, response_json, rest_api_event, scheduled_event


def test_http_api_health(lambda_handler: Any, lambda_context: Any) -> None:
    response = lambda_handler(http_api_event("GET", "/"), lambda_context)
    assert response["statusCode"] == 200
    assert response_json(response)["health"] == "ok"
    # The request id is the Lambda invocation's, so responses and logs line up.
    assert response["headers"]["x-request-id"] == lambda_context.aws_request_id


def test_http_api_prompt_route_with_query(lambda_handler: Any, lambda_context: Any) -> None:
    # HTTP APIs hand the path over decoded.
    event = http_api_event("GET", "/Hello world", query="max_new_tokens=4&num_return_sequences=2")
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200
    sequences = response_json(response)["generated_sequences"]
    assert len(sequences) == 2
    assert all(s.startswith("Hello world") and len(s) > len("Hello world") for s in sequences)


@pytest.mark.parametrize("base64_body", [False, True])
def test_http_api_post_generate(
    lambda_handler: Any, lambda_context: Any, client: TestClient, base64_body: bool
) -> None:
    request = {"prompt": "Once", "max_new_tokens": 3, "details": True}
    event = http_api_event("POST", "/generate", body=request, base64_body=base64_body)
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200
    assert response["headers"]["content-type"] == "application/json"
    body = response_json(response)
    # Greedy: the tokens the app gives without Lambda (their logprobs may differ in the last digits when the prefix
    # cache computed part of the prompt: the same sums, in another order).
    direct = client.post("/generate", json=request).json()

    def tokens(answer: dict[str, Any]) -> tuple[Any, ...]:
        (details,) = answer["details"]
        usage = {k: v for k, v in answer["usage"].items() if k != "prompt_tokens_details"}
        return answer["generated_sequences"], answer["finish_reasons"], usage, [t["id"] for t in details["tokens"]]

    assert tokens(body) == tokens(direct)
    assert body["usage"]["completion_tokens"] == len(body["details"][0]["tokens"])


def test_http_api_bad_input_is_a_422(lambda_handler: Any, lambda_context: Any) -> None:
    response = lambda_handler(http_api_event("POST", "/generate", body={"prompt": ""}), lambda_context)
    assert response["statusCode"] == 422
    assert response_json(response)["error"]["param"] == "prompt"


def test_function_url_decodes_the_path(lambda_handler: Any, lambda_context: Any) -> None:
    event = http_api_event("GET", "/Hello%20world", query="max_new_tokens=2", function_url=True)
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200
    assert response_json(response)["generated_sequences"][0].startswith("Hello world")


def test_rest_api_with_stage_prefix(lambda_handler: Any, lambda_context: Any) -> None:
    health = lambda_handler(rest_api_event("GET", "/", stage="Prod"), lambda_context)
    assert health["statusCode"] == 200
    assert response_json(health)["health"] == "ok"

    prompt = lambda_handler(
        rest_api_event("GET", "/Hello%20there", stage="Prod", query={"max_new_tokens": "3"}), lambda_context
    )
    assert prompt["statusCode"] == 200
    assert response_json(prompt)["generated_sequences"][0].startswith("Hello there")

    generate = lambda_handler(
        rest_api_event("POST", "/generate", stage="Prod", body={"prompt": "Hi", "max_new_tokens": 2}), lambda_context
    )
    assert generate["statusCode"] == 200
    assert response_json(generate)["generated_sequences"][0].startswith("Hi")

    completions = lambda_handler(
        rest_api_event("POST", "/v1/completions", stage="Prod", body={"prompt": "Hi", "max_tokens": 2}),
        lambda_context,
    )
    assert completions["statusCode"] == 200
    assert response_json(completions)["object"] == "text_completion"


def test_docs_behind_a_stage_point_at_the_staged_schema(lambda_handler: Any, lambda_context: Any) -> None:
    docs = lambda_handler(rest_api_event("GET", "/docs", stage="Prod"), lambda_context)
    assert docs["statusCode"] == 200
    assert "/Prod/openapi.json" in docs["body"]
    schema = lambda_handler(rest_api_event("GET", "/openapi.json", stage="Prod"), lambda_context)
    assert schema["statusCode"] == 200
    assert response_json(schema)["servers"] == [{"url": "/Prod"}]


@pytest.mark.parametrize("event", [scheduled_event(), {"warmup": True}], ids=["eventbridge", "payload"])
def test_warmup_answers_without_the_model(
    event: dict[str, Any], lambda_handler: Any, lambda_context: Any, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aws_lambda_powertools.logging.logger as powertools_logger

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("warm-up touched the model")

    monkeypatch.setattr(app.state.scheduler.engine, "forward", must_not_run)
    monkeypatch.setattr(app.state.scheduler.engine.tokenizer, "encode", must_not_run)
    monkeypatch.setattr(powertools_logger, "is_cold_start", True)  # a fresh instance
    first = lambda_handler(event, lambda_context)
    assert first == {"warmed": True, "cold_start": True, "model": "tiny-gpt2"}
    assert lambda_handler(event, lambda_context)["cold_start"] is False


@pytest.mark.parametrize(
    "event",
    [
        {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}}}]},
        {"warmup": "yes"},
        {},
        "just a string",
        ["a", "list"],
        None,
        42,
    ],
    ids=["s3", "warmup-not-true", "empty", "string", "list", "none", "int"],
)
def test_non_http_events_get_a_clear_error(event: Any, lambda_handler: Any, lambda_context: Any) -> None:
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 400
    body = response_json(response)
    assert body["error"]["code"] == "unsupported_event"
    assert "API Gateway" in body["error"]["message"]
    # The same shape as the API's own errors: the invocation's id, in the body and the header.
    assert body["request_id"] == lambda_context.aws_request_id == response["headers"]["x-request-id"]


def _broken(event: dict[str, Any], *path: str, value: Any) -> dict[str, Any]:
    target = event
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return event


@pytest.mark.parametrize(
    "event",
    [
        _broken(http_api_event("GET", "/"), "requestContext", "http", value={}),
        _broken(http_api_event("GET", "/"), "headers", value=None),
        _broken(http_api_event("GET", "/"), "requestContext", "http", "method", value=[]),
        _broken(http_api_event("POST", "/generate", body={"prompt": "x"}, base64_body=True), "body", value="A"),
        {"version": None, "requestContext": {}, "path": None},
        {"resource": None, "requestContext": {}, "httpMethod": None},
    ],
    ids=["no-http-context", "headers-null", "method-list", "bad-base64", "v1-without-method", "rest-without-path"],
)
def test_malformed_http_events_get_a_clear_error(event: Any, lambda_handler: Any, lambda_context: Any) -> None:
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 400
    body = response_json(response)
    assert body["error"]["code"] == "malformed_event"
    assert body["error"]["message"].startswith("malformed API Gateway event")
    assert body["request_id"] == lambda_context.aws_request_id


def test_handler_survives_a_cleared_event_loop(lambda_handler: Any, lambda_context: Any) -> None:
    import asyncio

    asyncio.set_event_loop(None)  # what asyncio.run leaves behind
    assert lambda_handler(http_api_event("GET", "/"), lambda_context)["statusCode"] == 200
