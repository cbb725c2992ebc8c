"""Real-world JSON Schemas and JSON-Schema-Test-Suite cases (tests/data, see its README), and how the service's
structured output treats a given JSON text: what the tests and bench/schemas.py share."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilgpt2_api.core.grammar import Grammar, GrammarCache, InvalidGrammar

DATA = Path(__file__).resolve().parent / "data"
SCHEMASTORE = DATA / "schemastore"
SUITE = DATA / "json-schema-test-suite"


def corpus() -> list[tuple[str, dict[str, Any]]]:
    """The real-world schemas, by file name, in name order."""
    return [(path.name, json.loads(path.read_text())) for path in sorted(SCHEMASTORE.glob("*.json"))]


@dataclass(frozen=True)
class SuiteCase:
    keyword: str  # the suite file's name: the keyword it is about
    description: str
    schema: Any
    data: Any
    valid: bool


def suite_cases() -> Iterator[SuiteCase]:
    for path in sorted(SUITE.rglob("*.json")):
        keyword = path.stem if path.parent.name != "format" else f"format: {path.stem}"
        for group in json.loads(path.read_text()):
            for test in group["tests"]:
                description = f"{group['description']}: {test['description']}"
                yield SuiteCase(keyword, description, group["schema"], test["data"], test["valid"])


def verdict(grammars: GrammarCache, encode: Callable[[str], list[int]], schema: Any, text: str) -> str:
    """How structured output treats `text` as an answer to `schema`: "refused" (the schema is), "masked" (the
    grammar never lets it be written), "flagged" (written, then the check fails: schema_violation) or
    "accepted" (finish_reason stop)."""
    try:
        constraint = grammars.constraint(Grammar.json_schema(schema))
    except InvalidGrammar:
        return "refused"
    try:
        for token in encode(text):
            constraint.advance(token)
    except RuntimeError:
        return "masked"
    eos = grammars.eos_token_ids[0]
    if not (constraint.done or constraint.allowed(eos + 1)[eos]):
        return "masked"  # a prefix of an answer, not a whole one
    return "accepted" if constraint.problem() is None else "flagged"
