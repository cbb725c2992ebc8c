"""OpenAI's completions and models shapes, the subset this service implements.

`CompletionRequest.to_generation_request` is the one translation point of this API.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from distilgpt2_api.core.request import GREEDY, GenerationRequest, SamplingParams
from distilgpt2_api.core.scheduler import Completion
from distilgpt2_api.http_api.protocol import Bounds, Seed, StopList, StopString, StrictModel, TopP, Usage, bounded

GREEDY_BELOW_TEMPERATURE = 0.01  # OpenAI allows any temperature >= 0; near 0, sampling is greedy anyway
OPENAI_DEFAULT_MAX_TOKENS = 16  # OpenAI's own default for /v1/completions


class OpenAIRequest(StrictModel):
    """The fields completions and chat share, and how they choose tokens."""

    model: str | None = None
    n: int = 1
    temperature: float = Field(
        1.0, ge=0.0, le=2.0, description=f"Below {GREEDY_BELOW_TEMPERATURE} (0 included): greedy decoding."
    )
    top_p: TopP = 1.0
    stop: StopString | StopList | None = None
    seed: Seed | None = None
    stream: bool = Field(False, description="Streaming is not supported yet: true is rejected.")
    user: str | None = None

    def sampling(self) -> SamplingParams:
        if self.temperature < GREEDY_BELOW_TEMPERATURE:
            return GREEDY
        return SamplingParams(do_sample=True, temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(OpenAIRequest):
    """OpenAI `POST /v1/completions`; `completion_request_model` bounds prompt and counts from the settings."""

    prompt: str
    max_tokens: int = OPENAI_DEFAULT_MAX_TOKENS

    def to_generation_request(self, deadline: float | None) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt,
            max_new_tokens=self.max_tokens,
            n=self.n,
            sampling=self.sampling(),
            stop=self.stop_strings(),
            deadline=deadline,
        )


def completion_request_model(bounds: Bounds) -> type[CompletionRequest]:
    """`CompletionRequest` with the settings' limits on prompt length, max_tokens and n."""
    return bounded(CompletionRequest, bounds, tokens="max_tokens", sequences="n")


class Choice(BaseModel):
    """What every OpenAI choice carries besides its text."""

    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]
    time_limit_reached: bool = Field(
        False, description="Generation stopped at the request's time budget (finish_reason is then `length`)."
    )

    @staticmethod
    def ending(completion: Completion) -> dict[str, Any]:
        """OpenAI's finish_reason, and the time-limit flag: OpenAI has no reason for a time limit, so such
        a choice reports `length` and is flagged."""
        cut = completion.finish_reason == "time_limit"
        reason = "length" if cut or completion.finish_reason == "length" else "stop"
        return {"finish_reason": reason, "time_limit_reached": cut}


class CompletionChoice(Choice):
    text: str

    @classmethod
    def of(cls, completion: Completion, index: int) -> CompletionChoice:
        return cls(text=completion.text, index=index, **cls.ending(completion))


class Response(BaseModel):
    """What every OpenAI generation response carries besides its id, object and choices."""

    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    usage: Usage


class CompletionResponse(Response):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "distilgpt2-api"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
