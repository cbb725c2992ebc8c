"""Request and response models. Limits come from settings so they show in the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from distilgpt2_api.generation import FinishReason
from distilgpt2_api.settings import get_settings

_limits = get_settings()

MAX_SEED = 2**63 - 1
GREEDY_BELOW_TEMPERATURE = 0.01  # OpenAI allows any temperature >= 0; near 0, sampling is greedy anyway
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=_limits.max_prompt_chars)]
MaxNewTokens = Annotated[int, Field(ge=1, le=_limits.max_new_tokens_limit)]
NumReturnSequences = Annotated[int, Field(ge=1, le=_limits.max_return_sequences)]
# Floor values rather than `> 0`: a denormal such as 5e-324 passes `> 0` yet breaks the samplers.
TopP = Annotated[float, Field(ge=0.001, le=1.0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=128)]
StopList = Annotated[list[StopString], Field(max_length=4)]


class _Strict(BaseModel):
    # A misspelt parameter is an error the caller should see, not a silent default.
    model_config = ConfigDict(extra="forbid")


class HealthResponse(BaseModel):
    health: Literal["ok"] = "ok"
    model: str
    version: str


class GeneratedSequences(BaseModel):
    generated_sequences: list[str]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateRequest(_Strict):
    prompt: Prompt
    max_new_tokens: MaxNewTokens = 50
    num_return_sequences: NumReturnSequences = 1
    do_sample: bool = False
    temperature: Annotated[float, Field(ge=0.01, le=100.0)] = 1.0
    top_p: TopP = 1.0
    top_k: Annotated[int, Field(ge=0, le=100_000, description="0 disables top-k filtering.")] = 0
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10.0)] = 1.0
    seed: Seed | None = None
    stop: StopList = Field(default_factory=list, description="Each output is cut before the first stop string.")
    return_full_text: bool = Field(True, description="Prefix each sequence with the prompt.")


class GenerateResponse(BaseModel):
    generated_sequences: list[str]
    model: str
    finish_reasons: list[FinishReason]
    usage: Usage
    seed: int | None = Field(description="The request's seed when sampling with one, else null.")


class CompletionRequest(_Strict):
    """OpenAI `POST /v1/completions`, the subset this service implements."""

    model: str | None = None
    prompt: Prompt
    max_tokens: MaxNewTokens = 16
    n: NumReturnSequences = 1
    temperature: Annotated[
        float, Field(ge=0.0, le=2.0, description=f"Below {GREEDY_BELOW_TEMPERATURE} (0 included): greedy decoding.")
    ] = 1.0
    top_p: TopP = 1.0
    stop: StopString | StopList | None = None
    seed: Seed | None = None
    stream: bool = Field(False, description="Streaming is not supported yet: true is rejected.")
    user: str | None = None


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]
    time_limit_reached: bool = Field(
        False, description="Generation stopped at the request's time budget (finish_reason is then `length`)."
    )


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "distilgpt2-api"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str
    detail: list[dict[str, Any]] | None = Field(None, description="Per-field problems, for validation errors.")
