"""Time budgets (finish_reason time_limit, never a gateway timeout), body size cap, CORS closed by default."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.core.time_budget import TimeBudget
from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.settings import Settings

from engine_apps import llamacpp_app
from event_factory import http_api_event, response_json
from slowdown import STEP_SECONDS, slow_down


@pytest.fixture
def slow_model(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_down(app.state.scheduler.engine, monkeypatch)


@pytest.fixture
def set_budget(app: FastAPI) -> Iterator[Callable[[TimeBudget], None]]:
    """Swap the app's time budget for one test."""
    original = app.state.time_budget
    yield lambda budget: setattr(app.state, "time_budget", budget)
    app.state.time_budget = original


def _seconds(seconds: float) -> TimeBudget:
    return TimeBudget(max_seconds=seconds, gateway_timeout_seconds=30, margin_seconds=0)


def test_budget_is_the_least_of_its_limits() -> None:
    budget = TimeBudget(max_seconds=25, gateway_timeout_seconds=30, margin_seconds=1.5)
    assert budget.seconds_for({}) == 25
    assert TimeBudget(40, 30, 1.5).seconds_for({}) == 28.5

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 10_000

    assert budget.seconds_for({"aws.context": Context()}) == 8.5


def test_slow_generation_stops_at_the_budget(
    client: TestClient, set_budget: Callable[[TimeBudget], None], slow_model: None
) -> None:
    set_budget(_seconds(0.5))
    started = time.monotonic()
    response = client.post("/generate", json={"prompt": "Once", "max_new_tokens": 200, "return_full_text": False})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    body = response.json()
    assert body["finish_reasons"] == ["time_limit"]
    # Every token takes a slowed step: no more fit in the budget than it has steps (and the first always comes).
    assert 1 <= body["usage"]["completion_tokens"] <= 0.5 / STEP_SECONDS + 1
    assert elapsed < 5  # 200 slowed steps would take over 10 s


def test_openai_route_reports_length_with_a_time_limit_flag(
    client: TestClient, set_budget: Callable[[TimeBudget], None], slow_model: None
) -> None:
    set_budget(_seconds(0.5))
    response = client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 200, "temperature": 0})
    body = response.json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["time_limit_reached"] is True
    assert 1 <= body["usage"]["completion_tokens"] <= 0.5 / STEP_SECONDS + 1  # cut, well before max_tokens


def test_lambda_remaining_time_bounds_the_budget(
    lambda_handler: Any, lambda_context: Any, set_budget: Callable[[TimeBudget], None], slow_model: None
) -> None:
    set_budget(TimeBudget(max_seconds=25, gateway_timeout_seconds=30, margin_seconds=1.0))
    lambda_context.remaining_millis = 1_500  # 0.5 s left after the margin
    event = http_api_event("POST", "/generate", body={"prompt": "Once", "max_new_tokens": 200})
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200
    assert response_json(response)["finish_reasons"] == ["time_limit"]


def test_budget_spent_waiting_is_a_503(client: TestClient, set_budget: Callable[[TimeBudget], None]) -> None:
    set_budget(_seconds(0.0))
    response = client.post("/generate", json={"prompt": "Once", "max_new_tokens": 5})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert response.headers["retry-after"] == "1"


BODY_LIMIT: int = Settings.model_fields["max_body_bytes"].default


def test_oversized_body_is_a_413_naming_the_setting(client: TestClient) -> None:
    response = client.post("/generate", content=b'{"prompt": "' + b"a" * (BODY_LIMIT + 1) + b'"}')
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert f"{BODY_LIMIT} bytes" in error["message"] and "MAX_BODY_BYTES" in error["message"]


def test_oversized_chunked_body_is_a_413(client: TestClient) -> None:
    def chunks() -> Any:
        yield b'{"prompt": "'
        for _ in range(BODY_LIMIT // 4096 + 1):
            yield b"a" * 4096
        yield b'"}'

    response = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_body_within_the_limit_is_served(client: TestClient) -> None:
    # JSON whitespace just under the cap, so only the size is being tested.
    body = b'{"prompt": "Once",' + b" " * (BODY_LIMIT - 100) + b'"max_new_tokens": 1}'
    response = client.post("/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 1


def test_long_prompt_within_the_body_limit_reaches_the_context_check(client: TestClient) -> None:
    # 7,000 characters pass the size cap and the schema; the tiny model's 256-token context refuses them.
    response = client.post("/generate", json={"prompt": "a " * 3500, "max_new_tokens": 1})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_cors_is_closed_by_default(client: TestClient) -> None:
    preflight = client.options(
        "/generate", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    response = client.get("/", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_configured_cors_admits_every_clients_headers_and_methods(app: FastAPI) -> None:
    """Anthropic's SDK in a browser sends x-api-key and anthropic-version; a stored response is deleted with DELETE."""
    origin = "https://app.example"
    opened = create_app(app.state.scheduler, Settings(model_dir=Path("unused"), cors_allow_origins=[origin]))
    with TestClient(opened) as client:
        for path, method, headers in [
            ("/v1/messages", "POST", "x-api-key,anthropic-version,content-type"),
            ("/v1/responses/resp_1", "DELETE", "authorization"),
        ]:
            preflight = client.options(
                path,
                headers={
                    "origin": origin,
                    "access-control-request-method": method,
                    "access-control-request-headers": headers,
                },
            )
            assert preflight.status_code == 200, (path, preflight.text)
            assert preflight.headers["access-control-allow-origin"] == origin
            assert method in preflight.headers["access-control-allow-methods"]


@pytest.fixture(scope="module")
def budgeted_app(model_dir: Path) -> FastAPI:
    """The default engine's app with a 100-token budget per request (MAX_BATCH_TOKENS)."""
    return llamacpp_app(model_dir, max_batch_tokens=100)


@pytest.fixture
def budgeted(budgeted_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(budgeted_app) as client:
        yield client


def test_sampled_sequences_beyond_the_token_budget_are_a_400(budgeted: TestClient) -> None:
    body = {"prompt": "Once", "max_new_tokens": 20, "num_return_sequences": 8, "do_sample": True}
    response = budgeted.post("/generate", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "token_budget_exceeded"
    assert "MAX_BATCH_TOKENS" in error["message"] and "100" in error["message"]
    body["num_return_sequences"] = 4  # 4 x (1 + 20) = 84 tokens: within the budget
    response = budgeted.post("/generate", json=body)
    assert response.status_code == 200
    assert len(response.json()["generated_sequences"]) == len(response.json()["finish_reasons"]) == 4


def test_greedy_sequences_count_once_against_the_budget(budgeted: TestClient) -> None:
    # Greedy decoding computes one sequence and repeats it: 8 copies cost what one does.
    body = {"prompt": "Once", "max_new_tokens": 20, "num_return_sequences": 8}
    response = budgeted.post("/generate", json=body)
    assert response.status_code == 200
    single = budgeted.post("/generate", json={**body, "num_return_sequences": 1}).json()
    assert response.json()["generated_sequences"] == single["generated_sequences"] * 8


def test_openai_route_has_the_same_budget(budgeted: TestClient) -> None:
    response = budgeted.post("/v1/completions", json={"prompt": "Once", "max_tokens": 60, "n": 2})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "token_budget_exceeded"


def test_limits_come_from_the_settings_given_to_create_app(app: FastAPI) -> None:
    settings = Settings(model_dir=Path("unused"), max_new_tokens_limit=10, max_return_sequences=2, max_prompt_chars=20)
    with TestClient(create_app(app.state.scheduler, settings)) as client:
        ok = {"prompt": "Once", "max_new_tokens": 10, "num_return_sequences": 2}
        answer = client.post("/generate", json=ok)
        assert answer.status_code == 200 and len(answer.json()["generated_sequences"]) == 2
        for field, value in (("max_new_tokens", 11), ("num_return_sequences", 3), ("prompt", "x" * 21)):
            response = client.post("/generate", json={**ok, field: value})
            assert response.status_code == 422 and response.json()["error"]["param"] == field, field
        assert client.get("/Once?max_new_tokens=11").status_code == 422
        assert client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 11}).status_code == 422
        assert client.post("/v1/completions", json={"prompt": "Once", "n": 3}).status_code == 422
        properties = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"]
        assert properties["max_new_tokens"]["maximum"] == 10
        assert properties["prompt"]["maxLength"] == 20
