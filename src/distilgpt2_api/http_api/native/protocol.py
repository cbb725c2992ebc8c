"""The service's own API (text-generation-inference parameter names): `POST /generate` and the tutorial's route.

Each request model turns itself into the core's GenerationRequest: the one translation point of this API.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from distilgpt2_api.core.request import DEFAULT_MAX_NEW_TOKENS, GenerationRequest, SamplingParams
from distilgpt2_api.core.scheduler import Completion, FinishReason
from distilgpt2_api.http_api.protocol import Bounds, Seed, StopList, StrictModel, TopP, Usage, bounded

__all__ = ["GenerateRequest", "GenerateResponse", "GeneratedSequences", "generate_request_model", "with_prompt"]


class GeneratedSequences(BaseModel):
    generated_sequences: list[str]


class GenerateRequest(StrictModel):
    """The fields of `POST /generate`; `generate_request_model` bounds prompt and counts from the settings."""

    prompt: str
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0.01, le=100.0)
    top_p: TopP = 1.0
    top_k: int = Field(0, ge=0, le=100_000, description="0 disables top-k filtering.")
    repetition_penalty: float = Field(1.0, ge=0.01, le=10.0)
    seed: Seed | None = None
    stop: StopList = Field(default_factory=list, description="Each output is cut before the first stop string.")
    return_full_text: bool = Field(True, description="Prefix each sequence with the prompt.")

    def to_generation_request(self, deadline: float | None) -> GenerationRequest:
        sampling = SamplingParams(
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )
        return GenerationRequest(
            prompt=self.prompt,
            max_new_tokens=self.max_new_tokens,
            n=self.num_return_sequences,
            sampling=sampling,
            stop=tuple(self.stop),
            deadline=deadline,
        )


def generate_request_model(bounds: Bounds) -> type[GenerateRequest]:
    """`GenerateRequest` with the settings' limits on prompt length, max_new_tokens and sequences."""
    return bounded(GenerateRequest, bounds, tokens="max_new_tokens", sequences="num_return_sequences")


class GenerateResponse(BaseModel):
    generated_sequences: list[str]
    model: str
    finish_reasons: list[FinishReason]
    usage: Usage
    seed: int | None = Field(description="The request's seed when sampling with one, else null.")


def with_prompt(prompt: str, completions: list[Completion]) -> list[str]:
    """Each continuation prefixed with its prompt, as the tutorial's pipeline returned them."""
    return [prompt + completion.text for completion in completions]
