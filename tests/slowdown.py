"""Deliberately slowed engines, for time-budget tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from distilgpt2_api.engines import Engine, ctranslate2_engine
from distilgpt2_api.engines.transformers_engine import TransformersEngine


class _SlowClock:
    """A clock that moves 50 ms further on every reading: each CTranslate2 step looks slow."""

    def __init__(self) -> None:
        self.readings = 0

    def monotonic(self) -> float:
        self.readings += 1
        return time.monotonic() + 0.05 * self.readings


def slow_down(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every generated token of `engine` take about 50 ms: a deliberately slowed model."""
    if isinstance(engine, TransformersEngine):
        original: Callable[..., Any] = engine.model.forward

        def slow_forward(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.05)
            return original(*args, **kwargs)

        monkeypatch.setattr(engine.model, "forward", slow_forward)
    else:
        # CTranslate2's forward pass is native code; its per-token callback reads this clock.
        monkeypatch.setattr(ctranslate2_engine, "time", _SlowClock())
