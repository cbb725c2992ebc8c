"""The core's tests: the tiny GPT-2's metadata and tokenizer, as the schedulers read them."""

from __future__ import annotations

from pathlib import Path

import pytest

from distilgpt2_api.engines.base import ModelInfo, TextTokenizer


@pytest.fixture(scope="module")
def info(model_dir: Path) -> ModelInfo:
    return ModelInfo.read(model_dir)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer(model_dir)
