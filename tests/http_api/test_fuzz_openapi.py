"""Schema-driven fuzzing: every operation in the app's own /openapi.json, in-process.

Schemathesis generates valid and invalid requests from the schema; every response must be a
non-5xx and must match what the schema documents for its status (errors use ErrorResponse).

Schemathesis' own pytest loader (`schemathesis.pytest.from_fixture`) fails under pytest 9.2
(it sets `node._nodeid`), so each operation runs as a plain Hypothesis test inside a subtest.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi import FastAPI  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from engine_apps import llamacpp_app  # noqa: E402

EXAMPLES_PER_OPERATION = 100
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,  # generation time varies with max_new_tokens; correctness, not speed, is tested here
    derandomize=True,  # the same examples every run, so a failure reproduces
    database=None,  # nothing written into the work tree
    suppress_health_check=list(HealthCheck),  # large generated prompts are expected here
)
# Reports show parameters verbatim: the default sanitizer hides any name containing "token".
CONFIG = SchemathesisConfig.from_dict({"output": {"sanitization": {"enabled": False}}})
CHECKS = [not_a_server_error, response_schema_conformance]
# Above the app's own time budget (MAX_REQUEST_SECONDS, 25 s), so the app answers before the client gives up.
REQUEST_TIMEOUT_SECONDS = 60


def fuzz_operations(
    app: FastAPI, subtests: pytest.Subtests, labels: set[str] | None = None, examples: int = EXAMPLES_PER_OPERATION
) -> set[str]:
    """Fuzz each operation of `app`'s schema (those in `labels`, else all); the labels fuzzed."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()  # raises if the app's own schema is invalid
        if labels is not None and operation.label not in labels:
            continue
        counts[operation.label] = 0
        # Valid requests exercise generation; invalid ones exercise the 422 handling.
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @settings(FUZZ_SETTINGS, max_examples=examples)
        @given(case=cases)
        def fuzz(case: schemathesis.Case) -> None:
            counts[case.operation.label] += 1
            case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_SECONDS)

        with subtests.test(msg=operation.label):
            started = time.monotonic()
            fuzz()
            print(f"{operation.label}: {counts[operation.label]} examples in {time.monotonic() - started:.1f} s")
    return set(counts)


def test_every_operation_conforms(app: FastAPI, subtests: pytest.Subtests) -> None:
    fuzzed = fuzz_operations(app, subtests)
    assert {"GET /", "GET /{prompt}", "POST /generate", "POST /v1/completions", "GET /v1/models"} <= fuzzed


CONSTRAINED = {
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/responses",
    "POST /generate",
    "POST /generate_stream",
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
}


def test_structured_output_and_tools_conform_on_the_llamacpp_engine(
    long_chat_model_dir: Path, subtests: pytest.Subtests
) -> None:
    """The routes that take response_format, grammar and tools, on the engine that follows them: random schemas,
    regexes and tool definitions get answers or 4xx errors, never a 5xx."""
    app = llamacpp_app(long_chat_model_dir, max_batch_tokens=4096)
    assert fuzz_operations(app, subtests, CONSTRAINED, examples=150) == CONSTRAINED
