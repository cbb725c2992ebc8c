"""Anthropic's `POST /v1/messages` and `POST /v1/messages/count_tokens`: the official SDK works unchanged.

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from distilgpt2_api.http_api.anthropic.protocol import (
    AnthropicErrorResponse,
    MessageEvents,
    MessageResponse,
    MessageStreamEvent,
    TokenCount,
    messages_request_models,
)
from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, GenerationDep, SchedulerDep
from distilgpt2_api.http_api.protocol import Bounds
from distilgpt2_api.http_api.streaming import event_stream, sse_response_doc

EVENTS = (MessageStreamEvent,)  # what its streams send, for the OpenAPI schema
STREAM_DOC = (
    "The message; with `stream: true`, Server-Sent Events named by their `type` (message_start ... message_stop)."
)
# The service's statuses, in Anthropic's error shape; a parameter's problem is a 400 here, as Anthropic's.
ANTHROPIC_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicErrorResponse, "description": doc["description"]}
    for status, doc in ERROR_RESPONSES.items()
    if status != 422
}
ANTHROPIC_ERRORS[400]["description"] = "A parameter is missing, malformed or out of range, or the request does not fit."
ANTHROPIC_ERRORS[404] = {"model": AnthropicErrorResponse, "description": "Unknown model."}
# Any other client error (a 405, say) has the same shape; documented so, FastAPI adds no 422 it never sends.
ANTHROPIC_ERRORS["4XX"] = {"model": AnthropicErrorResponse, "description": "Another client error."}


def anthropic_router(bounds: Bounds) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["anthropic"])
    Body, CountBody = messages_request_models(bounds)

    @router.post(
        "/messages",
        response_model=MessageResponse,
        responses={**ANTHROPIC_ERRORS, 200: sse_response_doc(MessageStreamEvent, description=STREAM_DOC)},
    )
    async def create_message(body: Body, generation: GenerationDep) -> BaseModel | Response:  # type: ignore[valid-type]
        """The conversation rendered with the model's chat template; the answer's text and tool_use blocks.
        With `stream: true`, Anthropic's Server-Sent Events."""
        request = body.to_generation_request(generation.scheduler.chat_template, deadline=generation.deadline)
        model = generation.scheduler.model_name
        if body.stream:
            return await event_stream(generation, [request], MessageEvents(model, body))
        result = await generation.run(request)
        return MessageResponse.of(model, result, body.offered_tools)

    @router.post("/messages/count_tokens", response_model=TokenCount, responses=ANTHROPIC_ERRORS)
    async def count_tokens(body: CountBody, scheduler: SchedulerDep) -> TokenCount:  # type: ignore[valid-type]
        """The prompt's tokens: the conversation (and tools) as `/v1/messages` would send them to the model."""
        body.check_model(scheduler.model_name, any_name=scheduler.validator.limits.any_model_name)
        ids = scheduler.tokenizer.encode(body.prompt(scheduler.chat_template), add_special_tokens=False)
        return TokenCount(input_tokens=len(ids))

    return router
