"""OpenAI-compatible `/v1/completions` and `/v1/models`, so the official SDK works unchanged.

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

import time
import uuid

from fastapi import APIRouter, Request

from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, Deadline, SchedulerDep, run_generation, usage_of
from distilgpt2_api.http_api.errors import ApiError
from distilgpt2_api.http_api.openai.protocol import (
    CompletionChoice,
    CompletionResponse,
    ModelCard,
    ModelList,
    completion_request_model,
)
from distilgpt2_api.http_api.protocol import Bounds

_STARTED_AT = int(time.time())


def openai_router(bounds: Bounds) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    Body = completion_request_model(bounds)

    @router.get("/models", response_model=ModelList)
    async def list_models(scheduler: SchedulerDep) -> ModelList:
        return ModelList(data=[ModelCard(id=scheduler.model_name, created=_STARTED_AT)])

    @router.post(
        "/completions",
        response_model=CompletionResponse,
        responses={**ERROR_RESPONSES, 404: ERROR_RESPONSES[422] | {"description": "Unknown model."}},
    )
    async def create_completion(
        request: Request,
        body: Body,  # type: ignore[valid-type]
        scheduler: SchedulerDep,
        deadline: Deadline,
    ) -> CompletionResponse:
        if body.stream:
            raise ApiError(400, "stream_unsupported", "streaming is not supported yet: send stream=false", "stream")
        # Requests never choose what is loaded: a name other than the served one is an error.
        if body.model is not None and body.model != scheduler.model_name:
            message = f"model {body.model!r} is not served here; use {scheduler.model_name!r}"
            raise ApiError(404, "model_not_found", message, "model")
        result = await run_generation(request, scheduler, body.to_generation_request(deadline))
        return CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=scheduler.model_name,
            choices=[CompletionChoice.of(c, i) for i, c in enumerate(result.completions)],
            usage=usage_of(result),
        )

    return router
