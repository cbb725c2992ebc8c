"""OpenAI-compatible `/v1/completions` and `/v1/models`, so the official SDK works unchanged."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request

from distilgpt2_api.errors import ApiError
from distilgpt2_api.generation import GenerationRequest
from distilgpt2_api.routes import ERROR_RESPONSES, Generator, run_generation, usage_of
from distilgpt2_api.schemas import (
    GREEDY_BELOW_TEMPERATURE,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)

router = APIRouter(prefix="/v1", tags=["openai"])
_STARTED_AT = int(time.time())


@router.get("/models", response_model=ModelList)
async def list_models(generator: Generator) -> ModelList:
    return ModelList(data=[ModelCard(id=generator.model_name, created=_STARTED_AT)])


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, 404: ERROR_RESPONSES[422] | {"description": "Unknown model."}},
)
async def create_completion(request: Request, body: CompletionRequest, generator: Generator) -> CompletionResponse:
    if body.stream:
        raise ApiError(400, "stream_unsupported", "streaming is not supported yet: send stream=false", "stream")
    # Requests never choose what is loaded: a name other than the served one is an error.
    if body.model is not None and body.model != generator.model_name:
        raise ApiError(
            404, "model_not_found", f"model {body.model!r} is not served here; use {generator.model_name!r}", "model"
        )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    sampling = body.temperature >= GREEDY_BELOW_TEMPERATURE
    result = await run_generation(
        request,
        generator,
        GenerationRequest(
            prompt=body.prompt,
            max_new_tokens=body.max_tokens,
            num_return_sequences=body.n,
            do_sample=sampling,
            temperature=body.temperature if sampling else 1.0,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop,
        ),
    )
    choices = [
        CompletionChoice(
            text=c.text,
            index=i,
            # OpenAI has no reason for a time limit: report `length` and flag it.
            finish_reason="length" if c.finish_reason in ("length", "time_limit") else "stop",
            time_limit_reached=c.finish_reason == "time_limit",
        )
        for i, c in enumerate(result.completions)
    ]
    return CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=generator.model_name,
        choices=choices,
        usage=usage_of(result),
    )
