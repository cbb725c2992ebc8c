"""What an API asks for, in the core's words: one request shape for every API, before it is validated.

Each API translates its own schema into a `GenerationRequest` in one function; the scheduler validates it once
(core/validation.py) into a `ValidRequest`, the only form the rest of the core sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distilgpt2_api.core.grammar import Grammar
from distilgpt2_api.engines.base import GREEDY, SamplingParams

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "EmbeddingRequest",
    "GREEDY",
    "NO_RULES",
    "GenerationRequest",
    "Prompt",
    "SamplingParams",
    "TokenRules",
    "tutorial_request",
]

DEFAULT_MAX_NEW_TOKENS = 50  # the tutorial's default, shared by every API that has no default of its own
TUTORIAL_TOP_K = 50  # the tutorial's pipeline sampled with top-k 50 (transformers' default)

Prompt = str | tuple[int, ...]  # text, or token ids taken as they are (no special tokens added)


BAN = -100.0  # a logit bias this low bans its token (OpenAI's convention)


@dataclass(frozen=True)
class TokenRules:
    """What changes which token may come next, besides sampling and a grammar: biases on the model's logits, and
    when the end-of-sequence token may end an answer."""

    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit); BAN or lower: never chosen
    min_tokens: int = 0  # no end-of-sequence token before this many tokens (stop strings may still end an answer)
    ignore_eos: bool = False  # no end-of-sequence token at all: the answer runs to max_new_tokens or a stop string


NO_RULES = TokenRules()


@dataclass(frozen=True)
class GenerationRequest:
    """One request: `n` continuations of `prompt`, each ending at `max_new_tokens`, a stop string or the deadline."""

    prompt: Prompt
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    n: int = 1
    sampling: SamplingParams = field(default=GREEDY)
    stop: tuple[str, ...] = ()
    deadline: float | None = None  # time.monotonic() by which generation must have returned
    add_special_tokens: bool = True  # False for a rendered chat prompt: its template placed them
    logprobs: int | None = None  # None: none; k: each token's log-probability and its k likeliest alternatives
    grammar: Grammar | None = None  # what every answer must match (core/grammar.py); stop strings then do not apply
    model: str | None = None  # the model the client named, if any: only the served one is served
    rules: TokenRules = field(default=NO_RULES)


@dataclass(frozen=True)
class EmbeddingRequest:
    """Sentence embeddings: one vector per input (a text, or token ids taken as they are)."""

    inputs: tuple[Prompt, ...]
    model: str | None = None  # the model the client named, if any: only the served one is served
    dimensions: int | None = None  # None: the model's; fewer: the first ones, normalised again (Matryoshka)


def tutorial_request(prompt: str, max_new_tokens: int, n: int, deadline: float | None = None) -> GenerationRequest:
    """The tutorial's generation: sampled with top-k 50, as its pipeline did (`GET /{prompt}`, TextGenerator)."""
    sampling = SamplingParams(do_sample=True, top_k=TUTORIAL_TOP_K)
    return GenerationRequest(prompt=prompt, max_new_tokens=max_new_tokens, n=n, sampling=sampling, deadline=deadline)
