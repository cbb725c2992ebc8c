"""text-generation-inference's wire format: `{"inputs": ..., "parameters": {...}}` in, `{"generated_text": ...}` out.

What TGI's clients send (huggingface_hub's `InferenceClient`, LangChain's endpoint wrappers, the `text-generation`
client) to `POST /`, `/generate` and `/generate_stream`. `TgiRequest.to_generation_request` is the one translation
point of this API. Every parameter TGI documents is accepted; those this server cannot honour are accepted only
at the value that changes nothing (a 422 otherwise, never a silent ignore).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from distilgpt2_api.core.request import GREEDY, GenerationRequest, SamplingParams
from distilgpt2_api.core.sequence import FinishReason
from distilgpt2_api.core.stream import Completion
from distilgpt2_api.http_api.native.protocol import Details, GrammarParam, grammar_of
from distilgpt2_api.http_api.protocol import GREEDY_BELOW_TEMPERATURE, Bounds, Seed, StopList, StrictModel, TopLogprobs

TGI_DEFAULT_MAX_NEW_TOKENS = 100  # TGI's own default
TgiFinishReason = Literal["length", "eos_token", "stop_sequence", "schema_violation"]
TGI_REASONS: dict[str, TgiFinishReason] = {
    "length": "length",
    "time_limit": "length",  # TGI has no reason for a time budget
    "eos": "eos_token",
    "stop": "stop_sequence",  # a stop string, or a grammar completed
    "schema_violation": "schema_violation",  # a grammar completed, but the answer fails its schema's check
}
UNSUPPORTED = "not supported by this server except at the value that changes nothing"


def tgi_reason(reason: FinishReason) -> TgiFinishReason:
    return TGI_REASONS[reason]


class TgiParameters(StrictModel):
    """TGI's `parameters`. Without `do_sample`, a temperature other than 1, `top_k` or `top_p` below 1 samples,
    as TGI does."""

    max_new_tokens: int = TGI_DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float | None = Field(
        None, gt=0.0, le=100.0, description=f"Below {GREEDY_BELOW_TEMPERATURE}: greedy decoding (what it tends to)."
    )
    top_k: int | None = Field(None, gt=0, le=100_000)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    seed: Seed | None = None
    stop: StopList = Field(default_factory=list, description="Each output is cut before the first stop string.")
    return_full_text: bool = Field(False, description="Prefix the generated text with the inputs.")
    details: bool = Field(False, description="The tokens with their logprobs, and why the sequence ended.")
    top_n_tokens: TopLogprobs | None = Field(None, description="The likeliest alternatives per token.")
    grammar: GrammarParam | None = Field(None, description="A JSON Schema or a regular expression (ENGINE=llamacpp).")
    best_of: int | None = Field(None, ge=1, le=1, description=f"1 only: {UNSUPPORTED}.")
    decoder_input_details: Literal[False] = Field(False, description=f"The prompt's token details: {UNSUPPORTED}.")
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0, description=f"0 only: {UNSUPPORTED}.")
    typical_p: float | None = Field(None, ge=1.0, le=1.0, description=f"1 only: {UNSUPPORTED}.")
    truncate: None = Field(None, description=f"null only: {UNSUPPORTED}; a prompt that does not fit is a 400.")
    watermark: Literal[False] = Field(False, description=f"false only: {UNSUPPORTED}.")
    adapter_id: None = Field(None, description=f"null only: {UNSUPPORTED}.")

    def sampling(self) -> SamplingParams:
        if self.temperature is not None and self.temperature < GREEDY_BELOW_TEMPERATURE:
            return GREEDY
        warpers = self.temperature not in (None, 1.0) or self.top_k is not None or self.top_p not in (None, 1.0)
        return SamplingParams(
            do_sample=self.do_sample or warpers,
            temperature=self.temperature or 1.0,
            top_p=self.top_p or 1.0,
            top_k=self.top_k or 0,
            repetition_penalty=self.repetition_penalty or 1.0,
            seed=self.seed,
        )


class TgiRequest(StrictModel):
    """TGI's body of `/generate` and `/generate_stream`; `tgi_request_models` bounds it from the settings."""

    inputs: str
    parameters: TgiParameters = Field(default_factory=TgiParameters)

    def to_generation_request(self, deadline: float | None, *, logprobs: bool = False) -> GenerationRequest:
        """This API's one translation into the core's request. `logprobs`: every token's, whatever `details` says
        (streamed events always carry them)."""
        parameters = self.parameters
        top = parameters.top_n_tokens or 0
        return GenerationRequest(
            prompt=self.inputs,
            max_new_tokens=parameters.max_new_tokens,
            sampling=parameters.sampling(),
            stop=tuple(parameters.stop),
            deadline=deadline,
            logprobs=top if (parameters.details or logprobs or top) else None,
            grammar=grammar_of(parameters.grammar),
        )

    @property
    def prefix(self) -> str:
        """What the generated text starts with: the inputs with `return_full_text`, else nothing."""
        return self.inputs if self.parameters.return_full_text else ""


class CompatRequest(TgiRequest):
    """TGI's body of `POST /`: `/generate`'s, and `stream` to answer as `/generate_stream` does."""

    stream: bool = False


def tgi_request_models(bounds: Bounds) -> tuple[type[TgiRequest], type[CompatRequest]]:
    """`TgiRequest` and `CompatRequest` with the settings' limits on `inputs` and `max_new_tokens`."""
    default = min(TGI_DEFAULT_MAX_NEW_TOKENS, bounds.max_new_tokens_limit)
    parameters = create_model(
        "TgiParameters",
        __base__=TgiParameters,
        __module__=__name__,
        max_new_tokens=(bounds.max_new_tokens, default),
    )
    fields: dict[str, Any] = {
        "inputs": (bounds.prompt, ...),
        "parameters": (parameters, Field(default_factory=parameters)),
    }
    request = create_model("TgiRequest", __base__=TgiRequest, __module__=__name__, **fields)
    compat = create_model("CompatRequest", __base__=CompatRequest, __module__=__name__, **fields)
    return request, compat


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None


class TgiDetails(Details):
    """TGI's `details` of a generated sequence: this API's, with TGI's finish reasons and an empty `prefill`."""

    finish_reason: TgiFinishReason  # type: ignore[assignment]
    prefill: list[PrefillToken] = Field(default_factory=list, description="Always empty: not served.")
    best_of_sequences: None = None


class TgiResponse(BaseModel):
    """TGI's answer: the generated text (after the inputs with `return_full_text`), and `details` if asked for."""

    generated_text: str
    details: TgiDetails | None = None

    @classmethod
    def of(cls, body: TgiRequest, completion: Completion, seed: int | None) -> TgiResponse:
        parameters = body.parameters
        details = None
        if parameters.details:
            own = dict(Details.of(completion, seed, top=bool(parameters.top_n_tokens)))
            details = TgiDetails(**{**own, "finish_reason": tgi_reason(completion.finish_reason)})
        return cls(generated_text=body.prefix + completion.text, details=details)
