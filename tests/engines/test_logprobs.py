"""Logprobs are the log-softmax of the model's own logits, the same from both engines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from distilgpt2_api.core.batch import BatchScheduler
from distilgpt2_api.core.errors import LogprobsBudgetExceeded
from distilgpt2_api.core.request import GenerationRequest, SamplingParams
from distilgpt2_api.core.stream import Completion
from distilgpt2_api.engines import Engine, ModelInfo, load_engine
from distilgpt2_api.engines.ctranslate2_engine import CTranslate2Engine

TOLERANCE = 0.02  # float32 CTranslate2 vs torch differ by ~0.005 here; temperature 0.5 twice moves them ~0.1+
TOP = 3
PROMPT = "Once upon a time"
# Sampled at temperature 0.5: logprobs must still describe the model, not the sampling distribution.
REQUEST = GenerationRequest(
    prompt=PROMPT,
    max_new_tokens=6,
    n=2,
    sampling=SamplingParams(do_sample=True, temperature=0.5, seed=7),
    logprobs=TOP,
)


@pytest.fixture(scope="module")
def engines(model_dir: Path) -> dict[str, Engine]:
    # float32 CTranslate2: int8 arithmetic would blur the comparison with its own rounding.
    return {
        "ctranslate2": CTranslate2Engine(ModelInfo.read(model_dir), threads=1, compute_type="float32"),
        "transformers": load_engine(model_dir, "transformers", threads=1),
    }


def _reference(model: torch.nn.Module, prompt_ids: list[int], completion: Completion) -> torch.Tensor:
    """log_softmax of a plain forward pass over prompt + generated tokens: each generated position's distribution."""
    ids = prompt_ids + [token.id for token in completion.tokens]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)[len(prompt_ids) - 1 : len(ids) - 1]


@pytest.mark.parametrize("name", ["ctranslate2", "transformers"])
def test_logprobs_are_the_models_log_softmax(model_dir: Path, engines: dict[str, Engine], name: str) -> None:
    engine = engines[name]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt_ids = engine.tokenizer.encode(PROMPT)
    result = BatchScheduler(engine).generate_blocking(REQUEST)
    assert len(result.completions) == 2
    for completion in result.completions:
        reference = _reference(model, prompt_ids, completion)
        assert len(completion.tokens) == len(reference) > 0
        for token, expected in zip(completion.tokens, reference, strict=True):
            assert token.logprob == pytest.approx(expected[token.id].item(), abs=TOLERANCE)
            # The likeliest TOP, likeliest first: each is the model's logprob of that token, none below the
            # model's TOP-th likeliest (near-ties may order differently between the engines' arithmetic).
            alternatives = token.top_logprobs
            assert len(alternatives) == TOP
            assert [alt.logprob for alt in alternatives] == sorted((alt.logprob for alt in alternatives), reverse=True)
            assert [alt.logprob for alt in alternatives] == pytest.approx(
                [expected[alt.id].item() for alt in alternatives], abs=TOLERANCE
            )
            assert min(alt.logprob for alt in alternatives) >= torch.topk(expected, TOP).values[-1].item() - TOLERANCE
            assert [alt.token for alt in alternatives] == [engine.tokenizer.token_text(alt.id) for alt in alternatives]
        # The test can tell: with the temperature applied (once more), the numbers would be off by more.
        scaled = torch.log_softmax(reference / 0.5, -1)
        assert (scaled - reference).abs().max().item() > 5 * TOLERANCE


def test_both_engines_give_the_same_logprobs_for_the_same_tokens(engines: dict[str, Engine]) -> None:
    greedy = GenerationRequest(prompt=PROMPT, max_new_tokens=8, logprobs=0)
    results = {name: BatchScheduler(engine).generate_blocking(greedy) for name, engine in engines.items()}
    ct2, hf = (results[name].completions[0].tokens for name in ("ctranslate2", "transformers"))
    assert [t.id for t in ct2] == [t.id for t in hf]
    assert [t.logprob for t in ct2] == pytest.approx([t.logprob for t in hf], abs=TOLERANCE)
    assert all(t.top_logprobs == () for t in ct2 + hf)  # 0: the chosen token's alone


def test_no_logprobs_unless_asked(engine: Engine) -> None:
    result = BatchScheduler(engine).generate_blocking(GenerationRequest(prompt=PROMPT, max_new_tokens=4))
    assert all(token.logprob is None for token in result.completions[0].tokens)


def test_alternatives_are_bounded_where_the_engine_keeps_every_step(engine: Engine) -> None:
    # CTranslate2 keeps every step's logits while it generates with alternatives, so it declares a bound on the
    # steps; the transformers engine keeps the last step's only, and declares none.
    bound = type(engine).max_alternatives_steps
    request = GenerationRequest(
        prompt=PROMPT,
        max_new_tokens=(bound or 256) // 4 + 1,
        n=4,
        sampling=SamplingParams(do_sample=True),
        logprobs=1,
    )
    scheduler = BatchScheduler(engine)
    if bound is None:
        result = scheduler.generate_blocking(request)
        assert [len(c.tokens[0].top_logprobs) for c in result.completions] == [1] * 4
        return
    with pytest.raises(LogprobsBudgetExceeded, match="logprobs"):
        scheduler.validate(request)
    scheduler.validate(replace(request, n=1))  # within the bound: taken
