"""What the Lambda entry needs beyond Mangum: warm-up pings, stage prefixes, foreign events."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from mangum.handlers.api_gateway import APIGateway, HTTPGateway
from mangum.types import Scope

from distilgpt2_api.http_api.protocol import ErrorBody, ErrorResponse
from distilgpt2_api.observability import REQUEST_ID_HEADER


def is_warmup(event: object) -> bool:
    """An EventBridge schedule, or the explicit `{"warmup": true}` payload."""
    if not isinstance(event, dict):
        return False
    scheduled = event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event"
    return scheduled or event.get("warmup") is True


def warmup_result(*, cold_start: bool, model: str) -> dict[str, Any]:
    return {"warmed": True, "cold_start": cold_start, "model": model}


def bad_event_result(code: str, message: str, request_id: str) -> dict[str, Any]:
    """A clear 400 for an event no route can serve, in the API's own error shape."""
    error = ErrorBody(message=message, type="invalid_request_error", code=code)
    body = ErrorResponse(error=error, request_id=request_id)
    return {
        "statusCode": 400,
        "headers": {"content-type": "application/json", REQUEST_ID_HEADER: request_id},
        "body": body.model_dump_json(exclude_none=True),
    }


def unsupported_event_result(event: object, request_id: str) -> dict[str, Any]:
    keys = sorted(map(str, event))[:10] if isinstance(event, dict) else []
    return bad_event_result(
        "unsupported_event",
        "unsupported event: expected an API Gateway (REST or HTTP API), Lambda Function URL "
        f"or warm-up event; got {type(event).__name__} with keys {keys}",
        request_id,
    )


def malformed_event_result(error: Exception, request_id: str) -> dict[str, Any]:
    message = f"malformed API Gateway event: {type(error).__name__}: {error}"[:500]
    return bad_event_result("malformed_event", message, request_id)


def _normalize_scope(scope: Scope, event: dict[str, Any], *, path_is_encoded: bool) -> Scope:
    """Make Mangum's scope follow the ASGI spec for every API Gateway flavour."""
    path = str(scope["path"])
    if path_is_encoded:
        # ASGI wants the decoded path; REST APIs and Function URLs pass it percent-encoded.
        scope["raw_path"] = path.encode()
        path = unquote(path)
    # A named stage ("/Prod") stands in front of every public URL. Declaring it as root_path
    # keeps routing unchanged and makes /docs link to /Prod/openapi.json.
    context = event.get("requestContext") or {}
    stage = str(context.get("stage") or "$default")
    public_path = str(context.get("path") or event.get("rawPath") or "")
    prefix = f"/{stage}"
    if stage != "$default" and (public_path == prefix or public_path.startswith(prefix + "/")):
        scope["root_path"] = prefix
        if not (path == prefix or path.startswith(prefix + "/")):
            path = prefix + path
    scope["path"] = path
    return scope


class RestApiHandler(APIGateway):
    """REST API events (payload 1.0)."""

    @property
    def scope(self) -> Scope:
        # HTTP APIs can send payload 1.0 too ("version": "1.0"); only they decode the path.
        return _normalize_scope(super().scope, self.event, path_is_encoded="version" not in self.event)


class HttpApiHandler(HTTPGateway):
    """HTTP API (payload 2.0) and Lambda Function URL events."""

    @property
    def scope(self) -> Scope:
        domain = str((self.event.get("requestContext") or {}).get("domainName") or "")
        return _normalize_scope(super().scope, self.event, path_is_encoded=".lambda-url." in domain)
