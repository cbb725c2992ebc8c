"""OpenAI-compatible `/v1/completions`, `/v1/chat/completions` and `/v1/models`: the official SDK works unchanged.

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

import time

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from distilgpt2_api.core.admission import SchedulerBase
from distilgpt2_api.core.errors import GrammarUnsupported
from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, GenerationDep, SchedulerDep, usage_of
from distilgpt2_api.http_api.errors import ApiError
from distilgpt2_api.http_api.openai.chat_protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatEvents,
    chat_request_model,
)
from distilgpt2_api.http_api.openai.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionEvents,
    CompletionRequest,
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


def openai_router(bounds: Bounds) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    Body = completion_request_model(bounds)
    ChatBody = chat_request_model(bounds)

    @router.get("/models", response_model=ModelList)
    async def list_models(scheduler: SchedulerDep) -> ModelList:
        return ModelList(data=[ModelCard(id=scheduler.model_name, created=_STARTED_AT)])

    @router.post(
        "/completions",
        response_model=CompletionResponse,
        responses={**OPENAI_ERRORS, 200: sse_response_doc(CompletionChunk, description=STREAM_DOC, done=True)},
    )
    async def create_completion(
        body: Body,  # type: ignore[valid-type]
        generation: GenerationDep,
    ) -> BaseModel | Response:
        """With `stream: true`, Server-Sent Events: a chunk per piece of text as it is generated, then `[DONE]`."""
        _check(body, generation.scheduler)
        jobs = body.to_generation_requests(generation.deadline)
        if len(jobs) * body.n > bounds.max_sequences:
            message = f"{len(jobs)} prompts x n={body.n}: more than this server's {bounds.max_sequences} choices"
            raise ApiError(400, "too_many_choices", message, "n")
        model = generation.scheduler.model_name
        if body.stream:
            return await event_stream(generation, jobs, CompletionEvents(model, body))
        result = await generation.run(*jobs)
        logprobs = body.logprobs is not None
        return CompletionResponse(
            model=model,
            choices=[CompletionChoice.of(c, i, logprobs=logprobs) for i, c in enumerate(result.completions)],
            usage=usage_of(result),
        )

    @router.post(
        "/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**OPENAI_ERRORS, 200: sse_response_doc(ChatCompletionChunk, description=STREAM_DOC, done=True)},
    )
    async def create_chat_completion(
        body: ChatBody,  # type: ignore[valid-type]
        generation: GenerationDep,
    ) -> BaseModel | Response:
        """The conversation rendered with the model's chat template; the answer ends at its end-of-turn token.
        Without max_tokens / max_completion_tokens an answer may take MAX_NEW_TOKENS_LIMIT tokens.
        With `stream: true`, Server-Sent Events: chunks as the answer is generated, then `[DONE]`."""
        _check(body, generation.scheduler)
        job = body.to_generation_request(
            generation.scheduler.chat_template,
            default_max_tokens=bounds.max_new_tokens_limit,
            deadline=generation.deadline,
        )
        model = generation.scheduler.model_name
        if body.stream:
            return await event_stream(generation, [job], ChatEvents(model, body))
        result = await generation.run(job)
        return ChatCompletionResponse(
            model=model,
            choices=[
                ChatChoice.of(c, i, logprobs=body.logprobs, tools=body.offered_tools())
                for i, c in enumerate(result.completions)
            ],
            usage=usage_of(result),
        )

    return router


def _check(body: CompletionRequest | ChatCompletionRequest, scheduler: SchedulerBase) -> None:
    """What the schema cannot say: only the served model, and structured output only where the engine can."""
    served = scheduler.model_name
    # Requests never choose what is loaded: a name other than the served one is an error.
    if body.model is not None and body.model != served:
        raise ApiError(404, "model_not_found", f"model {body.model!r} is not served here; use {served!r}", "model")
    constrained = body.constrained if isinstance(body, ChatCompletionRequest) else body.grammar() is not None
    if constrained and not scheduler.can_constrain:
        tools = isinstance(body, ChatCompletionRequest) and body.offered_tools()
        raise GrammarUnsupported("tools" if tools else "response_format")
