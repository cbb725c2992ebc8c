"""Requests take turns on the model: one at a time, in arrival order, off the event loop."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from distilgpt2_api.core.chat import ChatTemplate
from distilgpt2_api.core.errors import ChatUnsupported, ContextLengthExceeded, DeadlineExceeded, TokenBudgetExceeded
from distilgpt2_api.core.request import GenerationRequest, TokenRequest
from distilgpt2_api.core.stop import cut_at_stop
from distilgpt2_api.engines import Engine

FinishReason = Literal["length", "stop", "eos", "time_limit"]


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


class Scheduler:
    """Runs requests on an engine.

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

    @cached_property
    def chat_template(self) -> ChatTemplate:
        """The model's chat template, compiled once; ChatUnsupported when it has none."""
        info = self.engine.info
        if info.chat_template is None:
            raise ChatUnsupported(
                f"model {info.name!r} has no chat template, so it cannot serve chat: use /v1/completions or /generate"
            )
        return ChatTemplate(info.chat_template, dict(info.special_tokens))

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate without blocking the event loop; requests queue in arrival order."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.generate_blocking, request)

    def generate_blocking(self, request: GenerationRequest) -> GenerationResult:
        """Generate on the calling thread. Call through `generate` when serving."""
        tokenizer = self.engine.tokenizer
        prompt_ids = tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens)
        context = self.engine.info.context_length
        if len(prompt_ids) + request.max_new_tokens > context:
            raise ContextLengthExceeded(len(prompt_ids), request.max_new_tokens, context)
        sampling = request.sampling
        # Greedy decoding gives identical sequences: compute one and repeat it.
        sequences = request.n if sampling.do_sample else 1
        # Each sequence holds its own copy of the prompt: memory and prefill time grow with the product.
        tokens = sequences * (len(prompt_ids) + request.max_new_tokens)
        if self.max_batch_tokens is not None and tokens > self.max_batch_tokens:
            raise TokenBudgetExceeded(sequences, len(prompt_ids), request.max_new_tokens, self.max_batch_tokens)
        if request.deadline is not None and time.monotonic() >= request.deadline:
            raise DeadlineExceeded("the request's time budget ran out while it waited for the model")
        started = time.perf_counter()
        job = TokenRequest(
            prompt_ids=tuple(prompt_ids),
            n=sequences,
            max_new_tokens=request.max_new_tokens,
            sampling=sampling,
            stop=request.stop,
            deadline=request.deadline,
        )
        outputs = self.engine.generate(job)
        seconds = time.perf_counter() - started
        completions = [self._completion(ids, request) for ids in outputs]
        if not sampling.do_sample:
            completions = completions * request.n
        seed = sampling.seed if sampling.do_sample else None  # a seed means nothing to greedy decoding
        return GenerationResult(completions=completions, prompt_tokens=len(prompt_ids), seed=seed, seconds=seconds)

    def _completion(self, new_ids: list[int], request: GenerationRequest) -> Completion:
        ended_by_eos = bool(new_ids) and new_ids[-1] in self.engine.info.eos_token_ids
        generated = new_ids[:-1] if ended_by_eos else new_ids
        text = self.engine.tokenizer.decode(generated)
        cut = cut_at_stop(text, request.stop)
        if cut is not None:
            return Completion(text=cut, finish_reason="stop", completion_tokens=len(generated))
        if ended_by_eos:
            # The model computed the EOS token too, so it counts as generated.
            return Completion(text=text, finish_reason="eos", completion_tokens=len(generated) + 1)
        # Short of max_new_tokens with no EOS or stop string: only the time budget stops that.
        reason: FinishReason = "length" if len(generated) >= request.max_new_tokens else "time_limit"
        return Completion(text=text, finish_reason=reason, completion_tokens=len(generated))
