"""The service's own API (text-generation-inference parameter names): `POST /generate` and the tutorial's route.

Each request model turns itself into the core's GenerationRequest: the one translation point of this API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

from distilgpt2_api.core.grammar import Grammar
from distilgpt2_api.core.request import DEFAULT_MAX_NEW_TOKENS, GenerationRequest, SamplingParams
from distilgpt2_api.core.sequence import Delta, FinishReason, GeneratedToken
from distilgpt2_api.core.stream import Completion
from distilgpt2_api.http_api.protocol import (
    Bounds,
    ErrorResponse,
    Seed,
    StopList,
    StrictModel,
    TopLogprobs,
    TopP,
    Usage,
    bounded,
)

if TYPE_CHECKING:
    from distilgpt2_api.http_api.streaming import StreamTally

__all__ = [
    "GenerateRequest",
    "GenerateResponse",
    "GeneratedSequences",
    "StreamEvents",
    "StreamResponse",
    "generate_request_model",
    "with_prompt",
]


class GeneratedSequences(BaseModel):
    generated_sequences: list[str]


class JsonGrammar(StrictModel):
    """text-generation-inference's JSON grammar: the answer is JSON valid against `value`, a JSON Schema."""

    type: Literal["json"]
    value: dict[str, Any] = Field(description="A JSON Schema (see the API docs for the keywords supported).")


class RegexGrammar(StrictModel):
    """text-generation-inference's regex grammar: the whole answer matches `value`."""

    type: Literal["regex"]
    value: str = Field(min_length=1, max_length=4096)


GrammarParam = Annotated[JsonGrammar | RegexGrammar, Field(discriminator="type")]


def grammar_of(param: JsonGrammar | RegexGrammar | None) -> Grammar | None:
    """text-generation-inference's `grammar` parameter as the core's Grammar."""
    if param is None:
        return None
    if isinstance(param, JsonGrammar):
        return Grammar.json_schema(param.value, param="grammar")
    return Grammar("regex", param.value, param="grammar")


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
    details: bool = Field(False, description="Per sequence: its tokens with their logprobs, and why it ended.")
    top_n_tokens: TopLogprobs = Field(0, description="With details, or streamed: the likeliest alternatives per token.")
    grammar: GrammarParam | None = Field(
        None,
        description="Constrain each generated sequence to a JSON Schema or a regular expression (ENGINE=llamacpp). "
        "A sequence that ends with `stop_sequence`/`eos_token` matches it; `stop` does not apply.",
    )

    def to_generation_request(self, deadline: float | None, *, logprobs: bool = False) -> GenerationRequest:
        """`logprobs`: every token's logprob whatever `details` says (streamed events always carry them)."""
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
            logprobs=self.top_n_tokens if (self.details or logprobs or self.top_n_tokens) else None,
            grammar=grammar_of(self.grammar),
        )


def generate_request_model(bounds: Bounds) -> type[GenerateRequest]:
    """`GenerateRequest` with the settings' limits on prompt length, max_new_tokens and sequences."""
    return bounded(GenerateRequest, bounds, tokens="max_new_tokens", sequences="num_return_sequences")


class Token(BaseModel):
    """A generated token, as text-generation-inference shows one."""

    id: int
    text: str
    logprob: float | None
    special: bool

    @classmethod
    def of(cls, token: GeneratedToken, *, text: str | None = None) -> Token:
        shown = token.token if text is None else text
        return cls(id=token.id, text=shown, logprob=token.logprob, special=token.special)


def top_tokens(token: GeneratedToken) -> list[Token]:
    return [Token(id=alt.id, text=alt.token, logprob=alt.logprob, special=False) for alt in token.top_logprobs]


class Details(BaseModel):
    """One sequence's tokens (text-generation-inference's `details`)."""

    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None

    @classmethod
    def of(cls, completion: Completion, seed: int | None, *, top: bool) -> Details:
        return cls(
            finish_reason=completion.finish_reason,
            generated_tokens=completion.completion_tokens,
            seed=seed,
            tokens=[Token.of(token) for token in completion.tokens],
            top_tokens=[top_tokens(token) for token in completion.tokens] if top else None,
        )


class GenerateResponse(BaseModel):
    generated_sequences: list[str]
    model: str
    finish_reasons: list[FinishReason]
    usage: Usage
    seed: int | None = Field(description="The request's seed when sampling with one, else null.")
    details: list[Details] | None = Field(None, description="With `details: true`: per sequence, its tokens.")


class StreamDetails(BaseModel):
    finish_reason: str = Field(description="This API's reason (text-generation-inference's on its wire format).")
    generated_tokens: int
    input_length: int = Field(description="The prompt's tokens.")
    seed: int | None


class StreamResponse(BaseModel):
    """One event of `/generate_stream` (text-generation-inference's shape): a token as it is generated.

    `token.text` is what the token added to the text (empty while a character is unfinished or a stop string
    may be starting; the text follows in a later event). A sequence's last event has `generated_text` and
    `details`."""

    index: int
    token: Token
    top_tokens: list[Token]
    generated_text: str | None = None
    details: StreamDetails | None = None


class StreamEvents:
    """`/generate_stream`'s events: one per token, the last of each sequence with its whole text and details."""

    def __init__(
        self, prefix: str, seed: int | None, reason: Callable[[FinishReason], str] = lambda reason: reason
    ) -> None:
        self._prefix = prefix  # what each sequence's generated_text starts with (the prompt, or nothing)
        self._seed = seed
        self._reason = reason  # a finish reason as this API names it
        self._texts: dict[int, list[str]] = {}

    def delta(self, delta: Delta, tally: StreamTally) -> list[BaseModel]:
        texts = self._texts.setdefault(delta.index, [])
        texts.append(delta.text)
        tokens = [(token, token.text) for token in delta.tokens]
        end = delta.end_token
        if end is not None and (not tokens or tokens[-1][0].id != end.id):
            tokens.append((end, ""))  # the EOS token, or the one that completed a stop string: no text
        events = [
            StreamResponse(index=delta.index, token=Token.of(token, text=text), top_tokens=top_tokens(token))
            for token, text in tokens
        ]
        if delta.finish_reason is not None and events:
            events[-1].generated_text = self._prefix + "".join(texts)
            events[-1].details = StreamDetails(
                finish_reason=self._reason(delta.finish_reason),
                generated_tokens=delta.completion_tokens,
                input_length=tally.prompt_tokens,
                seed=self._seed,
            )
        return events

    def end(self, tally: StreamTally) -> list[BaseModel | str]:
        return []

    def error(self, error: ErrorResponse) -> list[BaseModel | str]:
        return [error]


def with_prompt(prompt: str, completions: list[Completion]) -> list[str]:
    """Each continuation prefixed with its prompt, as the tutorial's pipeline returned them."""
    return [prompt + completion.text for completion in completions]
