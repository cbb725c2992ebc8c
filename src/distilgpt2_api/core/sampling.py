"""Choosing one sequence's next token from one row of logits, with the sequence's own parameters and generator.

The processing follows transformers' order and definitions, so a request means the same on every engine:
repetition penalty (over the prompt and every generated token), then temperature, top-k and top-p; greedy
decoding takes the most likely token after the penalty. Log-probabilities describe the model's own
distribution: they are read from the raw logits, before any of this (`logprobs_of`).

Each sampled sequence draws from a `numpy.random.Generator` of its own. Seeded, sequence `j` of a request
seeded `s` draws from the stream of (s, j): the same seed gives the same tokens whatever runs beside it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from distilgpt2_api.core.errors import InvalidRequest
from distilgpt2_api.core.request import BAN, NO_RULES, SamplingParams, TokenRules
from distilgpt2_api.engines.base import TokenStep, logprobs_of

# top-p looks at this many likeliest tokens first: a full sort of a 50k vocabulary costs milliseconds a token,
# and the nucleus almost always lies within them (else it sorts everything).
NUCLEUS_CANDIDATES = 256


class Sampler:
    """Picks the tokens of one sequence. Not thread-safe: the generating thread owns it."""

    def __init__(
        self,
        params: SamplingParams,
        *,
        history: Iterable[int] = (),
        sequence: int = 0,
        logprobs: int | None = None,
        rules: TokenRules = NO_RULES,
        eos_token_ids: Iterable[int] = (),
    ) -> None:
        self.params = params
        self.rules = rules
        self._eos = np.array(sorted(eos_token_ids), dtype=np.int64)
        self._bias_ids = np.array([token for token, _ in rules.logit_bias], dtype=np.int64)
        self._bias = np.array([-np.inf if bias <= BAN else bias for _, bias in rules.logit_bias], dtype=np.float64)
        self._chosen = 0  # tokens this sampler chose: min_tokens counts them
        self._has_rules = rules != NO_RULES
        self.sequence = sequence  # which of its request's sequences: reported in each TokenStep
        self._logprobs = logprobs
        self._history = list(history)  # what the repetition penalty covers: the prompt, then each chosen token
        self._seen: np.ndarray | None = None  # the same, as a mask over the vocabulary (built on first use)
        seed = params.seed if params.do_sample else None
        self.generator = np.random.default_rng(None if seed is None else [seed, sequence])

    def sample(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> TokenStep:
        """The next token after `logits` (one row of the model's raw scores), remembered for the penalty.

        `allowed` (a bool mask, from a grammar) leaves only those tokens to choose from; log-probabilities
        still describe the model's own distribution. The request's `TokenRules` apply after the repetition penalty:
        its biases, and no end-of-sequence token before `min_tokens` (or at all, with `ignore_eos`).
        """
        scores = self._penalized(logits)
        banning = allowed is not None or self._has_rules  # only these can leave no token to choose
        if self._bias_ids.size:
            scores[self._bias_ids] += self._bias
        if self.rules.ignore_eos or self._chosen < self.rules.min_tokens:
            scores[self._eos] = -np.inf
        if allowed is not None:
            scores[~allowed] = -np.inf
        if banning and not np.isfinite(scores).any():
            raise InvalidRequest("every token that could come next is banned (logit_bias, a grammar, min_tokens)")
        params = self.params
        if not params.do_sample:
            token = int(np.argmax(scores))
        else:
            token = self._draw(scores / params.temperature if params.temperature != 1.0 else scores)
        self._remember(token)
        self._chosen += 1
        if self._logprobs is None:
            return TokenStep(self.sequence, token)
        logprob, top = logprobs_of(logits, token, self._logprobs)
        return TokenStep(self.sequence, token, logprob, top)

    def _penalized(self, logits: np.ndarray) -> np.ndarray:
        """transformers' repetition penalty: a seen token's positive score divided by it, a negative one multiplied."""
        scores = np.array(logits, dtype=np.float64)  # a copy: the raw row stays intact for logprobs
        penalty = self.params.repetition_penalty
        if penalty == 1.0:
            return scores
        if self._seen is None or self._seen.size != scores.size:
            self._seen = np.zeros(scores.size, dtype=bool)
            self._seen[[i for i in self._history if i < scores.size]] = True
        seen = scores[self._seen]
        scores[self._seen] = np.where(seen > 0, seen / penalty, seen * penalty)
        return scores

    def _remember(self, token: int) -> None:
        self._history.append(token)
        if self._seen is not None and token < self._seen.size:
            self._seen[token] = True

    def _draw(self, scores: np.ndarray) -> int:
        """Sample from `scores` (after temperature) within top-k and top-p."""
        candidates, values = kept(scores, self.params)
        probabilities = np.exp(values - values.max())
        cumulative = np.cumsum(probabilities)
        index = int(np.searchsorted(cumulative, self.generator.random() * cumulative[-1], side="right"))
        return int(candidates[min(index, candidates.size - 1)])


def kept(scores: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The token ids top-k and top-p leave to sample from, and their scores."""
    candidates = np.arange(scores.size)
    if 0 < params.top_k < scores.size:
        # transformers keeps every token scoring at least the k-th highest (ties included).
        kth = np.partition(scores, -params.top_k)[-params.top_k]
        candidates = np.flatnonzero(scores >= kth)
    values = scores[candidates]
    if params.top_p < 1.0:
        candidates, values = _nucleus(candidates, values, params.top_p)
    return candidates, values


def _nucleus(candidates: np.ndarray, values: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """transformers' top-p: keep the likeliest tokens while the probability of those before each is under `top_p`
    (at least one)."""
    shifted = np.exp(values - values.max())
    probabilities = shifted / shifted.sum()
    if probabilities.size > NUCLEUS_CANDIDATES:
        head = np.argpartition(-probabilities, NUCLEUS_CANDIDATES)[:NUCLEUS_CANDIDATES]
        if probabilities[head].sum() < top_p:  # the nucleus reaches beyond the head: sort everything
            head = np.arange(probabilities.size)
    else:
        head = np.arange(probabilities.size)
    order = head[np.argsort(-probabilities[head], kind="stable")]
    before = np.cumsum(probabilities[order]) - probabilities[order]  # the probability of the likelier tokens
    kept = order[before < top_p]
    if kept.size == 0:
        kept = order[:1]
    return candidates[kept], values[kept]
