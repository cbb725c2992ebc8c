"""Requests take turns on the model: one at a time, in arrival order, off the event loop.

Every request runs as a stream of deltas (text as it becomes final, token by token); a plain response is
the same stream collected. Closing a stream early cancels its generation within a token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property

from distilgpt2_api.core.chat import ChatTemplate
from distilgpt2_api.core.errors import (
    ChatUnsupported,
    ContextLengthExceeded,
    DeadlineExceeded,
    LogprobsBudgetExceeded,
    TokenBudgetExceeded,
)
from distilgpt2_api.core.request import GenerationRequest, TokenRequest
from distilgpt2_api.core.sequence import Delta, FinishReason, GeneratedToken, Sequence
from distilgpt2_api.engines import Engine
from distilgpt2_api.engines.base import TokenStep

# With alternatives (top logprobs), CTranslate2 keeps every step's full logits until the job ends:
# sequences x max_new_tokens x vocabulary floats. 512 steps of a 50k vocabulary hold about 200 MB.
MAX_ALTERNATIVES_STEPS = 512

Emit = Callable[[Delta], None]


@dataclass(frozen=True)
class Completion:
    """One generated continuation (without the prompt)."""

    text: str
    finish_reason: FinishReason
    completion_tokens: int
    tokens: tuple[GeneratedToken, ...] = ()  # the visible tokens, with their logprobs when asked for


@dataclass(frozen=True)
class GenerationResult:
    completions: list[Completion]
    prompt_tokens: int
    seed: int | None  # the caller's seed, when sampling with one
    seconds: float  # time spent generating

    @property
    def completion_tokens(self) -> int:
        return sum(completion.completion_tokens for completion in self.completions)


@dataclass(frozen=True)
class _Job:
    """A validated request: what the engine computes, and what the sequences need to end it."""

    request: GenerationRequest
    tokens: TokenRequest
    prompt_tokens: int

    @property
    def copies(self) -> int:
        """Greedy decoding gives identical sequences: one is computed and each choice repeats it."""
        return 1 if self.tokens.n == self.request.n else self.request.n


class GenerationStream:
    """The deltas of one request, as the model produces them; `aclose` (or the client leaving) cancels it."""

    def __init__(self, scheduler: Scheduler, job: _Job) -> None:
        self.job = job
        self.seconds = 0.0
        self._queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        self._cancelled = threading.Event()
        loop = asyncio.get_running_loop()

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, delta)

        self._future = loop.run_in_executor(scheduler._executor, scheduler._execute, job, emit, self._cancelled)
        self._future.add_done_callback(self._ended)

    @property
    def prompt_tokens(self) -> int:
        return self.job.prompt_tokens

    def _ended(self, future: asyncio.Future[float]) -> None:
        if future.cancelled():
            self._queue.put_nowait(DeadlineExceeded("generation was cancelled"))
        elif (error := future.exception()) is not None:
            self._queue.put_nowait(error)
        else:
            self.seconds = future.result()
            self._queue.put_nowait(None)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Delta:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # stay exhausted
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        """Stop generating for this request: the model is free again within a token."""
        self._cancelled.set()

    async def collect(self) -> GenerationResult:
        """Every delta, gathered into whole completions."""
        deltas = [delta async for delta in self]
        return _gather(self.job, deltas, self.seconds)


def _gather(job: _Job, deltas: list[Delta], seconds: float) -> GenerationResult:
    """A request's deltas, in order, as whole completions."""
    request = job.request
    texts: list[list[str]] = [[] for _ in range(request.n)]
    tokens: list[list[GeneratedToken]] = [[] for _ in range(request.n)]
    ends: list[Delta | None] = [None] * request.n
    for delta in deltas:
        texts[delta.index].append(delta.text)
        tokens[delta.index].extend(delta.tokens)
        if delta.finish_reason is not None:
            ends[delta.index] = delta
    completions = [
        Completion("".join(text), end.finish_reason, end.completion_tokens, tuple(toks))
        for text, toks, end in zip(texts, tokens, ends, strict=True)
        if end is not None and end.finish_reason is not None
    ]
    sampling = request.sampling
    seed = sampling.seed if sampling.do_sample else None  # a seed means nothing to greedy decoding
    return GenerationResult(completions, job.prompt_tokens, seed, seconds)


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

    def stream(self, request: GenerationRequest) -> GenerationStream:
        """Validate `request` (InvalidRequest now, before anything is sent) and queue it; iterate for its deltas.

        Call from the event loop. The caller must iterate to the end or `aclose` the stream.
        """
        return GenerationStream(self, self._job(request))

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate without blocking the event loop; requests queue in arrival order."""
        stream = self.stream(request)
        try:
            return await stream.collect()
        finally:
            await stream.aclose()

    def generate_blocking(self, request: GenerationRequest) -> GenerationResult:
        """Generate on the calling thread (scripts, notebooks, benchmarks)."""
        job = self._job(request)
        deltas: list[Delta] = []
        seconds = self._execute(job, deltas.append, threading.Event())
        return _gather(job, deltas, seconds)

    def _job(self, request: GenerationRequest) -> _Job:
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
        if request.logprobs and sequences * request.max_new_tokens > MAX_ALTERNATIVES_STEPS:
            raise LogprobsBudgetExceeded(sequences, request.max_new_tokens, MAX_ALTERNATIVES_STEPS)
        job = TokenRequest(
            prompt_ids=tuple(prompt_ids),
            n=sequences,
            max_new_tokens=request.max_new_tokens,
            sampling=sampling,
            logprobs=request.logprobs,
        )
        return _Job(request, job, len(prompt_ids))

    def _execute(self, job: _Job, emit: Emit, cancelled: threading.Event) -> float:
        """Run one job on this thread, emitting deltas as they become final; the seconds spent generating."""
        request = job.request
        if cancelled.is_set():
            return 0.0
        deadline = request.deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the request's time budget ran out while it waited for the model")
        started = time.perf_counter()
        info = self.engine.info
        sequences = [
            Sequence(
                self.engine.tokenizer,
                max_new_tokens=request.max_new_tokens,
                stop=request.stop,
                eos_token_ids=info.eos_token_ids,
            )
            for _ in range(job.tokens.n)
        ]

        def publish(index: int, sequence: Sequence) -> None:
            delta = sequence.take(index)
            if delta is None:
                return
            if job.copies == 1:
                emit(delta)
            else:  # one greedy sequence, every choice a copy
                for copy in range(job.copies):
                    emit(replace(delta, index=copy))

        def on_step(step: TokenStep) -> bool:
            sequence = sequences[step.sequence]
            sequence.add(step)
            if not sequence.finished and deadline is not None and time.monotonic() >= deadline:
                sequence.finish("time_limit")
            publish(step.sequence, sequence)
            return sequence.finished or cancelled.is_set()

        self.engine.generate(job.tokens, on_step)
        if not cancelled.is_set():
            for index, sequence in enumerate(sequences):
                # Ended by the engine without a reason of ours: it reached max_new_tokens.
                sequence.finish("length")
                publish(index, sequence)
        return time.perf_counter() - started
