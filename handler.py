"""AWS Lambda entry point: `handler.handler`.

Importing the app loads the model, so that happens once per instance, during the cold start.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from mangum import Mangum

from distilgpt2_api.app import app
from distilgpt2_api.lambda_events import (
    HttpApiHandler,
    RestApiHandler,
    is_warmup,
    unsupported_event_result,
    warmup_result,
)
from distilgpt2_api.observability import flush_metrics, logger, metrics

# lifespan off: the model is loaded at import, and there is nothing to start per invocation.
asgi_handler = Mangum(app, lifespan="off", custom_handlers=[RestApiHandler, HttpApiHandler])
_cold_start = True


@logger.inject_lambda_context(clear_state=True)
def handler(event: Any, context: Any) -> dict[str, Any]:
    global _cold_start
    cold_start, _cold_start = _cold_start, False
    if cold_start:
        metrics.add_metric(name="ColdStart", unit=MetricUnit.Count, value=1)
    try:
        return _dispatch(event, context, cold_start=cold_start)
    finally:
        flush_metrics()  # HTTP requests flush their own; this covers warm-ups and rejected events


def _dispatch(event: Any, context: Any, *, cold_start: bool) -> dict[str, Any]:
    if is_warmup(event):
        metrics.add_metric(name="WarmupPings", unit=MetricUnit.Count, value=1)
        logger.info("warm-up", extra={"cold_start_instance": cold_start})
        return warmup_result(cold_start=cold_start, model=app.state.generator.model_name)
    try:
        asgi_handler.infer(event, context)
    except (RuntimeError, TypeError):
        logger.warning("unsupported event", extra={"event_type": type(event).__name__})
        return unsupported_event_result(event)
    return asgi_handler(event, context)
