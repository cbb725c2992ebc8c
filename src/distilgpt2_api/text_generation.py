"""The tutorial's Python entry point, for notebooks and scripts:

    from distilgpt2_api.text_generation import TextGenerator
    TextGenerator().generate("Once upon a time", max_new_tokens=50, num_return_sequences=1)

A synchronous facade over the served engine: settings from the environment (MODEL_DIR, ENGINE, ...),
the model loaded once per process, and the same generation as the tutorial's `GET /{prompt}`.
"""

from __future__ import annotations

from functools import lru_cache

from distilgpt2_api.core.request import DEFAULT_MAX_NEW_TOKENS, tutorial_request
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.http_api.app_factory import load_scheduler
from distilgpt2_api.http_api.native.protocol import with_prompt
from distilgpt2_api.settings import get_settings


@lru_cache(maxsize=1)
def _shared_scheduler() -> Scheduler:
    return load_scheduler(get_settings())


class TextGenerator:
    """Sampled continuations (top-k 50), each returned with its prompt, as the tutorial's pipeline did."""

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self.scheduler = scheduler or _shared_scheduler()

    def generate(
        self, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, num_return_sequences: int = 1
    ) -> list[str]:
        """`num_return_sequences` texts, each `prompt` followed by up to `max_new_tokens` new tokens."""
        result = self.scheduler.generate_blocking(tutorial_request(prompt, max_new_tokens, num_return_sequences))
        return with_prompt(prompt, result.completions)
