"""What every API shares: bounded request fields built from the settings, usage, errors, health.

Request models are built (`pydantic.create_model`) from the settings given to `create_app`, so the
limits in the OpenAPI schema are the ones enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from distilgpt2_api.settings import Settings

MAX_SEED = 2**63 - 1
# Floor values rather than `> 0`: a denormal such as 5e-324 passes `> 0` yet breaks the samplers.
TopP = Annotated[float, Field(ge=0.001, le=1.0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=128)]
StopList = Annotated[list[StopString], Field(max_length=4)]
DONE = "[DONE]"  # the last event of an OpenAI stream
MAX_TOP_LOGPROBS = 5
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]
TokenId = Annotated[int, Field(ge=0)]


GREEDY_BELOW_TEMPERATURE = 0.01  # APIs allow any temperature above 0 (OpenAI: >= 0); near 0, sampling is greedy anyway

# Tags of the body shapes one route may take (`POST /generate`: this API's and text-generation-inference's): Pydantic
# puts the tag in an error's location, after "body"; error messages leave it out.
BODY_SHAPES = ("flat", "tgi")


@dataclass(frozen=True)
class Bounds:
    """The request fields whose limits come from the settings, as annotated types for request models."""

    prompt: Any
    token_ids: Any  # a prompt given as token ids: no more ids than a text prompt may have characters
    max_new_tokens: Any
    sequences: Any
    max_new_tokens_limit: int  # what a chat answer may take when the request names no limit
    max_sequences: int  # choices in one request, every prompt's together

    @classmethod
    def from_settings(cls, settings: Settings) -> Bounds:
        return cls(
            prompt=Annotated[str, StringConstraints(min_length=1, max_length=settings.max_prompt_chars)],
            token_ids=Annotated[list[TokenId], Field(min_length=1, max_length=settings.max_prompt_chars)],
            max_new_tokens=Annotated[int, Field(ge=1, le=settings.max_new_tokens_limit)],
            sequences=Annotated[int, Field(ge=1, le=settings.max_return_sequences)],
            max_new_tokens_limit=settings.max_new_tokens_limit,
            max_sequences=settings.max_return_sequences,
        )


class StrictModel(BaseModel):
    # A misspelt parameter is an error the caller should see, not a silent default.
    model_config = ConfigDict(extra="forbid")


Request = TypeVar("Request", bound=StrictModel)


def bounded(
    request: type[Request], bounds: Bounds, *, tokens: str, sequences: str, prompt: Any = None
) -> type[Request]:
    """`request` (same name, same defaults) with the settings' limits on `prompt` (a text, unless `prompt` gives
    another bounded type) and the two named fields."""
    fields = request.model_fields
    return create_model(
        request.__name__,
        __base__=request,
        __module__=request.__module__,
        prompt=(prompt or bounds.prompt, ...),
        **{
            tokens: (bounds.max_new_tokens, fields[tokens].default),
            sequences: (bounds.sequences, fields[sequences].default),
        },
    )


class KernelsInfo(BaseModel):
    """What the engine computes with on this CPU, and why (docs/DEPLOY.md: CPUs)."""

    engine: str = Field(description="llamacpp, ctranslate2 or transformers.")
    cpu: str = Field(description="The CPU's model name.")
    variant: str = Field(description="llama.cpp's CPU backend (zen4, icelake...), or the arithmetic and ISA.")
    reason: str = Field(description="How it was chosen: each variant probed before it and what happened to it.")
    threads: int = Field(description="Threads one generation computes on: THREADS, else the CPUs the process may use.")


class HealthResponse(BaseModel):
    health: Literal["ok"] = "ok"
    model: str
    version: str
    kernels: KernelsInfo


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Prompt tokens read from the prefix cache rather than computed.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str
    detail: list[dict[str, Any]] | None = Field(None, description="Per-field problems, for validation errors.")
