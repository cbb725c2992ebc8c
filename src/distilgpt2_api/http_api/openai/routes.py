"""OpenAI-compatible `/v1/completions`, `/v1/chat/completions` and `/v1/models`: the official SDK works unchanged.

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

import time

from fastapi import APIRouter

from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, GenerationDep, SchedulerDep, usage_of
from distilgpt2_api.http_api.errors import ApiError
from distilgpt2_api.http_api.openai.chat_protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    chat_request_model,
)
from distilgpt2_api.http_api.openai.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    completion_request_model,
)
from distilgpt2_api.http_api.protocol import Bounds

_STARTED_AT = int(time.time())
OPENAI_ERRORS = {**ERROR_RESPONSES, 404: ERROR_RESPONSES[422] | {"description": "Unknown model."}}


def openai_router(bounds: Bounds) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    Body = completion_request_model(bounds)
    ChatBody = chat_request_model(bounds)

    @router.get("/models", response_model=ModelList)
    async def list_models(scheduler: SchedulerDep) -> ModelList:
        return ModelList(data=[ModelCard(id=scheduler.model_name, created=_STARTED_AT)])

    @router.post("/completions", response_model=CompletionResponse, responses=OPENAI_ERRORS)
    async def create_completion(
        body: Body,  # type: ignore[valid-type]
        generation: GenerationDep,
    ) -> CompletionResponse:
        _check(body, generation.scheduler.model_name)
        result = await generation.run(body.to_generation_request(generation.deadline))
        return CompletionResponse(
            model=generation.scheduler.model_name,
            choices=[CompletionChoice.of(c, i) for i, c in enumerate(result.completions)],
            usage=usage_of(result),
        )

    @router.post("/chat/completions", response_model=ChatCompletionResponse, responses=OPENAI_ERRORS)
    async def create_chat_completion(
        body: ChatBody,  # type: ignore[valid-type]
        generation: GenerationDep,
    ) -> ChatCompletionResponse:
        """The conversation rendered with the model's chat template; the answer ends at its end-of-turn token.
        Without max_tokens / max_completion_tokens an answer may take MAX_NEW_TOKENS_LIMIT tokens."""
        _check(body, generation.scheduler.model_name)
        job = body.to_generation_request(
            generation.scheduler.chat_template,
            default_max_tokens=bounds.max_new_tokens_limit,
            deadline=generation.deadline,
        )
        result = await generation.run(job)
        return ChatCompletionResponse(
            model=generation.scheduler.model_name,
            choices=[ChatChoice.of(c, i) for i, c in enumerate(result.completions)],
            usage=usage_of(result),
        )

    return router


def _check(body: CompletionRequest | ChatCompletionRequest, served: str) -> None:
    """What the schema cannot say: no streaming or logprobs yet, and only the served model."""
    if body.stream:
        raise ApiError(400, "stream_unsupported", "streaming is not supported yet: send stream=false", "stream")
    if getattr(body, "logprobs", False):
        raise ApiError(400, "logprobs_unsupported", "logprobs are not supported yet: send logprobs=false", "logprobs")
    # Requests never choose what is loaded: a name other than the served one is an error.
    if body.model is not None and body.model != served:
        raise ApiError(404, "model_not_found", f"model {body.model!r} is not served here; use {served!r}", "model")
