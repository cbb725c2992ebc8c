"""core/schema.py: what the grammar is built from, the check of a finished answer, and OpenAI's strict mode."""

from __future__ import annotations

from typing import Any

import llguidance
import pytest

from distilgpt2_api.core.schema import check_problem, prepare_schema, strict_problem

CAPITAL = {
    "type": "object",
    "properties": {"country": {"type": "string"}, "population_millions": {"type": "number"}},
    "required": ["country", "population_millions"],
}


def test_the_grammar_writes_a_valid_subset_closed_objects_and_bounded_numbers() -> None:
    grammar = prepare_schema(CAPITAL).grammar_schema
    assert grammar["additionalProperties"] is False  # not said: only the listed keys are written
    number = grammar["properties"]["population_millions"]
    assert number["minimum"] == -(10**15 - 1) and number["maximum"] == 10**15 - 1 and number["multipleOf"] == 1e-9
    assert grammar["x-guidance"]["coerce_one_of"] and grammar["x-guidance"]["lenient"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
        {"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {}}},
        {"type": "integer", "minimum": 10**20},
        {"type": "number", "enum": [1.5, 2.25]},
    ],
    ids=["open-object", "pattern-properties", "own-bound", "enum"],
)
def test_what_the_schema_says_itself_is_kept(schema: dict[str, Any]) -> None:
    grammar = prepare_schema(schema).grammar_schema
    assert {key: grammar[key] for key in schema} == schema
    assert "maximum" not in grammar and "multipleOf" not in grammar  # nothing added beside them
    assert "additionalProperties" not in grammar or "additionalProperties" in schema


def test_unknown_formats_and_unreadable_patterns_are_left_out_of_the_grammar_only() -> None:
    schema = {
        "type": "object",
        "properties": {"b": {"type": "string", "format": "byte"}, "w": {"type": "string", "pattern": "^(?!x)\\w+$"}},
        "required": ["b", "w"],
    }
    grammar = prepare_schema(schema).grammar_schema["properties"]
    assert grammar["b"] == {"type": "string"} and grammar["w"] == {"type": "string"}
    check = prepare_schema(schema).check
    assert check('{"b": "anything", "w": "ok"}') is None
    assert "does not match" in (check('{"b": "anything", "w": "xy"}') or "")  # the check holds the look-ahead


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"country": "F", "population_millions": 2}', None),
        ('{"country": "F", "population_millions": 2, "country": "G"}', "repeated"),
        ('{"country": "F"}', "required"),
        ('{"country": "F", "population_millions"', "not JSON"),
    ],
)
def test_the_check_of_a_finished_answer(text: str, words: str | None) -> None:
    problem = prepare_schema(CAPITAL).check(text)
    assert problem is None if words is None else words in (problem or ""), problem


def test_a_schema_without_its_draft_is_read_as_draft_7_when_it_uses_its_keywords() -> None:
    check = prepare_schema({"type": "object", "dependencies": {"a": ["b"]}}).check
    assert check('{"a": 1}') is not None and check('{"a": 1, "b": 2}') is None


def test_a_pattern_neither_the_mask_nor_the_check_can_read_is_refused() -> None:
    assert "cannot be read" in (check_problem({"type": "string", "pattern": "(a"}) or "")
    assert check_problem({"type": "string", "pattern": "^(?!x)"}) is None  # a look-ahead: the check reads it
    assert check_problem({"type": "string", "pattern": "^(?<major>\\d+)$"}) is None  # JavaScript's named group


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (CAPITAL | {"additionalProperties": False}, None),
        ({"type": "array"}, "root schema must be an object"),
        (CAPITAL, "additionalProperties"),
        (CAPITAL | {"additionalProperties": False, "required": ["country"]}, "population_millions"),
        (
            {
                "type": "object",
                "properties": {"inner": {"$ref": "#/$defs/inner"}},
                "required": ["inner"],
                "additionalProperties": False,
                "$defs": {"inner": {"type": "object", "properties": {"x": {"type": "string"}}}},
            },
            "/$defs/inner",
        ),
    ],
    ids=["strict", "root-array", "open-object", "optional-property", "nested"],
)
def test_strict_mode_as_openai_documents_it(schema: dict[str, Any], words: str | None) -> None:
    problem = strict_problem(schema)
    assert problem is None if words is None else words in (problem or ""), problem


def test_a_schema_the_check_cannot_apply_flags_the_answer_instead_of_failing() -> None:
    check = prepare_schema({"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}}).check
    assert "could not be checked" in (check('{"a": 1}') or "")


def test_a_schema_a_ref_reaches_inside_a_container_and_a_doubles_range_compile() -> None:
    """From SchemaStore (venvironment-basic-schema): definitions holding `{"full": schema}` reached by
    `#/definitions/x/full`, a look-ahead pattern there, and a number bounded by the largest double."""
    schema = {
        "definitions": {
            "name": {"full": {"type": "string", "anyOf": [{"pattern": "^(?!.*[<>]).*\\.blf$"}]}},
            "step": {"type": "number", "minimum": 0, "maximum": 1.7976931348623157e308},
        },
        "type": "object",
        "properties": {"file": {"$ref": "#/definitions/name/full"}, "step": {"$ref": "#/definitions/step"}},
        "required": ["file", "step"],
    }
    prepared = prepare_schema(schema)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(prepared.grammar_schema)
    assert llguidance.LLMatcher.validate_grammar(grammar) == ""
    assert prepared.check('{"file": "<x>.blf", "step": 1}') is not None  # the look-ahead, left to the check
    assert prepared.check('{"file": "x.blf", "step": 1.5}') is None
