"""Structured JSON logs, and CloudWatch EMF metrics under Lambda, with Powertools for AWS Lambda.

The same logger serves Lambda and uvicorn: JSON lines on stdout. EMF metrics are written for requests that
came through the Lambda handler only; elsewhere `GET /metrics` serves Prometheus metrics (http_api/metrics.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distilgpt2_api.core.request import Prompt
from distilgpt2_api.core.stream import Timings

SERVICE = "distilgpt2-api"
REQUEST_ID_HEADER = "x-request-id"
ACCESS_LOGGER = "uvicorn.access"  # logs the raw path, and `GET /{prompt}` puts the prompt there

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="DistilGPT2Api", service=SERVICE)


@dataclass(frozen=True)
class GenerationRecord:
    """What one generation did, made once when it ends: the request's log line, EMF and Prometheus read it."""

    prompt: Prompt
    timings: Timings
    prompt_tokens: int
    completion_tokens: tuple[int, ...]  # per choice
    finish_reasons: tuple[str, ...]  # per choice: a FinishReason, or why it did not finish (error, cancelled...)

    @property
    def seconds(self) -> float:
        """Time spent generating."""
        return self.timings.generating_seconds

    @property
    def total_completion_tokens(self) -> int:
        return sum(self.completion_tokens)


def under_lambda(scope: Scope) -> bool:
    """Whether the request came through the Lambda handler (Mangum puts the invocation's context in the scope).

    Only there are EMF metrics written: CloudWatch reads them from a Lambda function's log lines. Elsewhere
    the log stays plain, and `/metrics` (Prometheus) counts.
    """
    return "aws.context" in scope


def record_generation(request: Request, record: GenerationRecord) -> None:
    """Attach a generation to the current request: EMF metrics now (Lambda), log fields at the end of the request."""
    request.state.generation = record
    if not under_lambda(request.scope):
        return
    metrics.add_metric(name="GenerationLatency", unit=MetricUnit.Milliseconds, value=record.seconds * 1000)
    metrics.add_metric(name="CompletionTokens", unit=MetricUnit.Count, value=record.total_completion_tokens)
    if record.seconds > 0:
        tokens_per_second = record.total_completion_tokens / record.seconds
        metrics.add_metric(name="TokensPerSecond", unit=MetricUnit.CountPerSecond, value=tokens_per_second)


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "unknown"))


class RequestLogging:
    """ASGI middleware: a request id per request, one log line per request, an EMF flush per request (Lambda).

    Plain ASGI rather than BaseHTTPMiddleware, so request bodies stream through untouched.
    """

    def __init__(self, app: ASGIApp, *, log_prompts: bool) -> None:
        self.app = app
        self.log_prompts = log_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Under Lambda, reuse the invocation's id so API responses and CloudWatch logs line up.
        context = scope.get("aws.context")
        request_id = str(getattr(context, "aws_request_id", None) or uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what the client gets if the app raises
        started = time.perf_counter()

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            self._log(scope, status, time.perf_counter() - started)

    def _log(self, scope: Scope, status: int, seconds: float) -> None:
        state = scope["state"]
        fields: dict[str, object] = {
            "request_id": state["request_id"],
            "method": scope["method"],
            "route": getattr(scope.get("route"), "path", None),
            "status": status,
            "latency_ms": round(seconds * 1000, 2),
        }
        record: GenerationRecord | None = state.get("generation")
        if record is not None:
            fields.update(
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.total_completion_tokens,
                finish_reasons=list(record.finish_reasons),
                generation_ms=round(record.seconds * 1000, 2),
            )
            if self.log_prompts:  # prompts can hold personal data: off unless asked for
                fields["prompt"] = record.prompt
        logger.info("request", extra=fields)
        if under_lambda(scope):
            if status >= 500:
                metrics.add_metric(name="Errors", unit=MetricUnit.Count, value=1)
            flush_metrics()


def flush_metrics() -> None:
    """Write pending metrics as one EMF document; nothing (and no warning) when there are none."""
    if metrics.metric_set:
        metrics.flush_metrics()


def _drop(record: logging.LogRecord) -> bool:
    return False


def silence_access_log() -> None:
    """Keep uvicorn's access log (path included) out of the output, however uvicorn was started.

    The request log line above carries the method, route template, status and latency instead.
    """
    access = logging.getLogger(ACCESS_LOGGER)
    if _drop not in access.filters:
        access.addFilter(_drop)
