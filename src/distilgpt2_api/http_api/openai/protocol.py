"""OpenAI's completions and models shapes, the subset this service implements.

`CompletionRequest.to_generation_request` is the one translation point of this API.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from distilgpt2_api.core.errors import TooManyChoices
from distilgpt2_api.core.grammar import Grammar
from distilgpt2_api.core.request import BAN, GREEDY, GenerationRequest, Prompt, SamplingParams, TokenRules
from distilgpt2_api.core.schema import strict_problem
from distilgpt2_api.core.sequence import Delta, GeneratedToken
from distilgpt2_api.core.stream import Completion
from distilgpt2_api.http_api.protocol import (
    DONE,
    GREEDY_BELOW_TEMPERATURE,
    Bounds,
    ErrorResponse,
    Seed,
    StopList,
    StopString,
    StrictModel,
    TokenId,
    TopLogprobs,
    TopP,
    Usage,
    bounded,
)

if TYPE_CHECKING:
    from distilgpt2_api.http_api.streaming import StreamTally

OPENAI_DEFAULT_MAX_TOKENS = 16  # OpenAI's own default for /v1/completions


class StreamOptions(StrictModel):
    include_usage: bool = Field(False, description="Send a last chunk with the usage (and no choices).")


class TextFormat(StrictModel):
    """Free text (the default)."""

    type: Literal["text"]


class JsonObjectFormat(StrictModel):
    """Any JSON object."""

    type: Literal["json_object"]


class JsonSchemaSpec(StrictModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        alias="schema",
        description="A JSON Schema; the keywords supported are listed in the API docs. Default: any JSON object.",
    )
    strict: bool | None = Field(
        None,
        description="OpenAI's strict mode: the root must be an object and every object must list all its properties "
        "as required and set additionalProperties to false (else a 422). Answers follow the schema either way.",
    )

    @model_validator(mode="after")
    def _strict_schema(self) -> JsonSchemaSpec:
        problem = strict_problem(self.schema_) if self.strict else None
        if problem is not None:
            raise ValueError(problem)
        return self


class JsonSchemaFormat(StrictModel):
    """JSON valid against a JSON Schema (what the SDK's `parse(response_format=Model)` sends)."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


MAX_LOGIT_BIAS = 1024  # tokens one request may bias
LogitBias = Annotated[float, Field(ge=BAN, le=-BAN)]


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
    stream: bool = Field(False, description="Server-Sent Events: chunks as tokens are generated, then `[DONE]`.")
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = Field(
        None,
        description="`json_object` or `json_schema`: every answer that ends with finish_reason `stop` is JSON "
        "valid against the schema; a complete one that fails a keyword the grammar cannot hold while writing "
        "(uniqueItems, not, ...) ends with `schema_violation`; only a `length` cut leaves one unfinished. "
        "Needs ENGINE=llamacpp.",
    )
    logit_bias: Annotated[dict[TokenId, LogitBias], Field(max_length=MAX_LOGIT_BIAS)] | None = Field(
        None,
        description="Token id -> a bias added to the model's logit for it before sampling (-100 to 100; -100 bans "
        "the token). Logprobs still describe the model's own distribution. Needs ENGINE=llamacpp.",
    )
    min_tokens: int = Field(
        0, ge=0, description="vLLM's: no end-of-sequence token before this many tokens (stop strings still end)."
    )
    ignore_eos: bool = Field(
        False, description="vLLM's: never choose the end-of-sequence token; the answer runs to its token limit."
    )

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> OpenAIRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling(self) -> SamplingParams:
        if self.temperature < GREEDY_BELOW_TEMPERATURE:
            return GREEDY
        return SamplingParams(do_sample=True, temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def token_rules(self) -> TokenRules:
        bias = tuple(sorted((self.logit_bias or {}).items()))
        return TokenRules(logit_bias=bias, min_tokens=self.min_tokens, ignore_eos=self.ignore_eos)

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def grammar(self) -> Grammar | None:
        """What `response_format` asks every answer to match."""
        response_format = self.response_format
        if isinstance(response_format, JsonObjectFormat):
            return Grammar.json_object(param="response_format")
        if isinstance(response_format, JsonSchemaFormat):
            return Grammar.json_schema(response_format.json_schema.schema_, param="response_format")
        return None


TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(OpenAIRequest):
    """OpenAI `POST /v1/completions`; `completion_request_model` bounds prompt and counts from the settings."""

    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        description="A text, or several (one answer of `n` choices each, in order: prompt i's choices are "
        "i*n to i*n+n-1), or token ids, or several lists of token ids."
    )
    max_tokens: int = OPENAI_DEFAULT_MAX_TOKENS
    logprobs: TopLogprobs | None = Field(
        None, description="Each token's log-probability and up to this many likeliest alternatives."
    )

    def prompts(self) -> list[Prompt]:
        """Each prompt: a text, or a tuple of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) for item in prompt):
            return [tuple(prompt)]  # type: ignore[arg-type]
        return [item if isinstance(item, str) else tuple(item) for item in prompt]  # type: ignore[misc]

    def to_generation_requests(self, deadline: float | None, *, max_choices: int) -> list[GenerationRequest]:
        """This API's one translation into the core's requests: one per prompt, each with `n` choices, at most
        `max_choices` in all."""
        prompts = self.prompts()
        if len(prompts) * self.n > max_choices:
            raise TooManyChoices(len(prompts), self.n, max_choices)
        grammar, rules = self.grammar(), self.token_rules()
        return [
            GenerationRequest(
                prompt=prompt,
                max_new_tokens=self.max_tokens,
                n=self.n,
                sampling=self.sampling(),
                stop=self.stop_strings(),
                deadline=deadline,
                logprobs=self.logprobs,
                grammar=grammar,
                model=self.model,
                rules=rules,
            )
            for prompt in prompts
        ]


def completion_request_model(bounds: Bounds) -> type[CompletionRequest]:
    """`CompletionRequest` with the settings' limits on prompt length (and prompts), max_tokens and n."""
    several = Field(min_length=1, max_length=bounds.max_sequences)
    prompt = (
        bounds.prompt
        | Annotated[list[bounds.prompt], several]  # type: ignore[name-defined]
        | bounds.token_ids
        | Annotated[list[bounds.token_ids], several]  # type: ignore[name-defined]
    )
    return bounded(CompletionRequest, bounds, tokens="max_tokens", sequences="n", prompt=prompt)


class Choice(BaseModel):
    """What every OpenAI choice carries besides its text."""

    index: int
    finish_reason: Literal["stop", "length", "schema_violation"] = Field(
        description="`schema_violation`: the answer is complete JSON but fails a keyword of the response_format "
        "schema that the grammar cannot enforce while generating (uniqueItems, not, ...): it is not valid."
    )
    time_limit_reached: bool = Field(
        False, description="Generation stopped at the request's time budget (finish_reason is then `length`)."
    )

    @staticmethod
    def ending(finish_reason: str | None) -> dict[str, Any]:
        """OpenAI's finish_reason, and the time-limit flag: OpenAI has no reason for a time limit, so such
        a choice reports `length` and is flagged."""
        if finish_reason is None:
            return {"finish_reason": None}
        cut = finish_reason == "time_limit"
        reason = "length" if cut or finish_reason == "length" else "stop"
        if finish_reason == "schema_violation":
            reason = finish_reason
        return {"finish_reason": reason, "time_limit_reached": cut}


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs: per token its text, log-probability, likeliest alternatives and offset."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]

    @classmethod
    def of(cls, tokens: tuple[GeneratedToken, ...], offset: int = 0) -> CompletionLogprobs:
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token.text)
        return cls(
            tokens=[token.token for token in tokens],
            token_logprobs=[token.logprob for token in tokens],
            # The chosen token is always among them, as OpenAI does: up to logprobs + 1 entries.
            top_logprobs=[
                {alt.token: alt.logprob for alt in token.top_logprobs} | {token.token: token.logprob or 0.0}
                for token in tokens
            ],
            text_offset=offsets,
        )


class CompletionChoice(Choice):
    text: str
    logprobs: CompletionLogprobs | None = None

    @classmethod
    def of(cls, completion: Completion, index: int, *, logprobs: bool) -> CompletionChoice:
        return cls(
            text=completion.text,
            index=index,
            logprobs=CompletionLogprobs.of(completion.tokens) if logprobs else None,
            **cls.ending(completion.finish_reason),
        )


class Response(BaseModel):
    """What every OpenAI generation response carries besides its id, object and choices."""

    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    usage: Usage


class CompletionResponse(Response):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class CompletionChunkChoice(CompletionChoice):
    finish_reason: Literal["stop", "length", "schema_violation"] | None = None  # type: ignore[assignment]


class Chunk(BaseModel):
    """What every event of a streamed OpenAI answer carries besides its object and choices."""

    id: str
    created: int
    model: str
    usage: Usage | None = None  # in the last event, with stream_options.include_usage


class CompletionChunk(Chunk):
    """One event of a streamed completion: the text each choice gained, its finish_reason at its end."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChunkChoice]


class OpenAIEvents:
    """What OpenAI's streams share: one id for every chunk, a usage chunk when asked for, then `[DONE]`."""

    chunk: type[BaseModel]
    id_prefix: str

    def __init__(self, model: str, body: OpenAIRequest) -> None:
        self._chunk = {"id": f"{self.id_prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        self._include_usage = body.include_usage

    def end(self, tally: StreamTally) -> list[BaseModel | str]:
        usage = [self.chunk(**self._chunk, choices=[], usage=tally.usage)] if self._include_usage else []
        return [*usage, DONE]

    def error(self, error: ErrorResponse) -> list[BaseModel | str]:
        return [error, DONE]


class CompletionEvents(OpenAIEvents):
    """A streamed completion's events: a chunk for each piece of text."""

    chunk = CompletionChunk
    id_prefix = "cmpl"

    def __init__(self, model: str, body: CompletionRequest) -> None:
        super().__init__(model, body)
        self._logprobs = body.logprobs is not None
        self._offsets: dict[int, int] = {}

    def delta(self, delta: Delta, tally: StreamTally) -> list[BaseModel]:
        if not delta.text and delta.finish_reason is None:
            return []  # nothing a client could see (a special token, an unfinished character)
        offset = self._offsets.get(delta.index, 0)
        self._offsets[delta.index] = offset + len(delta.text)
        choice = CompletionChunkChoice(
            index=delta.index,
            text=delta.text,
            logprobs=CompletionLogprobs.of(delta.tokens, offset) if self._logprobs else None,
            **CompletionChunkChoice.ending(delta.finish_reason),
        )
        return [CompletionChunk(**self._chunk, choices=[choice])]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str

    @classmethod
    def of(cls, model: str, created: int) -> ModelCard:
        """The served model; it is owned by its name's namespace (`HuggingFaceTB/SmolLM2-135M-Instruct`), else
        by the name itself (`distilgpt2`)."""
        return cls(id=model, created=created, owned_by=model.partition("/")[0])


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
