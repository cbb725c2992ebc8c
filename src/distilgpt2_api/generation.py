"""Text generation on a loaded engine: one request at a time, off the event loop."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

from distilgpt2_api.engines import Engine, GenerationRequest

__all__ = ["Completion", "GenerationRequest", "GenerationResult", "TextGenerator"]

FinishReason = Literal["length", "stop", "eos", "time_limit"]


class RequestTooLarge(ValueError):
    """A request the model cannot take: a 400 with `code`, before any generation."""

    code = "request_too_large"


class ContextLengthExceeded(RequestTooLarge):
    """Prompt tokens plus max_new_tokens do not fit in the model's context window."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: together "
            f"{prompt_tokens + max_new_tokens}, more than the model's context of {context_length} tokens"
        )


class TokenBudgetExceeded(RequestTooLarge):
    """Sequences x (prompt + new tokens) is over MAX_BATCH_TOKENS: it would not fit the memory or the time."""

    code = "token_budget_exceeded"

    def __init__(self, sequences: int, prompt_tokens: int, max_new_tokens: int, budget: int) -> None:
        super().__init__(
            f"{sequences} sampled sequence(s) x ({prompt_tokens} prompt + {max_new_tokens} new tokens) = "
            f"{sequences * (prompt_tokens + max_new_tokens)} tokens, more than this server's budget of {budget} "
            "per request (MAX_BATCH_TOKENS): lower num_return_sequences / n, max_new_tokens or the prompt"
        )


class DeadlineExceeded(RuntimeError):
    """The request's time budget ran out before generation could start (it waited in the queue)."""


@dataclass(frozen=True)
class Completion:
    """One generated continuation (without the prompt)."""

    text: str
    finish_reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True)
class GenerationResult:
    completions: list[Completion]
    prompt_tokens: int
    seed: int | None  # the caller's seed, when sampling with one
    seconds: float  # time spent generating

    @property
    def completion_tokens(self) -> int:
        return sum(completion.completion_tokens for completion in self.completions)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """The text before the earliest stop string, or None if none occurs."""
    positions = [index for index in (text.find(s) for s in stop) if index >= 0]
    return text[: min(positions)] if positions else None


class TextGenerator:
    """Runs generation on an engine.

    Generation is CPU-bound and an engine already spreads one generation over every
    configured core, so requests run one at a time on a single worker thread:
    the event loop stays free and concurrent requests never oversubscribe cores.
    """

    def __init__(self, engine: Engine, *, max_batch_tokens: int | None = None) -> None:
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens  # None: only the context length bounds a request
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    @property
    def model_name(self) -> str:
        return self.engine.info.name

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate without blocking the event loop; requests queue in arrival order."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.generate_blocking, request)

    def generate_blocking(self, request: GenerationRequest) -> GenerationResult:
        """Generate on the calling thread. Call through `generate` when serving."""
        prompt_ids = self.engine.encode(request.prompt)
        context = self.engine.info.context_length
        if len(prompt_ids) + request.max_new_tokens > context:
            raise ContextLengthExceeded(len(prompt_ids), request.max_new_tokens, context)
        max_time = None
        if request.deadline is not None:
            max_time = request.deadline - time.monotonic()
            if max_time <= 0:
                raise DeadlineExceeded("the request's time budget ran out while it waited for the model")
        if not request.do_sample:
            request = replace(request, seed=None)  # a seed means nothing to greedy decoding
        # Greedy decoding gives identical sequences: compute one and repeat it.
        sequences = request.num_return_sequences if request.do_sample else 1
        # Each sequence holds its own copy of the prompt: memory and prefill time grow with the product.
        if self.max_batch_tokens is not None and sequences * (len(prompt_ids) + request.max_new_tokens) > (
            self.max_batch_tokens
        ):
            raise TokenBudgetExceeded(sequences, len(prompt_ids), request.max_new_tokens, self.max_batch_tokens)
        started = time.perf_counter()
        outputs = self.engine.generate(prompt_ids, request, sequences=sequences, max_time=max_time)
        seconds = time.perf_counter() - started
        completions = [self._completion(ids, request) for ids in outputs]
        if not request.do_sample:
            completions = completions * request.num_return_sequences
        return GenerationResult(
            completions=completions, prompt_tokens=len(prompt_ids), seed=request.seed, seconds=seconds
        )

    def _completion(self, new_ids: list[int], request: GenerationRequest) -> Completion:
        ended_by_eos = bool(new_ids) and new_ids[-1] in self.engine.info.eos_token_ids
        generated = new_ids[:-1] if ended_by_eos else new_ids
        text = self.engine.decode(generated)
        cut = _cut_at_stop(text, request.stop)
        if cut is not None:
            return Completion(text=cut, finish_reason="stop", completion_tokens=len(generated))
        if ended_by_eos:
            # The model computed the EOS token too, so it counts as generated.
            return Completion(text=text, finish_reason="eos", completion_tokens=len(generated) + 1)
        # Short of max_new_tokens with no EOS or stop string: only the time budget stops that.
        reason: FinishReason = "length" if len(generated) >= request.max_new_tokens else "time_limit"
        return Completion(text=text, finish_reason=reason, completion_tokens=len(generated))
