"""One validation for every API and engine: each bound refuses in one place, and a valid request holds what the
core runs, worked out once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from distilgpt2_api.core.errors import (
    ContextLengthExceeded,
    GrammarUnsupported,
    LogprobsBudgetExceeded,
    MinTokensOverMax,
    ModelNotFound,
    TokenBudgetExceeded,
    TooManySequences,
    UnknownToken,
    UnsupportedByEngine,
)
from distilgpt2_api.core.grammar import Grammar, InvalidGrammar
from distilgpt2_api.core.request import GenerationRequest, SamplingParams, TokenRules
from distilgpt2_api.core.validation import Limits, Validator
from distilgpt2_api.engines.base import ModelInfo, TextTokenizer

SAMPLED = SamplingParams(do_sample=True, seed=3)
JSON = Grammar.json_object(param="response_format")
UNSUPPORTED_SCHEMA = Grammar.json_schema({"$ref": "#/nowhere"}, param="response_format")


def validator(info: ModelInfo, tokenizer: TextTokenizer, **limits: object) -> Validator:
    return Validator(info, tokenizer, Limits(**{"grammar": True, "token_rules": True, **limits}))  # type: ignore[arg-type]


def test_a_valid_request_holds_what_the_core_runs(info: ModelInfo, tokenizer: TextTokenizer) -> None:
    check = validator(info, tokenizer)
    request = GenerationRequest(prompt="Once upon a time", max_new_tokens=7, n=3, stop=("\n",), logprobs=2)
    greedy = check.validate(request)
    assert greedy.prompt_ids == tuple(tokenizer.encode("Once upon a time"))
    assert (greedy.choices, greedy.sequences, greedy.copies) == (3, 1, 3)  # greedy: one sequence, repeated
    assert greedy.tokens == len(greedy.prompt_ids) + 7
    assert (greedy.stop, greedy.logprobs, greedy.grammar) == (("\n",), 2, None)
    sampled = check.validate(replace(request, sampling=SAMPLED))
    assert (sampled.choices, sampled.sequences, sampled.copies) == (3, 3, 1)
    assert sampled.tokens == 3 * (len(sampled.prompt_ids) + 7)
    engine_job = sampled.token_request()
    assert (engine_job.prompt_ids, engine_job.n, engine_job.max_new_tokens) == (sampled.prompt_ids, 3, 7)
    assert (engine_job.sampling, engine_job.logprobs) == (SAMPLED, 2)


def test_token_ids_are_taken_as_they_are(info: ModelInfo, tokenizer: TextTokenizer) -> None:
    check = validator(info, tokenizer)
    assert check.validate(GenerationRequest(prompt=(5, 6, 7))).prompt_ids == (5, 6, 7)
    with pytest.raises(UnknownToken, match=str(tokenizer.vocab_size)):
        check.validate(GenerationRequest(prompt=(5, tokenizer.vocab_size)))


def test_a_chat_prompt_adds_no_special_tokens(info: ModelInfo, tokenizer: TextTokenizer) -> None:
    check = validator(info, tokenizer)
    text = "<|endoftext|>Hi"
    rendered = check.validate(GenerationRequest(prompt=text, add_special_tokens=False)).prompt_ids
    assert rendered == tuple(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(
    ("limits", "request_fields", "error", "param"),
    [
        ({}, {"model": "gpt-4"}, ModelNotFound, "model"),
        ({"grammar": False}, {"grammar": JSON}, GrammarUnsupported, "response_format"),
        ({}, {"max_new_tokens": 10_000}, ContextLengthExceeded, "max_new_tokens"),
        (
            {"max_batch_tokens": 60},
            {"n": 4, "sampling": SAMPLED, "max_new_tokens": 20},
            TokenBudgetExceeded,
            "max_new_tokens",
        ),
        ({"max_sequences": 2}, {"n": 3, "sampling": SAMPLED}, TooManySequences, "n"),
        (
            {"max_alternatives_steps": 40},
            {"n": 3, "sampling": SAMPLED, "max_new_tokens": 20, "logprobs": 1},
            LogprobsBudgetExceeded,
            "logprobs",
        ),
        ({}, {"grammar": UNSUPPORTED_SCHEMA}, InvalidGrammar, "response_format"),
        ({"token_rules": False}, {"rules": TokenRules(min_tokens=1)}, UnsupportedByEngine, "min_tokens"),
        ({}, {"rules": TokenRules(logit_bias=((10**9, 1.0),))}, UnknownToken, "logit_bias"),
        ({}, {"max_new_tokens": 4, "rules": TokenRules(min_tokens=5)}, MinTokensOverMax, "min_tokens"),
    ],
    ids=[
        "other-model",
        "grammar-unsupported",
        "context",
        "token-budget",
        "slots",
        "alternatives",
        "bad-grammar",
        "rules-unsupported",
        "bias-unknown-token",
        "min-over-max",
    ],
)
def test_each_bound_refuses_with_its_error(
    info: ModelInfo,
    tokenizer: TextTokenizer,
    limits: dict[str, object],
    request_fields: dict[str, object],
    error: type[Exception],
    param: str,
) -> None:
    check = validator(info, tokenizer, **limits)
    request = GenerationRequest(prompt="Once upon a time", **request_fields)  # type: ignore[arg-type]
    with pytest.raises(error) as refused:
        check.validate(request)
    assert getattr(refused.value, "param", None) == param
    # Within the bound (the same request, without what broke it), it is taken.
    fields = {key: value for key, value in request_fields.items() if key in ("sampling",)}
    assert check.validate(GenerationRequest(prompt="Once upon a time", max_new_tokens=4, **fields)).choices == 1  # type: ignore[arg-type]


def test_any_model_name_is_served_when_the_policy_says_so(info: ModelInfo, tokenizer: TextTokenizer) -> None:
    request = GenerationRequest(prompt="Once", model="tgi")
    assert validator(info, tokenizer, any_model_name=True).validate(request).choices == 1
    with pytest.raises(ModelNotFound):
        validator(info, tokenizer).validate(request)


def test_the_served_name_and_greedy_copies_are_within_every_bound(info: ModelInfo, tokenizer: TextTokenizer) -> None:
    check = validator(info, tokenizer, max_sequences=2, max_batch_tokens=60, max_alternatives_steps=40)
    # Greedy `n` computes one sequence: none of the per-sequence bounds counts its copies.
    valid = check.validate(GenerationRequest(prompt="Once", n=5, max_new_tokens=20, logprobs=1, model=info.name))
    assert (valid.choices, valid.sequences) == (5, 1)


def test_a_grammar_is_compiled_once_and_stops_the_stop_strings(info: ModelInfo, tokenizer: TextTokenizer) -> None:
    check = validator(info, tokenizer)
    grammar = Grammar("regex", r"[a-c]{2}")
    first = check.validate(GenerationRequest(prompt="Once", grammar=grammar, stop=("b",)))
    assert first.grammar is not None and first.grammar.grammar == grammar
    assert first.stop == ()  # the grammar decides where an answer ends
    compiled = check.grammars.compilations
    again = check.validate(GenerationRequest(prompt="Twice", grammar=grammar))
    assert again.grammar is first.grammar and check.grammars.compilations == compiled
    one, two = again.grammar.constraint(), again.grammar.constraint()  # each sequence a position of its own
    allowed = one.allowed(tokenizer.vocab_size)
    one.advance(int(allowed.nonzero()[0][0]))
    assert (one.allowed(tokenizer.vocab_size) != two.allowed(tokenizer.vocab_size)).any()
