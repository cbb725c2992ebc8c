"""Per-sequence sampling over one logits row: transformers' processing, its own seeded generator, raw logprobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from distilgpt2_api.core.errors import InvalidRequest
from distilgpt2_api.core.request import SamplingParams, TokenRules
from distilgpt2_api.core.sampling import NUCLEUS_CANDIDATES, Sampler, kept
from distilgpt2_api.engines.base import logprobs_of

VOCAB = 1000


def _logits(seed: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(VOCAB) * scale).astype(np.float32)


def _transformers_kept(scores: np.ndarray, params: SamplingParams) -> set[int]:
    row = torch.tensor(scores, dtype=torch.float64)[None, :]
    ids = torch.zeros((1, 1), dtype=torch.long)
    if params.top_k:
        row = TopKLogitsWarper(params.top_k)(ids, row)
    if params.top_p < 1.0:
        row = TopPLogitsWarper(params.top_p)(ids, row)
    return set(torch.nonzero(torch.isfinite(row[0])).flatten().tolist())


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(do_sample=True, top_k=1),
        SamplingParams(do_sample=True, top_k=50),
        SamplingParams(do_sample=True, top_p=0.9),
        SamplingParams(do_sample=True, top_p=0.5),
        SamplingParams(do_sample=True, top_k=40, top_p=0.8),
        SamplingParams(do_sample=True, top_p=0.01),
    ],
)
def test_top_k_and_top_p_keep_what_transformers_keeps(params: SamplingParams) -> None:
    for seed in range(5):
        scores = _logits(seed).astype(np.float64)
        ids, _ = kept(scores, params)
        assert set(ids.tolist()) == _transformers_kept(scores, params)


def test_a_wide_nucleus_beyond_the_first_candidates_is_still_exact() -> None:
    scores = _logits(1, scale=0.1).astype(np.float64)  # nearly flat: the nucleus spans most of the vocabulary
    params = SamplingParams(do_sample=True, top_p=0.95)
    ids, _ = kept(scores, params)
    assert ids.size > NUCLEUS_CANDIDATES
    assert set(ids.tolist()) == _transformers_kept(scores, params)


def test_repetition_penalty_and_temperature_as_transformers_apply_them() -> None:
    logits = _logits(3)
    history = [5, 17, 17, 900, int(np.argmax(logits))]
    params = SamplingParams(do_sample=True, temperature=0.7, repetition_penalty=1.3)
    sampler = Sampler(params, history=history)
    ours = sampler._penalized(logits) / params.temperature
    ids = torch.tensor([history])
    row = RepetitionPenaltyLogitsProcessor(1.3)(ids, torch.tensor(logits, dtype=torch.float64)[None, :])
    row = TemperatureLogitsWarper(0.7)(ids, row)
    np.testing.assert_allclose(ours, row[0].numpy(), rtol=1e-6)


def test_greedy_takes_the_most_likely_token_after_the_penalty() -> None:
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[[3, 4]] = [2.0, 1.9]
    assert Sampler(SamplingParams()).sample(logits).token_id == 3
    penalized = Sampler(SamplingParams(repetition_penalty=1.2), history=[3])
    assert penalized.sample(logits).token_id == 4
    assert penalized.sample(logits).token_id == 3  # 4 is now seen too: 2.0/1.2 > 1.9/1.2


def test_generated_tokens_count_for_the_penalty() -> None:
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[[3, 4]] = [2.0, 1.8]
    sampler = Sampler(SamplingParams(repetition_penalty=1.5))
    assert [sampler.sample(logits).token_id for _ in range(2)] == [3, 4]


def test_a_seeded_sequence_draws_the_same_tokens_every_time_and_each_sequence_its_own() -> None:
    params = SamplingParams(do_sample=True, temperature=1.5, seed=1234)
    rows = [_logits(i, scale=1.0) for i in range(40)]

    def draws(sequence: int) -> list[int]:
        sampler = Sampler(params, sequence=sequence)
        return [sampler.sample(row).token_id for row in rows]

    assert draws(0) == draws(0)
    assert draws(1) == draws(1)
    assert draws(0) != draws(1)
    unseeded = SamplingParams(do_sample=True, temperature=1.5)
    first, second = (Sampler(unseeded), Sampler(unseeded))
    assert [first.sample(r).token_id for r in rows] != [second.sample(r).token_id for r in rows]


def test_draws_follow_the_distribution() -> None:
    logits = np.full(VOCAB, -np.inf, dtype=np.float32)
    logits[[10, 20]] = [0.0, np.log(3.0)]  # 1/4 and 3/4
    sampler = Sampler(SamplingParams(do_sample=True, seed=7))
    tokens = [sampler.sample(logits).token_id for _ in range(4000)]
    assert set(tokens) == {10, 20}
    assert 0.70 < tokens.count(20) / len(tokens) < 0.80


def test_logprobs_describe_the_raw_logits_not_the_sampling_settings() -> None:
    logits = _logits(5)
    params = SamplingParams(do_sample=True, temperature=0.3, top_k=3, repetition_penalty=2.0, seed=1)
    step = Sampler(params, history=[1, 2, 3], logprobs=2).sample(logits)
    logprob, top = logprobs_of(logits, step.token_id, 2)
    assert step.logprob == pytest.approx(logprob)
    assert step.top_logprobs == top
    assert Sampler(params).sample(logits).logprob is None


def test_token_rules_bias_ban_and_hold_the_end_back() -> None:
    logits = _logits(3)
    best, second = (int(i) for i in np.argsort(-logits)[:2])
    banned = Sampler(SamplingParams(), rules=TokenRules(logit_bias=((best, -100.0),)), logprobs=0)
    step = banned.sample(logits)
    assert step.token_id == second
    assert step.logprob == pytest.approx(logprobs_of(logits, second, 0)[0])  # the model's, not the biased one
    worst = int(np.argmin(logits))
    assert Sampler(SamplingParams(), rules=TokenRules(logit_bias=((worst, 100.0),))).sample(logits).token_id == worst
    # The end of sequence (here the likeliest token) waits for min_tokens, and never comes with ignore_eos.
    held = Sampler(SamplingParams(), rules=TokenRules(min_tokens=2), eos_token_ids=[best])
    assert [held.sample(logits).token_id for _ in range(3)] == [second, second, best]
    ignoring = Sampler(SamplingParams(), rules=TokenRules(ignore_eos=True), eos_token_ids=[best])
    assert {ignoring.sample(logits).token_id for _ in range(5)} == {second}


def test_when_every_token_is_banned_the_request_is_told() -> None:
    logits = _logits(4)[:3]
    rules = TokenRules(logit_bias=((0, -100.0), (1, -100.0)), min_tokens=1)
    with pytest.raises(InvalidRequest, match="banned"):
        Sampler(SamplingParams(do_sample=True, seed=1), rules=rules, eos_token_ids=[2]).sample(logits)
