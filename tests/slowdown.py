"""Deliberately slowed engines, for time-budget tests."""

from __future__ import annotations

import time

import pytest

from distilgpt2_api.core.request import TokenRequest
from distilgpt2_api.engines import Engine
from distilgpt2_api.engines.base import StepCallback, TokenStep

STEP_SECONDS = 0.05


def slow_down(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every generated token of `engine` take at least 50 ms more: a deliberately slowed model."""
    generate = engine.generate

    def slow_generate(job: TokenRequest, on_step: StepCallback) -> None:
        def slow_step(step: TokenStep) -> bool:
            time.sleep(STEP_SECONDS)
            return on_step(step)

        generate(job, slow_step)

    monkeypatch.setattr(engine, "generate", slow_generate)
