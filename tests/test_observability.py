"""Structured request logs (Powertools Logger) and EMF metrics (Powertools Metrics) on stdout."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from distilgpt2_api.engines.base import cpu_name
from distilgpt2_api.engines.cpus import usable_cpus
from distilgpt2_api.engines.llamacpp_engine import load_cpu_backend
from distilgpt2_api.http_api.app_factory import load_scheduler
from distilgpt2_api.observability import logger
from distilgpt2_api.settings import Settings

from event_factory import http_api_event, response_json, scheduled_event
from slowdown import fail_after


def _emf_documents(output: str) -> list[dict[str, Any]]:
    documents = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [d for d in documents if "_aws" in d]


def _metric_names(document: dict[str, Any]) -> set[str]:
    return {m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The JSON lines the service logger writes, captured."""
    stream = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


def _request_logs(stream: io.StringIO) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in entries if e["message"] == "request"]


def test_generation_emits_emf_metrics_under_lambda(
    lambda_handler: Any, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    event = http_api_event("POST", "/generate", body={"prompt": "Hello", "max_new_tokens": 5})
    response = lambda_handler(event, lambda_context)
    (document,) = _emf_documents(capsys.readouterr().out)
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "DistilGPT2Api"
    assert {"GenerationLatency", "CompletionTokens", "TokensPerSecond"} <= _metric_names(document)
    tokens = document["CompletionTokens"]
    assert (tokens[0] if isinstance(tokens, list) else tokens) == response_json(response)["usage"]["completion_tokens"]


def test_health_emits_no_metrics(lambda_handler: Any, lambda_context: Any, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    lambda_handler(http_api_event("GET", "/"), lambda_context)
    assert _emf_documents(capsys.readouterr().out) == []


def test_outside_lambda_no_emf_is_written(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    """Under uvicorn the log stays plain JSON lines: Prometheus' /metrics counts there."""
    capsys.readouterr()
    assert client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 3}).status_code == 200
    assert client.post("/generate", json={"prompt": ""}).status_code == 422
    assert _emf_documents(capsys.readouterr().out) == []


def test_errors_metric_on_internal_error(
    lambda_handler: Any,
    lambda_context: Any,
    app: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fail_after(app.state.scheduler.engine, monkeypatch, 0, "boom")  # the model fails at once
    capsys.readouterr()
    response = lambda_handler(http_api_event("POST", "/generate", body={"prompt": "hi"}), lambda_context)
    assert response["statusCode"] == 500
    documents = _emf_documents(capsys.readouterr().out)
    assert any("Errors" in _metric_names(d) for d in documents)


def test_loading_logs_the_engine_and_its_kernels(model_dir: Path, log_stream: io.StringIO) -> None:
    """The load log line says what the engine computes with on this CPU and why: llama.cpp's probed variant."""
    scheduler = load_scheduler(Settings(model_dir=model_dir, engine="llamacpp", max_batch_size=1))
    (entry,) = [e for e in map(json.loads, log_stream.getvalue().splitlines()) if e["message"] == "engine loaded"]
    variant = load_cpu_backend()
    assert entry["model"] == "tiny-gpt2" and entry["level"] == "INFO"
    kernels = {"engine": "llamacpp", "cpu": cpu_name(), "variant": variant.name, "reason": variant.reason}
    assert entry["kernels"] == kernels | {"threads": usable_cpus().count}
    assert entry["threads_set_by"] == usable_cpus().reason
    assert scheduler.kernels.variant == variant.name


def test_request_log_has_fields_but_no_prompt(client: TestClient, log_stream: io.StringIO) -> None:
    response = client.post("/generate", json={"prompt": "my secret prompt", "max_new_tokens": 3})
    body = response.json()
    (entry,) = _request_logs(log_stream)
    assert entry["level"] == "INFO"
    assert entry["service"] == "distilgpt2-api"
    assert entry["route"] == "/generate"
    assert entry["status"] == 200
    assert entry["latency_ms"] > 0
    assert entry["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert entry["completion_tokens"] == body["usage"]["completion_tokens"]
    assert entry["finish_reasons"] == body["finish_reasons"]
    assert entry["request_id"] == response.headers["x-request-id"]
    assert "my secret prompt" not in log_stream.getvalue()


def test_handler_logs_cold_start_and_emits_lambda_metrics(
    lambda_handler: Any,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_stream: io.StringIO,
) -> None:
    import aws_lambda_powertools.logging.logger as powertools_logger

    monkeypatch.setattr(powertools_logger, "is_cold_start", True)  # a fresh instance
    capsys.readouterr()
    lambda_handler(http_api_event("POST", "/generate", body={"prompt": "Hi", "max_new_tokens": 2}), lambda_context)
    lambda_handler(scheduled_event(), lambda_context)
    names = [_metric_names(d) for d in _emf_documents(capsys.readouterr().out)]
    assert "ColdStart" in names[0] and "GenerationLatency" in names[0]
    assert names[1] == {"WarmupPings"}
    (entry,) = _request_logs(log_stream)
    assert entry["request_id"] == lambda_context.aws_request_id
    assert entry["cold_start"] is True
    assert entry["function_name"] == lambda_context.function_name
