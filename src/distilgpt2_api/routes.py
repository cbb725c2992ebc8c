"""Health, the tutorial-compatible `GET /{prompt}`, and `POST /generate`."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from distilgpt2_api import __version__
from distilgpt2_api.generation import GenerationRequest, GenerationResult, TextGenerator
from distilgpt2_api.observability import GenerationRecord, record_generation
from distilgpt2_api.schemas import (
    ErrorResponse,
    GeneratedSequences,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    MaxNewTokens,
    NumReturnSequences,
    Usage,
    _limits,
)

# Documented so clients (and schema-driven tests) know error bodies too.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The request does not fit the model (context length)."},
    413: {"model": ErrorResponse, "description": "The request body is over the size limit."},
    422: {"model": ErrorResponse, "description": "A parameter is missing, malformed or out of range."},
    500: {"model": ErrorResponse, "description": "Internal error; the body carries the request id."},
    503: {"model": ErrorResponse, "description": "The time budget ran out before generation could start."},
}


def get_generator(request: Request) -> TextGenerator:
    generator: TextGenerator = request.app.state.generator
    return generator


Generator = Annotated[TextGenerator, Depends(get_generator)]
health_router = APIRouter()  # open even when API keys are configured
router = APIRouter()  # runs the model


async def run_generation(request: Request, generator: TextGenerator, job: GenerationRequest) -> GenerationResult:
    """Generate within the request's time budget, and record what happened for logs and metrics."""
    deadline = request.app.state.time_budget.deadline_for(request.scope)
    result = await generator.generate(replace(job, deadline=deadline))
    record_generation(
        request,
        GenerationRecord(
            prompt=job.prompt,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reasons=[c.finish_reason for c in result.completions],
            seconds=result.seconds,
        ),
    )
    return result


def usage_of(result: GenerationResult) -> Usage:
    completion_tokens = result.completion_tokens
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=result.prompt_tokens + completion_tokens,
    )


@health_router.get("/", response_model=HealthResponse, tags=["health"])
async def health(generator: Generator) -> HealthResponse:
    """Liveness, and which model is served. Never touches the model."""
    return HealthResponse(model=generator.model_name, version=__version__)


@router.post("/generate", response_model=GenerateResponse, responses=ERROR_RESPONSES, tags=["generation"])
async def generate(request: Request, body: GenerateRequest, generator: Generator) -> GenerateResponse:
    """Generate continuations of `prompt` (parameter names follow text-generation-inference)."""
    result = await run_generation(
        request,
        generator,
        GenerationRequest(
            prompt=body.prompt,
            max_new_tokens=body.max_new_tokens,
            num_return_sequences=body.num_return_sequences,
            do_sample=body.do_sample,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            repetition_penalty=body.repetition_penalty,
            seed=body.seed,
            stop=tuple(body.stop),
        ),
    )
    prefix = body.prompt if body.return_full_text else ""
    return GenerateResponse(
        generated_sequences=[prefix + c.text for c in result.completions],
        model=generator.model_name,
        finish_reasons=[c.finish_reason for c in result.completions],
        usage=usage_of(result),
        seed=result.seed,
    )


# Registered last: it matches any single path segment.
@router.get("/{prompt}", response_model=GeneratedSequences, responses=ERROR_RESPONSES, tags=["generation"])
async def generate_from_path(
    request: Request,
    prompt: Annotated[str, Path(min_length=1, max_length=_limits.max_prompt_chars)],
    generator: Generator,
    max_new_tokens: Annotated[MaxNewTokens, Query()] = 50,
    num_return_sequences: Annotated[NumReturnSequences, Query()] = 1,
) -> GeneratedSequences:
    """The tutorial's route: sampled continuations (top-k 50, as its pipeline did), prompt included."""
    result = await run_generation(
        request,
        generator,
        GenerationRequest(
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return_sequences,
            do_sample=True,
            top_k=50,
        ),
    )
    return GeneratedSequences(generated_sequences=[prompt + c.text for c in result.completions])
