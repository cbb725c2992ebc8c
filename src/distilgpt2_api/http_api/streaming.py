"""Server-Sent Events, the same way for every API that streams; sse-starlette frames them.

The first delta is awaited before the response begins, so an error before the first token keeps its
status and JSON body. After it, an error ends the stream with an error event. A client that leaves
cancels its generation: sse-starlette cancels the body on disconnect, and closing the stream frees
the model within a token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sse_starlette import EventSourceResponse, ServerSentEvent

from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.sequence import Delta
from distilgpt2_api.core.stream import RequestStream
from distilgpt2_api.http_api.dependencies import Generation
from distilgpt2_api.http_api.errors import stream_error
from distilgpt2_api.http_api.metrics import failure_record, observe_request
from distilgpt2_api.http_api.protocol import DONE, ErrorResponse, Usage
from distilgpt2_api.http_api.server_timing import add_timings, generation_timings
from distilgpt2_api.observability import GenerationRecord

REF_PREFIX = "#/components/schemas/"
PING_SECONDS = 15  # a comment line when nothing else was sent for this long, so proxies keep a quiet stream open


@dataclass
class StreamTally:
    """What a stream has produced so far: for the final usage, and the request's log line."""

    prompt_tokens: int
    cached_tokens: int = 0  # of the prompt tokens, those the prefix cache held (known once generation began)
    completion_tokens: dict[int, int] = field(default_factory=dict)
    finish_reasons: dict[int, str] = field(default_factory=dict)

    def add(self, delta: Delta) -> None:
        self.completion_tokens[delta.index] = delta.completion_tokens
        if delta.finish_reason is not None:
            self.finish_reasons[delta.index] = delta.finish_reason

    @property
    def usage(self) -> Usage:
        return Usage.of(self.prompt_tokens, sum(self.completion_tokens.values()), self.cached_tokens)


Event = BaseModel | str | ServerSentEvent  # JSON data, a text (`[DONE]`), or a whole event (with its `event:` name)


class NamedEvent(BaseModel):
    """An event whose SSE `event:` field is its `type` (OpenAI's Responses stream names every event so)."""

    type: str


class EventFormat(Protocol):
    """How one API shows a stream: events for each delta, events after the last one, the error event."""

    def delta(self, delta: Delta, tally: StreamTally) -> Iterable[Event]: ...

    def end(self, tally: StreamTally) -> Iterable[Event]: ...

    def error(self, error: ErrorResponse) -> Iterable[Event]: ...


async def event_stream(
    generation: Generation, requests: Sequence[GenerationRequest], events: EventFormat
) -> EventSourceResponse:
    """Start `requests` and answer with their events; raises (for a normal error response) until the first delta."""
    stream = await generation.start(requests)
    try:
        first = await anext(stream)
    except BaseException as error:
        observe_request(generation.request, failure_record(stream, error))
        await stream.aclose()
        raise
    timings = generation_timings(stream.timings, prompt_tokens=stream.request.prompt_tokens, completion_tokens=None)
    add_timings(generation.request, timings)
    return EventSourceResponse(_body(generation, stream, first, events), ping=PING_SECONDS)


async def _body(
    generation: Generation, stream: RequestStream, first: Delta, events: EventFormat
) -> AsyncIterator[ServerSentEvent]:
    tally = StreamTally(stream.request.prompt_tokens, stream.timings.cached_tokens)
    unfinished = "cancelled"  # what a choice without a finish reason became: its client left, or an error
    try:
        tally.add(first)
        for event in events.delta(first, tally):
            yield _sse(event)
        async for delta in stream:
            tally.add(delta)
            for event in events.delta(delta, tally):
                yield _sse(event)
        for event in events.end(tally):
            yield _sse(event)
    except Exception as error:  # noqa: BLE001 - the status is sent: the stream ends with an error event
        unfinished = "error"
        for event in events.error(stream_error(generation.request, error)):
            yield _sse(event)
    finally:
        await stream.aclose()  # a client that left, or an error: stop generating
        choices = range(stream.request.choices)
        generation.record(
            GenerationRecord(
                stream.request.prompt,
                stream.timings,
                tally.prompt_tokens,
                tuple(tally.completion_tokens.get(i, 0) for i in choices),
                tuple(tally.finish_reasons.get(i, unfinished) for i in choices),
            )
        )


def _sse(event: Event) -> ServerSentEvent:
    if isinstance(event, ServerSentEvent):
        return event
    if isinstance(event, str):
        return ServerSentEvent(data=event)
    return ServerSentEvent(data=event.model_dump_json(), event=event.type if isinstance(event, NamedEvent) else None)


def sse_response_doc(event: type[BaseModel], *, description: str, done: bool = False) -> dict[str, Any]:
    """OpenAPI for a response of Server-Sent Events whose `data` are JSON objects of `event`'s shape, or the
    error that ends a stream which failed after it began; `done`: the stream ends with `data: [DONE]`.

    FastAPI lists only the models routes return: `document_events` adds `event` to the schema's components.
    """
    shapes = [{"$ref": f"{REF_PREFIX}{event.__name__}"}, {"$ref": f"{REF_PREFIX}{ErrorResponse.__name__}"}]
    json_data = {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": shapes}}
    data = {"anyOf": [json_data, {"const": DONE}]} if done else json_data
    # OpenAPI 3.2's form for event streams (FastAPI's own, for its SSE routes): the schema of each event.
    item = {"type": "object", "required": ["data"], "properties": {"data": data, "event": {"type": "string"}}}
    return {"description": description, "content": {"text/event-stream": {"itemSchema": item}}}


def document_events(app: FastAPI, events: Iterable[type[BaseModel]]) -> None:
    """Add the stream event models to `app`'s OpenAPI components, next to the models FastAPI found itself."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _, definitions = models_json_schema(
                [(event, "serialization") for event in events], ref_template=REF_PREFIX + "{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in definitions.get("$defs", {}).items():
                components.setdefault(name, definition)
        return app.openapi_schema or schema

    app.openapi = openapi  # type: ignore[method-assign]
