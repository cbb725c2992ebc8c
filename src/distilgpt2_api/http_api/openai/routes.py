"""OpenAI-compatible `/v1/completions`, `/v1/chat/completions` and `/v1/models`: the official SDK works unchanged.

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, GenerationDep, SchedulerDep, usage_of
from distilgpt2_api.http_api.openai.chat_protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatEvents,
    chat_request_model,
)
from distilgpt2_api.http_api.openai.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionEvents,
    CompletionResponse,
    ModelCard,
    ModelList,
    completion_request_model,
)
from distilgpt2_api.http_api.protocol import Bounds
from distilgpt2_api.http_api.streaming import event_stream, sse_response_doc

_STARTED_AT = int(time.time())
OPENAI_ERRORS = {**ERROR_RESPONSES, 404: ERROR_RESPONSES[422] | {"description": "Unknown model."}}
EVENTS = (CompletionChunk, ChatCompletionChunk)  # what its streams send, for the OpenAPI schema
STREAM_DOC = "The answer; with `stream: true`, Server-Sent Events of chunks like this, then `data: [DONE]`."


def _responses(chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The errors a generating route may answer with, and its answer streamed as events of `chunk`."""
    return {**OPENAI_ERRORS, 200: sse_response_doc(chunk, description=STREAM_DOC, done=True)}


def openai_router(bounds: Bounds) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    Body = completion_request_model(bounds)
    ChatBody = chat_request_model(bounds)

    @router.get("/models", response_model=ModelList)
    async def list_models(scheduler: SchedulerDep) -> ModelList:
        return ModelList(data=[ModelCard.of(scheduler.model_name, _STARTED_AT)])

    @router.post("/completions", response_model=CompletionResponse, responses=_responses(CompletionChunk))
    async def create_completion(body: Body, generation: GenerationDep) -> BaseModel | Response:  # type: ignore[valid-type]
        """With `stream: true`, Server-Sent Events: a chunk per piece of text as it is generated, then `[DONE]`."""
        requests = body.to_generation_requests(generation.deadline, max_choices=bounds.max_sequences)
        model = generation.scheduler.model_name
        if body.stream:
            return await event_stream(generation, requests, CompletionEvents(model, body))
        result = await generation.run(*requests)
        logprobs = body.logprobs is not None
        return CompletionResponse(
            model=model,
            choices=[CompletionChoice.of(c, i, logprobs=logprobs) for i, c in enumerate(result.completions)],
            usage=usage_of(result),
        )

    @router.post("/chat/completions", response_model=ChatCompletionResponse, responses=_responses(ChatCompletionChunk))
    async def create_chat_completion(body: ChatBody, generation: GenerationDep) -> BaseModel | Response:  # type: ignore[valid-type]
        """The conversation rendered with the model's chat template; the answer ends at its end-of-turn token.
        Without max_tokens / max_completion_tokens an answer may take MAX_NEW_TOKENS_LIMIT tokens.
        With `stream: true`, Server-Sent Events: chunks as the answer is generated, then `[DONE]`."""
        request = body.to_generation_request(
            generation.scheduler.chat_template,
            default_max_tokens=bounds.max_new_tokens_limit,
            deadline=generation.deadline,
        )
        model = generation.scheduler.model_name
        if body.stream:
            return await event_stream(generation, [request], ChatEvents(model, body))
        result = await generation.run(request)
        return ChatCompletionResponse(
            model=model,
            choices=[
                ChatChoice.of(c, i, logprobs=body.logprobs, tools=body.offered_tools)
                for i, c in enumerate(result.completions)
            ],
            usage=usage_of(result),
        )

    return router
