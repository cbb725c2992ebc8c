"""Refuse request bodies over a size limit with a JSON 413, before they are parsed.

Starlette's own limiter answers a declared oversize body in plain text; every error
this service returns is JSON, so the check raises into the app's error handlers instead.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` (declared or streamed) raises HTTP 413 when read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, self._limited(scope, receive) if scope["type"] == "http" else receive, send)

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        """`receive`, raising 413 once the declared or the received body is over the limit."""
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        return limited_receive

    def _too_large(self) -> HTTPException:
        # fastapi's HTTPException: FastAPI re-raises it from body parsing instead of turning it into a 400.
        return HTTPException(
            413, f"request body is larger than the limit of {self.max_bytes} bytes (the MAX_BODY_BYTES setting)"
        )
