"""Every error leaves as JSON with a request id: never a traceback, never a 500 for bad input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import get_route_path

from distilgpt2_api.core.errors import DeadlineExceeded, InvalidRequest
from distilgpt2_api.http_api.anthropic.protocol import ANTHROPIC_PATH, anthropic_error
from distilgpt2_api.http_api.protocol import BODY_SHAPES, ErrorBody, ErrorResponse
from distilgpt2_api.http_api.routing import owned_by_fixed_route
from distilgpt2_api.observability import REQUEST_ID_HEADER, logger, request_id


class ApiError(Exception):
    """A request the service understood but will not serve, with its HTTP status."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        param: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def error_body(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    detail: list[dict[str, object]] | None = None,
) -> ErrorResponse:
    error_type = "invalid_request_error" if status_code < 500 else "server_error"
    return ErrorResponse(
        error=ErrorBody(message=message, type=error_type, code=code, param=param),
        request_id=request_id(request),
        detail=detail,
    )


def stream_error(request: Request, exc: Exception) -> ErrorResponse:
    """The error event that ends a stream whose response has already begun (its status was 200)."""
    if isinstance(exc, DeadlineExceeded):
        return error_body(request, 503, "deadline_exceeded", str(exc))
    logger.exception("error while streaming request %s", request_id(request))
    return error_body(request, 500, "internal_error", "internal error while generating; quote the request_id")


def _error(request: Request, status_code: int, code: str, message: str, **fields: Any) -> JSONResponse:
    if get_route_path(request.scope).startswith(ANTHROPIC_PATH):  # Anthropic's API answers in its own shape
        status_code, anthropic = anthropic_error(status_code, message, request_id(request))
        return JSONResponse(anthropic.model_dump(), status_code=status_code)
    body = error_body(request, status_code, code, message, **fields)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Drop the echoed input: it can be a whole prompt, and it is the caller's own data anyway.
    errors = exc.errors()
    detail = [{"loc": _location(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    if errors and detail[0]["loc"] == ["body"] and isinstance(errors[0].get("input"), bytes):
        # FastAPI parses a body as JSON only when its content type says so; otherwise it hands over bytes.
        content_type = request.headers.get("content-type", "none")
        message = f"send the request body as a JSON object with Content-Type: application/json (got {content_type})"
        return _error(request, 415, "unsupported_media_type", message)
    if errors and errors[0]["type"] == "json_invalid":
        # FastAPI reports the character offset as the location: say what it is.
        where, reason = errors[0]["loc"][-1], errors[0].get("ctx", {}).get("error", "JSON decode error")
        message = f"the request body is not valid JSON: {reason} at character {where}"
        return _error(request, 422, "invalid_json", message, detail=detail)
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    if first.get("type") == "extra_forbidden":  # a field of the API this server does not implement
        first = {**first, "msg": "not supported by this server"}
    field_path = [str(part) for part in first["loc"] if part not in ("body", "query", "path")]
    param = ".".join(field_path) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return _error(request, 422, "validation_error", message, param=param, detail=detail)


def _location(loc: Sequence[int | str]) -> list[int | str]:
    """An error's location in the request, without the tag of the body shape it was read as (BODY_SHAPES)."""
    return [part for index, part in enumerate(loc) if not (index == 1 and loc[0] == "body" and part in BODY_SHAPES)]


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's "There was an error parsing the body"
        message = f"the request body is not valid JSON: it is not UTF-8 text ({exc.__cause__.reason})"
        return _error(request, 422, "invalid_json", message)
    if exc.status_code == 405 and not owned_by_fixed_route(request.app.routes, request.scope):
        # Only the catch-all `GET /{prompt}` matched the path: for any other method it does not exist.
        return _error(request, 404, "not_found", f"no route for {request.method} {request.url.path}")
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    response = _error(request, exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
    response.headers.update(exc.headers or {})  # a 405's Allow
    return response


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    response = _error(request, exc.status_code, exc.code, exc.message, param=exc.param)
    response.headers.update(exc.headers)
    return response


async def _on_invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    return _error(request, exc.status, exc.code, str(exc), param=exc.param)


async def _on_deadline(request: Request, exc: Exception) -> Response:
    response = _error(request, 503, "deadline_exceeded", f"{exc}; retry later")
    response.headers["retry-after"] = "1"
    return response


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error while serving request %s", request_id(request))
    response = _error(request, 500, "internal_error", "internal error while serving the request; quote the request_id")
    # Sent from outside every middleware (Starlette's ServerErrorMiddleware), so the request id's header too.
    response.headers[REQUEST_ID_HEADER] = request_id(request)
    return response


def install_error_handling(app: FastAPI) -> None:
    """Register the JSON error handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(InvalidRequest, _on_invalid_request)
    app.add_exception_handler(DeadlineExceeded, _on_deadline)
    app.add_exception_handler(Exception, _on_unexpected)
