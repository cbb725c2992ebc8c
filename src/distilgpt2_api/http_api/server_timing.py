"""The standard `Server-Timing` response header: where a request's time went, for clients and browser tools.

Routes record metrics on the request (`add_timing`); this ASGI middleware writes them when the response
starts, and on an instance's first response also the cold start (loading the model).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distilgpt2_api.core.stream import Timings

HEADER = "server-timing"


@dataclass(frozen=True)
class Timing:
    name: str  # a token: letters, digits, '-'
    milliseconds: float | None = None
    description: str | None = None

    def __str__(self) -> str:
        text = self.name
        if self.milliseconds is not None:
            text += f";dur={self.milliseconds:.1f}"
        if self.description is not None:
            text += f';desc="{self.description}"'
        return text


def add_timings(request: Request, timings: list[Timing]) -> None:
    request.scope.setdefault("state", {}).setdefault("server_timing", []).extend(timings)


def generation_timings(timings: Timings, *, prompt_tokens: int, completion_tokens: int | None) -> list[Timing]:
    """A generation's queue and compute time, its batch, and its tokens (`completion_tokens` None: a stream,
    whose header leaves with its first token: then the time to that token instead). Prompt tokens the prefix
    cache held show as `cached=`, when there are any."""
    cached = f" cached={timings.cached_tokens}" if timings.cached_tokens else ""
    entries = [Timing("queue", timings.queued_seconds * 1000), Timing("batch", description=f"{timings.batch_size} seq")]
    if completion_tokens is None:
        first = (timings.first_token or timings.submitted) - timings.submitted
        entries.append(Timing("first-token", first * 1000))
        entries.append(Timing("tokens", description=f"prompt={prompt_tokens}{cached}"))
    else:
        entries.append(Timing("generate", timings.generating_seconds * 1000))
        entries.append(Timing("tokens", description=f"prompt={prompt_tokens}{cached} completion={completion_tokens}"))
    return entries


class ServerTiming:
    """Adds `Server-Timing` to every response that recorded metrics, and the cold start to the first response."""

    def __init__(self, app: ASGIApp, *, cold_start_seconds: float | None = None) -> None:
        self.app = app
        self._cold_start = cold_start_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                timings: list[Timing] = list(scope.get("state", {}).get("server_timing", []))
                if self._cold_start is not None:
                    timings.insert(0, Timing("cold-start", self._cold_start * 1000, "loading the model"))
                    self._cold_start = None
                if timings:
                    MutableHeaders(scope=message).append(HEADER, ", ".join(map(str, timings)))
            await send(message)

        await self.app(scope, receive, send_with_timing)
