"""AWS Lambda entry point: `handler.handler`.

Importing the app loads the model, so that happens once per instance, during the cold start.
"""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from distilgpt2_api.app import app
from distilgpt2_api.lambda_events import (
    HttpApiHandler,
    RestApiHandler,
    is_warmup,
    unsupported_event_result,
    warmup_result,
)

# lifespan off: the model is loaded at import, and there is nothing to start per invocation.
asgi_handler = Mangum(app, lifespan="off", custom_handlers=[RestApiHandler, HttpApiHandler])
_cold_start = True


def handler(event: Any, context: Any) -> dict[str, Any]:
    global _cold_start
    cold_start, _cold_start = _cold_start, False
    if is_warmup(event):
        return warmup_result(cold_start=cold_start, model=app.state.generator.model_name)
    try:
        asgi_handler.infer(event, context)
    except (RuntimeError, TypeError):
        return unsupported_event_result(event)
    return asgi_handler(event, context)
