"""What to generate, as the core and the engines see it: one request shape for every API."""

from __future__ import annotations

from dataclasses import dataclass, field

from distilgpt2_api.core.grammar import Grammar

DEFAULT_MAX_NEW_TOKENS = 50  # the tutorial's default, shared by every API that has no default of its own
TUTORIAL_TOP_K = 50  # the tutorial's pipeline sampled with top-k 50 (transformers' default)


@dataclass(frozen=True)
class SamplingParams:
    """How each next token is chosen. Greedy (the most likely token) unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k filtering
    repetition_penalty: float = 1.0
    seed: int | None = None  # sampling only: the same seed and request give the same output

    @property
    def seed_in_use(self) -> int | None:
        """The seed, when it means something: greedy decoding draws nothing."""
        return self.seed if self.do_sample else None


GREEDY = SamplingParams()


Prompt = str | tuple[int, ...]  # text, or token ids taken as they are (no special tokens added)


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


@dataclass(frozen=True)
class TokenRequest:
    """What an engine computes: `n` sequences of new token ids after `prompt_ids`, nothing it does not use.

    Stop strings, deadlines and cancellation are the caller's: it ends a sequence from the step callback.
    """

    prompt_ids: tuple[int, ...]
    n: int
    max_new_tokens: int
    sampling: SamplingParams
    logprobs: int | None = None  # None: none; k: each chosen token's log-probability and the k likeliest


def tutorial_request(prompt: str, max_new_tokens: int, n: int, deadline: float | None = None) -> GenerationRequest:
    """The tutorial's generation: sampled with top-k 50, as its pipeline did (`GET /{prompt}`, TextGenerator)."""
    sampling = SamplingParams(do_sample=True, top_k=TUTORIAL_TOP_K)
    return GenerationRequest(prompt=prompt, max_new_tokens=max_new_tokens, n=n, sampling=sampling, deadline=deadline)
