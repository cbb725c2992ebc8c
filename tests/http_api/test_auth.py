"""API keys: every route that runs the model is closed without one, health and docs stay open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
from aws_lambda_powertools.utilities import parameters
from fastapi import FastAPI
from fastapi.testclient import TestClient
from moto import mock_aws

from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.http_api.auth import is_accepted, split_keys
from distilgpt2_api.settings import Settings

from route_table import app_routes
from server_process import serving_in_thread

KEYS = "old-key-123, new-key-456"  # two keys live at once: rotation
OPEN = {  # never run the model: health, docs, the playground page (it asks for the key), the icon browsers ask for
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/openapi.json"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/docs/assets/{name}"),
    ("GET", "/favicon.ico"),
    ("GET", "/playground"),
    ("GET", "/playground/assets/{name}"),
}
# One request per keyed route; test_every_model_route_is_listed keeps this list complete.
KEYED: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/{prompt}"): {"url": "/Once?max_new_tokens=2"},
    ("POST", "/generate"): {"url": "/generate", "json": {"prompt": "Once", "max_new_tokens": 2}},
    ("POST", "/v1/completions"): {"url": "/v1/completions", "json": {"prompt": "Once", "max_tokens": 2}},
    ("GET", "/v1/models"): {"url": "/v1/models"},
    ("POST", "/v1/chat/completions"): {
        "url": "/v1/chat/completions",
        "json": {"messages": [{"role": "user", "content": "Hi"}]},
    },
}
KEYED[("POST", "/generate_stream")] = {"url": "/generate_stream", "json": {"prompt": "Once", "max_new_tokens": 2}}
KEYED[("POST", "/tokenize")] = {"url": "/tokenize", "json": {"prompt": "Once"}}
KEYED[("POST", "/detokenize")] = {"url": "/detokenize", "json": {"tokens": [1, 2]}}
KEYED[("POST", "/v1/embeddings")] = {"url": "/v1/embeddings", "json": {"input": "Once"}}
KEYED[("POST", "/")] = {"url": "/", "json": {"inputs": "Once", "parameters": {"max_new_tokens": 2}}}
KEYED[("GET", "/metrics")] = {"url": "/metrics"}  # Prometheus sends the key too (docs/METRICS.md)
KEYED[("POST", "/v1/responses")] = {"url": "/v1/responses", "json": {"input": "Hi"}}
KEYED[("GET", "/v1/responses/{response_id}")] = {"url": "/v1/responses/resp_1"}
KEYED[("DELETE", "/v1/responses/{response_id}")] = {"url": "/v1/responses/resp_1"}
ANTHROPIC_MESSAGE = {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "Hi"}]}
KEYED[("POST", "/v1/messages")] = {"url": "/v1/messages", "json": {**ANTHROPIC_MESSAGE, "max_tokens": 2}}
KEYED[("POST", "/v1/messages/count_tokens")] = {"url": "/v1/messages/count_tokens", "json": ANTHROPIC_MESSAGE}
# The tiny GPT-2 has no chat template: past the key, served, and refused for that (Anthropic's API in its shape).
PAST_THE_KEY = {
    ("POST", "/v1/chat/completions"): (400, "chat_template_missing"),
    ("POST", "/v1/responses"): (400, "chat_template_missing"),
    ("GET", "/v1/responses/{response_id}"): (404, "response_not_found"),  # past the key: no such response
    ("DELETE", "/v1/responses/{response_id}"): (404, "response_not_found"),
    ("POST", "/v1/messages"): (400, "invalid_request_error"),
    ("POST", "/v1/messages/count_tokens"): (400, "invalid_request_error"),
}


def error_code(body: dict[str, Any]) -> str:
    """An error's code, or for Anthropic's shape (`{"type": "error", ...}`) its type."""
    return str(body["error"]["type"] if body.get("type") == "error" else body["error"]["code"])


def keyed_app(app: FastAPI, **settings: Any) -> FastAPI:
    """The production app around the session's model, with key settings of its own."""
    return create_app(app.state.scheduler, Settings(model_dir=Path("unused"), **settings))


@pytest.fixture(scope="module")
def locked(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(keyed_app(app, api_key=KEYS), raise_server_exceptions=False) as client:
        yield client


def _send(client: TestClient, route: tuple[str, str], headers: dict[str, str]) -> Any:
    return client.request(route[0], headers=headers, **KEYED[route])


def test_every_model_route_is_listed(locked: TestClient) -> None:
    assert isinstance(locked.app, FastAPI)
    assert app_routes(locked.app) - OPEN == set(KEYED)


@pytest.mark.parametrize("route", KEYED)
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"authorization": "Bearer wrong-key"}, "invalid_api_key"),
        ({"authorization": "Bearer old-key-12"}, "invalid_api_key"),  # a prefix of a real key
        ({"authorization": "Basic b2xkLWtleS0xMjM="}, "missing_api_key"),  # not a bearer token
    ],
)
def test_without_a_valid_key_is_a_401(
    locked: TestClient, route: tuple[str, str], headers: dict[str, str], code: str
) -> None:
    response = _send(locked, route, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    if route[1].startswith("/v1/messages"):  # Anthropic's shape: its error type, no code
        assert body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["code"] == code
        assert body["error"]["type"] == "invalid_request_error"
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("route", KEYED)
@pytest.mark.parametrize(
    "headers",
    [{"authorization": "Bearer old-key-123"}, {"authorization": "Bearer new-key-456"}, {"x-api-key": "new-key-456"}],
    ids=["bearer-old", "bearer-new", "x-api-key"],
)
def test_with_either_key_is_served(
    locked: TestClient, client: TestClient, route: tuple[str, str], headers: dict[str, str]
) -> None:
    response = _send(locked, route, headers)
    if route in PAST_THE_KEY:
        assert (response.status_code, error_code(response.json())) == PAST_THE_KEY[route]
        return
    assert response.status_code == 200, response.text
    # What the open app answers to the same request, in the same shape.
    open_answer = _send(client, route, {})
    assert response.headers["content-type"] == open_answer.headers["content-type"]
    if response.headers["content-type"] == "application/json":
        answer, expected = response.json(), open_answer.json()
        assert type(answer) is type(expected)  # a list (text-generation-inference's POST /) or an object
        first, expected_first = (answer[0], expected[0]) if isinstance(answer, list) else (answer, expected)
        assert first.keys() == expected_first.keys()


def test_a_bad_request_without_a_key_learns_nothing_about_the_schema(locked: TestClient) -> None:
    response = locked.post("/generate", json={"prompt": ""})
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    assert "param" not in response.json()["error"]


@pytest.mark.parametrize("path", ["/", "/docs", "/openapi.json", "/playground"])
def test_health_and_docs_stay_open(locked: TestClient, path: str) -> None:
    assert locked.get(path).status_code == 200


def test_openapi_declares_the_bearer_scheme(locked: TestClient) -> None:
    schema = locked.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The same key, as Anthropic's clients send it.",
    }
    # Either scheme (OpenAPI's list of requirements is a choice).
    assert schema["paths"]["/generate"]["post"]["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert "security" not in schema["paths"]["/"]["get"]


def test_no_key_configured_leaves_the_api_open(client: TestClient) -> None:
    response = client.post("/generate", json={"prompt": "Once", "max_new_tokens": 2})
    assert response.status_code == 200
    assert response.json()["generated_sequences"][0].startswith("Once")


def test_keys_compare_whole() -> None:
    keys = split_keys(" a1 ,b2,, ")
    assert keys == (b"a1", b"b2")
    assert is_accepted("b2", keys) and not is_accepted("b", keys) and not is_accepted("b22", keys)
    assert not is_accepted("", keys)


@pytest.fixture(scope="module")
def sdk_base_url(app: FastAPI) -> Iterator[str]:
    with serving_in_thread(keyed_app(app, api_key=KEYS)) as url:
        yield f"{url}/v1"


def test_openai_sdk_sends_its_api_key(sdk_base_url: str) -> None:
    good = openai.OpenAI(base_url=sdk_base_url, api_key="new-key-456", max_retries=0, timeout=30)
    (choice,) = good.completions.create(model="tiny-gpt2", prompt="Once", max_tokens=2).choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    bad = openai.OpenAI(base_url=sdk_base_url, api_key="nope", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as error:
        bad.completions.create(model="tiny-gpt2", prompt="Once", max_tokens=2)
    assert error.value.code == "invalid_api_key"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    parameters.clear_caches()
    with mock_aws():
        yield
    parameters.clear_caches()


def _status_with(client: TestClient, key: str) -> int:
    return int(client.get("/v1/models", headers={"authorization": f"Bearer {key}"}).status_code)


def test_key_from_ssm_parameter_store(app: FastAPI, aws: None) -> None:
    boto3.client("ssm").put_parameter(Name="/distilgpt2-api/key", Value="ssm-key-1,ssm-key-2", Type="SecureString")
    with TestClient(keyed_app(app, api_key_parameter="/distilgpt2-api/key")) as client:
        assert _status_with(client, "ssm-key-2") == 200
        assert _status_with(client, "other") == 401


def test_key_from_secrets_manager(app: FastAPI, aws: None) -> None:
    arn = boto3.client("secretsmanager").create_secret(Name="distilgpt2-api-key", SecretString="sm-key")["ARN"]
    with TestClient(keyed_app(app, api_key_parameter=arn)) as client:
        assert _status_with(client, "sm-key") == 200
        assert _status_with(client, "ssm-key-1") == 401
