"""Grammars compiled by llguidance: what a constraint allows, what is refused, and the cache."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from distilgpt2_api.core.grammar import Grammar, GrammarCache, InvalidGrammar
from distilgpt2_api.engines.base import ModelInfo, TextTokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
        "ok": {"type": "boolean"},
        "score": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def grammars(model_dir: Path, tokenizer: TextTokenizer) -> GrammarCache:
    return GrammarCache(tokenizer.backend.to_str(), ModelInfo.read(model_dir).eos_token_ids, size=3)


def walk(grammars: GrammarCache, grammar: Grammar, tokenizer: TextTokenizer, seed: int, limit: int = 400) -> str:
    """A random answer the constraint lets through: a uniformly random allowed token at every step."""
    rng = np.random.default_rng(seed)
    constraint = grammars.constraint(grammar)
    eos = set(grammars.eos_token_ids)
    tokens: list[int] = []
    for _ in range(limit):
        allowed = np.flatnonzero(constraint.allowed(tokenizer.vocab_size))
        assert allowed.size, "the constraint allows nothing"
        token = int(rng.choice(allowed))
        constraint.advance(token)
        if token in eos:
            break
        tokens.append(token)
        if constraint.done:
            break
    return tokenizer.decode(tokens)


@pytest.mark.parametrize("seed", range(20))
def test_every_answer_a_constraint_lets_through_is_valid(
    grammars: GrammarCache, tokenizer: TextTokenizer, seed: int
) -> None:
    text = walk(grammars, Grammar.json_schema(PERSON), tokenizer, seed)
    jsonschema.validate(json.loads(text), PERSON)
    assert "\n" not in text and "  " not in text.replace('"  "', "")  # compact: no runs of free whitespace


def test_a_regex_and_any_json_object(grammars: GrammarCache, tokenizer: TextTokenizer) -> None:
    for seed in range(5):
        assert re.fullmatch(r"[a-c]{2}-\d{3}", walk(grammars, Grammar("regex", r"[a-c]{2}-\d{3}"), tokenizer, seed))
    first = np.flatnonzero(grammars.constraint(Grammar.json_object()).allowed(tokenizer.vocab_size))
    assert first.size and all(tokenizer.decode([int(token)]).startswith("{") for token in first)


@pytest.mark.parametrize(
    ("grammar", "words"),
    [
        (Grammar.json_schema({"type": "strin"}), ["strin"]),
        (Grammar.json_schema({"type": "string", "minLength": -1}), ["minLength"]),
        (Grammar.json_schema({"$ref": "#/$defs/missing"}), ["missing"]),
        (Grammar("regex", "[0-9]{3}-("), ["unclosed group"]),
        (Grammar("lark", "start: undefined_rule"), ["undefined_rule"]),
    ],
    ids=["bad-type", "bad-bound", "dangling-ref", "bad-regex", "bad-lark"],
)
def test_what_cannot_be_compiled_is_refused_naming_why(
    grammars: GrammarCache, grammar: Grammar, words: list[str]
) -> None:
    grammar = Grammar(grammar.kind, grammar.source, param="response_format")
    with pytest.raises(InvalidGrammar) as caught:
        grammars.compiled(grammar)
    assert caught.value.param == "response_format" and caught.value.code == "invalid_grammar"
    for word in words:
        assert word in str(caught.value)


UNIQUE_TAGS = {
    "type": "object",
    "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True, "maxItems": 3}},
    "required": ["tags"],
}


@pytest.mark.parametrize("seed", range(12))
def test_a_keyword_the_mask_cannot_hold_is_checked_when_the_answer_is_complete(
    grammars: GrammarCache, tokenizer: TextTokenizer, seed: int
) -> None:
    """uniqueItems is not in the mask: random answers repeat tags, and exactly those are flagged."""
    rng = np.random.default_rng(seed)
    constraint = grammars.constraint(Grammar.json_schema(UNIQUE_TAGS))
    tokens: list[int] = []
    while not constraint.done:
        token = int(rng.choice(np.flatnonzero(constraint.allowed(tokenizer.vocab_size))))
        constraint.advance(token)
        tokens.append(token)
    tags = json.loads(tokenizer.decode(tokens))["tags"]
    problem = constraint.problem()
    assert (problem is None) == (len(set(tags)) == len(tags)), (tags, problem)
    if problem is not None:
        assert "non-unique" in problem


def test_a_schema_whose_narrowed_grammar_cannot_be_met_is_compiled_as_written(
    grammars: GrammarCache, tokenizer: TextTokenizer
) -> None:
    """Closing the object would forbid the required key it does not list: the grammar keeps it open instead."""
    schema = {"type": "object", "properties": {"a": {"enum": [1]}}, "required": ["b"]}
    for seed in range(3):
        answer = json.loads(walk(grammars, Grammar.json_schema(schema), tokenizer, seed, limit=2000))
        assert "b" in answer


def test_an_answer_the_end_of_sequence_token_ends_is_checked_without_it(
    grammars: GrammarCache, tokenizer: TextTokenizer
) -> None:
    constraint = grammars.constraint(Grammar.json_schema({"type": "integer", "minimum": 0, "maximum": 99}))
    for token in tokenizer.encode("42", add_special_tokens=False):
        constraint.advance(token)
    constraint.advance(grammars.eos_token_ids[0])  # a number may go on: only the end of sequence completes it
    assert constraint.done and constraint.problem() is None


def test_compiled_grammars_are_cached_within_a_bound(grammars: GrammarCache) -> None:
    schemas: list[dict[str, Any]] = [{"type": "object", "properties": {f"k{i}": {"type": "integer"}}} for i in range(5)]
    before = grammars.compilations
    first = grammars.compiled(Grammar.json_schema(schemas[0]))
    assert grammars.compiled(Grammar.json_schema(schemas[0])) is first
    assert grammars.compilations == before + 1
    for schema in schemas[1:]:  # the cache holds 3: the first one goes
        grammars.compiled(Grammar.json_schema(schema))
    assert grammars.compiled(Grammar.json_schema(schemas[0])) is not first
    assert grammars.compilations == before + 6


def test_each_constraint_is_a_position_of_its_own(grammars: GrammarCache, tokenizer: TextTokenizer) -> None:
    grammar = Grammar("regex", "ab|cd")
    one, two = grammars.constraint(grammar), grammars.constraint(grammar)
    a = tokenizer.encode("a", add_special_tokens=False)[0]
    one.advance(a)
    assert not one.allowed(tokenizer.vocab_size)[a] or tokenizer.token_text(a) != "a"
    assert two.allowed(tokenizer.vocab_size)[a]
    assert one.allowed(tokenizer.vocab_size + 7)[-7:].sum() == 0  # ids past the tokenizer's (padded logits) never
