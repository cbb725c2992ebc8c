"""A request checked once, against the model, this server and its engine: the one form the core runs.

As text-generation-inference's `ValidGenerateRequest`: every API's request is translated into a
`GenerationRequest`, then `Validator.validate` makes it a `ValidRequest` before it queues and before anything is
sent, or refuses it (InvalidRequest: an HTTP 400, 404 for another model). Every bound the model, the server's
budgets and the engine set is checked here and nowhere else; the fields' own limits (a prompt's length, `n`,
`max_new_tokens`) are the request schemas', from the same settings (http_api/protocol.Bounds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from distilgpt2_api.core.errors import (
    ContextLengthExceeded,
    DimensionsUnsupported,
    EmbeddingBudgetExceeded,
    EmbeddingOnly,
    EmbeddingsUnsupported,
    EmptyInput,
    GrammarUnsupported,
    InputTooLong,
    LogprobsBudgetExceeded,
    MinTokensOverMax,
    ModelNotFound,
    TokenBudgetExceeded,
    TooManySequences,
    UnknownToken,
    UnsupportedByEngine,
)
from distilgpt2_api.core.grammar import GRAMMAR_CACHE_SIZE, CompiledGrammar, GrammarCache
from distilgpt2_api.core.request import NO_RULES, EmbeddingRequest, GenerationRequest, Prompt, TokenRules
from distilgpt2_api.engines.base import Embedder, ModelInfo, SamplingParams, TextTokenizer, TokenRequest


@dataclass(frozen=True)
class EmbeddingLimits:
    """What an engine that embeds can take (engines/base.py Embedder)."""

    tokens: int  # in one input
    size: int  # each vector's dimensions

    @classmethod
    def of(cls, engine: object) -> EmbeddingLimits | None:
        """`engine`'s limits, or None when it cannot embed."""
        return cls(engine.embedding_tokens, engine.embedding_size) if isinstance(engine, Embedder) else None


@dataclass(frozen=True)
class Limits:
    """What a request must fit: what the scheduler's engine can do, and the server's settings; None: no bound."""

    grammar: bool  # whether answers can be held to a grammar (structured output, tool calls)
    token_rules: bool = False  # whether logit biases, min_tokens and ignore_eos can be applied (TokenRules)
    max_batch_tokens: int | None = None  # sequences x (prompt + new tokens), per request (MAX_BATCH_TOKENS)
    max_sequences: int | None = None  # sampled sequences one request may run at once (a step engine's slots)
    max_alternatives_steps: int | None = None  # with top logprobs: sequences x new tokens (an engine's memory)
    any_model_name: bool = False  # a request naming another model is served by this one (else ModelNotFound)
    embeddings: EmbeddingLimits | None = None  # None: the engine cannot embed


@dataclass(frozen=True)
class ValidRequest:
    """A validated request: its prompt as token ids, what to compute and what ends each sequence."""

    prompt: Prompt  # as the client sent it (for the request's log line)
    prompt_ids: tuple[int, ...]
    choices: int  # answers the client gets (`n`)
    sequences: int  # sequences computed: `choices` when sampling; greedy ones would all be equal, so one
    max_new_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]  # none with a grammar: it decides where an answer ends
    deadline: float | None  # time.monotonic() by which generation must have returned
    logprobs: int | None
    grammar: CompiledGrammar | None
    rules: TokenRules = NO_RULES

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def copies(self) -> int:
        """Choices each computed sequence stands for: a greedy request's one sequence is every choice."""
        return self.choices // self.sequences

    @property
    def tokens(self) -> int:
        """What the request holds in memory while it generates: sequences x (prompt + new tokens)."""
        return self.sequences * (self.prompt_tokens + self.max_new_tokens)

    def token_request(self) -> TokenRequest:
        """What a whole-job engine computes for it."""
        return TokenRequest(self.prompt_ids, self.sequences, self.max_new_tokens, self.sampling, self.logprobs)

    def merged(self, others: list[ValidRequest]) -> ValidRequest:
        """This request with the choices and prompt tokens of `others` added: several prompts answered as one."""
        everything = [self, *others]
        return replace(
            self,
            choices=sum(r.choices for r in everything),
            prompt_ids=tuple(i for r in everything for i in r.prompt_ids),
        )


@dataclass(frozen=True)
class ValidEmbedding:
    """A validated embedding request: each input as token ids, and the dimensions of each answer."""

    token_ids: tuple[tuple[int, ...], ...]
    dimensions: int

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.token_ids))


class Validator:
    """Turns a `GenerationRequest` into a `ValidRequest` for one model, server and engine."""

    def __init__(
        self, info: ModelInfo, tokenizer: TextTokenizer, limits: Limits, *, grammar_cache_size: int = GRAMMAR_CACHE_SIZE
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.limits = limits
        self._grammar_cache_size = grammar_cache_size

    @cached_property
    def grammars(self) -> GrammarCache:
        """Grammars compiled for this model, built on first use (its tokenizer index costs ~0.2 s)."""
        return GrammarCache(self.tokenizer.backend.to_str(), self.info.eos_token_ids, self._grammar_cache_size)

    def validate(self, request: GenerationRequest) -> ValidRequest:
        """`request` checked against every bound, or InvalidRequest saying which and what to change."""
        info, limits = self.info, self.limits
        self._check_model(request.model)
        if info.embedding_only:
            raise EmbeddingOnly(info.name)
        grammar = None
        if request.grammar is not None:
            if not limits.grammar:
                raise GrammarUnsupported(request.grammar.param)
            grammar = self.grammars.compiled(request.grammar)  # compiled now: a bad one is a 400, before queueing
        self._check_rules(request)
        prompt_ids = self._prompt_ids(request)
        if len(prompt_ids) + request.max_new_tokens > info.context_length:
            raise ContextLengthExceeded(len(prompt_ids), request.max_new_tokens, info.context_length)
        valid = ValidRequest(
            prompt=request.prompt,
            prompt_ids=prompt_ids,
            choices=request.n,
            sequences=request.n if request.sampling.do_sample else 1,
            max_new_tokens=request.max_new_tokens,
            sampling=request.sampling,
            stop=request.stop if grammar is None else (),
            deadline=request.deadline,
            logprobs=request.logprobs,
            grammar=grammar,
            rules=request.rules,
        )
        if limits.max_batch_tokens is not None and valid.tokens > limits.max_batch_tokens:
            raise TokenBudgetExceeded(valid.sequences, len(prompt_ids), valid.max_new_tokens, limits.max_batch_tokens)
        if limits.max_sequences is not None and valid.sequences > limits.max_sequences:
            raise TooManySequences(valid.sequences, limits.max_sequences)
        steps = valid.sequences * valid.max_new_tokens
        if valid.logprobs and limits.max_alternatives_steps is not None and steps > limits.max_alternatives_steps:
            raise LogprobsBudgetExceeded(valid.sequences, valid.max_new_tokens, limits.max_alternatives_steps)
        return valid

    def validate_embedding(self, request: EmbeddingRequest) -> ValidEmbedding:
        """`request` checked against the engine (it must embed), its input length and the request's token budget."""
        self._check_model(request.model)
        limits = self.limits.embeddings
        if limits is None:
            raise EmbeddingsUnsupported()
        dimensions = request.dimensions or limits.size
        if not 0 < dimensions <= limits.size:
            raise DimensionsUnsupported(dimensions, limits.size)
        token_ids = tuple(self._input_ids(prompt) for prompt in request.inputs)
        for index, ids in enumerate(token_ids):
            if not ids:
                raise EmptyInput(index)
            if len(ids) > limits.tokens:
                raise InputTooLong(index, len(ids), limits.tokens)
        valid = ValidEmbedding(token_ids, dimensions)
        budget = self.limits.max_batch_tokens
        if budget is not None and valid.prompt_tokens > budget:
            raise EmbeddingBudgetExceeded(valid.prompt_tokens, budget)
        return valid

    def _check_model(self, model: str | None) -> None:
        info = self.info
        if model is not None and model != info.name and not self.limits.any_model_name:
            raise ModelNotFound(f"model {model!r} is not served here; use {info.name!r}")

    def _input_ids(self, prompt: Prompt) -> tuple[int, ...]:
        if isinstance(prompt, str):
            return tuple(self.tokenizer.encode(prompt))
        vocab_size = self.tokenizer.vocab_size
        unknown = next((i for i in prompt if i >= vocab_size), None)
        if unknown is not None:
            raise UnknownToken(unknown, vocab_size, param="input")
        return prompt

    def _check_rules(self, request: GenerationRequest) -> None:
        rules = request.rules
        if rules == NO_RULES:
            return
        if not self.limits.token_rules:
            param = "logit_bias" if rules.logit_bias else "min_tokens" if rules.min_tokens else "ignore_eos"
            raise UnsupportedByEngine("logit_bias, min_tokens and ignore_eos", param)
        vocab_size = self.tokenizer.vocab_size
        unknown = next((token for token, _ in rules.logit_bias if token >= vocab_size), None)
        if unknown is not None:
            raise UnknownToken(unknown, vocab_size, param="logit_bias")
        if rules.min_tokens > request.max_new_tokens:
            raise MinTokensOverMax(rules.min_tokens, request.max_new_tokens)

    def _prompt_ids(self, request: GenerationRequest) -> tuple[int, ...]:
        if isinstance(request.prompt, str):
            return tuple(self.tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens))
        vocab_size = self.tokenizer.vocab_size
        unknown = next((i for i in request.prompt if i >= vocab_size), None)
        if unknown is not None:
            raise UnknownToken(unknown, vocab_size)
        return tuple(request.prompt)
