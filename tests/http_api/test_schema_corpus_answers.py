"""266 real-world JSON Schemas (SchemaStore, tests/data) as `response_format` on /v1/chat/completions, answered
greedily by the tiny chat model (random weights: only the grammar shapes its answers). Each schema is compiled or
refused naming why; every answer that ends with `stop` is valid against its schema, every one flagged
`schema_violation` is not, and only `length` leaves one unfinished."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from schema_corpus import corpus

CORPUS = corpus()
MAX_TOKENS = 100
Answers = dict[str, tuple[int, dict[str, Any]]]


@pytest.fixture(scope="module")
def answers(chat_app: FastAPI) -> Iterator[Answers]:
    results: Answers = {}
    started = time.perf_counter()
    with TestClient(chat_app, raise_server_exceptions=False) as client:
        for name, schema in CORPUS:
            response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
            response = client.post(
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "Answer in JSON."}],
                    "response_format": response_format,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                },
            )
            results[name] = (response.status_code, response.json())
    print(f"{len(CORPUS)} schemas answered in {time.perf_counter() - started:.1f} s")
    yield results


def errors_of(schema: dict[str, Any], text: str) -> list[str]:
    """What an independent validation finds wrong with `text` (the schema's draft, draft 7 without `$schema`)."""
    pairs: list[list[tuple[str, Any]]] = []
    value = json.loads(text, object_pairs_hook=lambda p: pairs.append(p) or dict(p))
    repeated = [f"repeated key in {p}" for p in pairs if len({k for k, _ in p}) != len(p)]
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)(schema)
    return repeated + [error.message for error in validator.iter_errors(value)]


def test_the_corpus_is_compiled_with_few_refusals_each_naming_why(answers: Answers) -> None:
    refused = {name: body["error"] for name, (status, body) in answers.items() if status != 200}
    assert all(error["code"] == "invalid_grammar" and error["message"] for error in refused.values()), refused
    assert {status for status, _ in answers.values()} <= {200, 400}
    assert len(refused) <= 8, sorted(refused)  # 7 of 266 when measured: llguidance's limits (see docs/API.md)


def test_no_answer_claims_to_be_complete_unless_it_is_valid(answers: Answers) -> None:
    schemas = dict(CORPUS)
    reasons: Counter[str] = Counter()
    for name, (status, body) in answers.items():
        if status != 200:
            continue
        (choice,) = body["choices"]
        reason, text = choice["finish_reason"], choice["message"]["content"]
        reasons[reason] += 1
        if reason == "stop":
            assert errors_of(schemas[name], text) == [], (name, text)
        elif reason == "schema_violation":
            assert errors_of(schemas[name], text), (name, text)
        else:
            assert reason == "length" and body["usage"]["completion_tokens"] == MAX_TOKENS, (name, choice)
    print(dict(reasons))
    # Objects that say nothing of other keys get only theirs and numbers are bounded, so more answers finish than
    # before (measured: 93 of 260 in 100 tokens; 21 of 154 when every object was open, numbers unbounded and 112
    # schemas refused); what a random model still runs on to the limit is a string.
    assert reasons["stop"] + reasons["schema_violation"] >= 0.3 * sum(reasons.values()), dict(reasons)
