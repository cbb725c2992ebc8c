"""The default engine (llama.cpp, a step engine) made slow, failing or held, for the tests of what the service does
around it: time budgets, clients that leave, errors, load.

The step loop calls `engine.forward(chunks)` once per prompt chunk it reads and once per decode step of all running
sequences (core/loop.py); every stand-in here wraps that one call. Reach the engine as `app.state.scheduler.engine`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from distilgpt2_api.engines.base import Chunk, StepCallback, StepEngine, TokenRequest, TokenStep

STEP_SECONDS = 0.05


def slow_down(engine: Any, monkeypatch: pytest.MonkeyPatch, seconds: float = STEP_SECONDS) -> None:
    """Make every step of `engine` (a prompt chunk read, or one decode step: one more token for each running
    sequence) take at least `seconds` more: a deliberately slowed model. A whole-job engine (CTranslate2,
    transformers: `generate`, no `forward`) is slowed the same way, each token it passes on `seconds` later."""
    if not isinstance(engine, StepEngine):
        _slow_down_whole_jobs(engine, monkeypatch, seconds)
        return
    forward = engine.forward

    def slow_forward(chunks: Sequence[Chunk]) -> np.ndarray:
        time.sleep(seconds)
        return forward(chunks)

    monkeypatch.setattr(engine, "forward", slow_forward)


def _slow_down_whole_jobs(engine: Any, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    generate = engine.generate

    def slow_generate(jobs: Sequence[TokenRequest], on_step: StepCallback) -> None:
        def slow_step(step: TokenStep) -> bool:
            time.sleep(seconds)
            return on_step(step)

        generate(jobs, slow_step)

    monkeypatch.setattr(engine, "generate", slow_generate)


def fail_after(engine: Any, monkeypatch: pytest.MonkeyPatch, steps: int, message: str) -> Callable[[], None]:
    """Make `engine` raise RuntimeError(message) from its calls after its first `steps` (0: at once, before any
    token). A request's prompt read is one call and gives its first token, each decode step one more: with
    `steps` = k, a lone request gets its first k tokens out before the failure. Returns what starts the count
    again, for the next request."""
    forward = engine.forward
    calls = 0

    def failing_forward(chunks: Sequence[Chunk]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls > steps:
            raise RuntimeError(message)
        return forward(chunks)

    def rearm() -> None:
        nonlocal calls
        calls = 0

    monkeypatch.setattr(engine, "forward", failing_forward)
    return rearm


def wait_until_idle(scheduler: Any, timeout: float) -> float:
    """Wait until `scheduler` runs no request (at most `timeout` seconds); the seconds it took."""
    started = time.monotonic()
    while scheduler.running and time.monotonic() - started < timeout:
        time.sleep(0.01)
    return time.monotonic() - started


def hold(engine: Any, monkeypatch: pytest.MonkeyPatch, gate: threading.Event, timeout: float = 30) -> None:
    """Make every call of `engine` wait until `gate` is set (at most `timeout` seconds): the requests it runs stay
    running, and the ones that do not fit wait."""
    forward = engine.forward

    def held_forward(chunks: Sequence[Chunk]) -> np.ndarray:
        gate.wait(timeout=timeout)
        return forward(chunks)

    monkeypatch.setattr(engine, "forward", held_forward)
