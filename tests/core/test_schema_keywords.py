"""Each JSON Schema keyword against the JSON-Schema-Test-Suite (tests/data/json-schema-test-suite): an instance
the suite calls invalid is never an answer that ends with `stop` (the mask never writes it, or the check flags
it), and most valid ones can be written. The per-keyword figures are in docs/API.md (bench/schemas.py prints
them)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from distilgpt2_api.core.grammar import GrammarCache
from distilgpt2_api.engines.base import ModelInfo, TextTokenizer

from schema_corpus import SuiteCase, suite_cases, verdict

CASES = list(suite_cases())


@pytest.fixture(scope="module")
def grammars(model_dir: Path, tokenizer: TextTokenizer) -> GrammarCache:
    return GrammarCache(tokenizer.backend.to_str(), ModelInfo.read(model_dir).eos_token_ids, size=512)


def answer(case: SuiteCase) -> str:
    """The instance as the grammar writes JSON: compact, Python's separators."""
    return json.dumps(case.data, ensure_ascii=False)


def test_the_suite_covers_every_keyword_claimed() -> None:
    keywords = {case.keyword for case in CASES}
    assert {"uniqueItems", "not", "if-then-else", "dependencies", "oneOf", "contains", "format: date-time"} <= keywords
    assert len(CASES) > 500


@pytest.mark.parametrize("keyword", sorted({case.keyword for case in CASES}))
def test_no_invalid_instance_is_an_answer_that_stops(
    grammars: GrammarCache, tokenizer: TextTokenizer, keyword: str
) -> None:
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    seen: Counter[tuple[bool, str]] = Counter()
    for case in (case for case in CASES if case.keyword == keyword):
        outcome = verdict(grammars, encode, case.schema, answer(case))
        seen[(case.valid, outcome)] += 1
        if not case.valid:
            assert outcome != "accepted", f"{case.description}: {answer(case)} would end with stop"
        elif outcome == "flagged" and not (case.keyword.startswith("format") and ":60" in answer(case)):
            # (a leap second, :60, is the exception: rfc3339-validator, which jsonschema uses, knows none; such an
            # answer ends with schema_violation, never with stop, so this errs on the safe side)
            pytest.fail(f"{case.description}: the check refuses the valid {answer(case)}")
    valid = sum(n for (ok, _), n in seen.items() if ok)
    written = seen[(True, "accepted")]
    # Valid instances the mask cannot write: keys out of the schema's order, numbers past the bounds the grammar
    # adds, extra keys of an object that did not ask for them. Never most of them.
    assert valid == 0 or written / valid >= 0.25, (keyword, dict(seen))
