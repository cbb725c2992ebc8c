"""The Lambda handler: warm-up pings, foreign or malformed events, and HTTP events through Mangum.

Importing it imports the app, which loads the model: once per instance, during the cold start.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from mangum import Mangum

from distilgpt2_api.api import app
from distilgpt2_api.aws_lambda.events import (
    HttpApiHandler,
    RestApiHandler,
    is_warmup,
    malformed_event_result,
    unsupported_event_result,
    warmup_result,
)
from distilgpt2_api.aws_lambda.local import LocalContext
from distilgpt2_api.observability import flush_metrics, logger, metrics

# lifespan off: the model is loaded at import, and there is nothing to start per invocation.
asgi_handler = Mangum(app, lifespan="off", custom_handlers=[RestApiHandler, HttpApiHandler])


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point. Called without a context (`handler(event, None)`, as a quick local try does), it
    runs as a local invocation with a 60 s budget (aws_lambda/local.py)."""
    return _handle(event, LocalContext() if context is None else context)


@logger.inject_lambda_context(clear_state=True)
def _handle(event: Any, context: Any) -> dict[str, Any]:
    # Powertools' own cold-start flag, which it also writes into every log line of this invocation.
    cold_start = bool(logger.get_current_keys().get("cold_start"))
    if cold_start:
        metrics.add_metric(name="ColdStart", unit=MetricUnit.Count, value=1)
    try:
        return _dispatch(event, context, cold_start=cold_start)
    finally:
        flush_metrics()  # HTTP requests flush their own; this covers warm-ups and rejected events


def _dispatch(event: Any, context: Any, *, cold_start: bool) -> dict[str, Any]:
    request_id = str(getattr(context, "aws_request_id", "unknown"))
    if is_warmup(event):
        metrics.add_metric(name="WarmupPings", unit=MetricUnit.Count, value=1)
        logger.info("warm-up", extra={"cold_start_instance": cold_start})
        return warmup_result(cold_start=cold_start, model=app.state.scheduler.model_name)
    if not isinstance(event, dict):
        return unsupported_event_result(event, request_id)
    try:
        adapter = asgi_handler.infer(event, context)
    except RuntimeError:  # Mangum recognises no event source
        logger.warning("unsupported event", extra={"event_keys": sorted(map(str, event))[:10]})
        return unsupported_event_result(event, request_id)
    try:
        # Build what Mangum will build, to turn a malformed event into a 400, not a crash.
        scope, _ = adapter.scope, adapter.body
        if not (isinstance(scope["method"], str) and isinstance(scope["path"], str)):
            raise TypeError("the HTTP method and path must be strings")
    except (KeyError, TypeError, AttributeError, ValueError) as error:  # binascii.Error is a ValueError
        logger.warning("malformed event", extra={"error": repr(error)[:200]})
        return malformed_event_result(error, request_id)
    _ensure_event_loop()
    return asgi_handler(event, context)


def _ensure_event_loop() -> None:
    # Mangum runs the app on the thread's current event loop, set up once when it was created;
    # anything that later closed and cleared it (asyncio.run does) would break every request.
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
