"""What every route that generates shares: the scheduler, the request's deadline, logging, usage, error docs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.core.stream import GenerationResult, MergedStream, RequestStream
from distilgpt2_api.http_api.metrics import failure_record, observe_request
from distilgpt2_api.http_api.protocol import ErrorResponse, Usage
from distilgpt2_api.http_api.server_timing import add_timings, generation_timings
from distilgpt2_api.observability import GenerationRecord, record_generation

# Documented so clients (and schema-driven tests) know error bodies too.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The request does not fit the model (context length, token budget)."},
    401: {"model": ErrorResponse, "description": "An API key is configured and the request lacks a valid one."},
    413: {"model": ErrorResponse, "description": "The request body is over the size limit."},
    415: {"model": ErrorResponse, "description": "The body was not sent as JSON (`Content-Type: application/json`)."},
    422: {"model": ErrorResponse, "description": "A parameter is missing, malformed or out of range."},
    500: {"model": ErrorResponse, "description": "Internal error; the body carries the request id."},
    503: {"model": ErrorResponse, "description": "The time budget ran out before generation could start."},
}


def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]


@dataclass(frozen=True)
class Generation:
    """What a generating route needs: the model's scheduler, the request's deadline, and a way to run requests."""

    request: Request
    scheduler: Scheduler
    deadline: float  # time.monotonic(): the one form the time budget takes, end to end

    async def start(self, requests: Sequence[GenerationRequest]) -> RequestStream:
        """Validate every request (InvalidRequest before any of them queues or anything is sent), then queue them
        as one stream of deltas. The caller must read it to the end or `aclose` it."""
        valid = [self.scheduler.validate(request) for request in requests]
        streams = [self.scheduler.schedule(request) for request in valid]
        return streams[0] if len(streams) == 1 else MergedStream(streams)

    async def run(self, *requests: GenerationRequest) -> GenerationResult:
        """Generate `requests` (several: their choices in order, as one result), and record what happened for the
        request's log line, metrics and Server-Timing header."""
        stream = await self.start(requests)
        try:
            result = await stream.collect()
        except BaseException as error:
            observe_request(self.request, failure_record(stream, error))
            raise
        finally:
            await stream.aclose()
        completions = result.completions
        add_timings(
            self.request,
            generation_timings(
                result.timings, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
            ),
        )
        self.record(
            GenerationRecord(
                stream.request.prompt,
                result.timings,
                result.prompt_tokens,
                tuple(c.completion_tokens for c in completions),
                tuple(c.finish_reason for c in completions),
            )
        )
        return result

    def record(self, record: GenerationRecord) -> None:
        """What a generation did, per choice, for the request's log line, EMF and Prometheus metrics."""
        record_generation(self.request, record)
        observe_request(self.request, record)


def get_generation(request: Request, scheduler: SchedulerDep) -> Generation:
    return Generation(request, scheduler, request.app.state.time_budget.deadline_for(request.scope))


GenerationDep = Annotated[Generation, Depends(get_generation)]


def usage_of(result: GenerationResult) -> Usage:
    return Usage.of(result.prompt_tokens, result.completion_tokens, result.timings.cached_tokens)
