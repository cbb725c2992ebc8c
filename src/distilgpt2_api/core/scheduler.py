"""Requests queue for the model; one thread runs them, batching the compatible ones.

Every request runs as a stream of deltas (text as it becomes final, token by token); a plain response is
the same stream collected. Closing a stream early cancels its generation within a token.

When the model frees up, the worker takes the oldest waiting request and, up to `max_batch_size`
sequences, every later one that may share its engine call (core/batch.py); the rest wait for the next
call, in arrival order, so none starves. With `max_batch_size` 1, requests run one at a time.

Clients whose answers came back together send their next requests a moment apart: the first would
start alone and the others wait for all of it. So after a call that served several requests, the
worker waits up to `batch_wait_seconds` for as many to be waiting again. After a call that served one
(one client, or Lambda) it never waits.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from distilgpt2_api.core.admission import MAX_ALTERNATIVES_STEPS, SchedulerBase
from distilgpt2_api.core.batch import compatible, run_batch
from distilgpt2_api.core.errors import DeadlineExceeded
from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.sequence import Delta
from distilgpt2_api.core.stream import GenerationResult, GenerationStream, Sink, gather
from distilgpt2_api.engines import Engine

__all__ = ["BATCH_WAIT_SECONDS", "MAX_ALTERNATIVES_STEPS", "Scheduler"]

BATCH_WAIT_SECONDS = 0.01  # a client's next request follows its answer within a few ms on a network


class Scheduler(SchedulerBase):
    """Runs requests on an engine.

    Generation is CPU-bound and an engine already spreads one generation over every configured core,
    so one worker thread runs one engine call at a time: the event loop stays free and concurrent
    requests never oversubscribe cores. Concurrent requests share that call when they can.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_tokens: int | None = None,
        max_batch_size: int = 1,
        batch_wait_seconds: float = BATCH_WAIT_SECONDS,
    ) -> None:
        super().__init__(engine.info, engine.tokenizer, engine.kernels, max_batch_tokens=max_batch_tokens)
        self.engine = engine
        self.max_batch_size = max_batch_size if engine.batching else 1  # sequences per engine call
        self.batch_wait_seconds = batch_wait_seconds
        self._last_batch_requests = 1
        # One thread; the executor joins it at interpreter exit, before engines close (engines/ctranslate2_engine).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    def stream(self, request: GenerationRequest) -> GenerationStream:
        """Validate `request` (InvalidRequest now, before anything is sent) and queue it; iterate for its deltas.

        Call from the event loop. The caller must iterate to the end or `aclose` the stream.
        """
        stream = GenerationStream(self._job(request))
        with self._lock:
            self._waiting.append(stream.sink)
            self._lock.notify()
        self._executor.submit(self._run_next)  # one turn per request: a turn may find it already served
        return stream

    def generate_blocking(self, request: GenerationRequest) -> GenerationResult:
        """Generate on the calling thread, alone (scripts, notebooks, benchmarks)."""
        job = self._job(request)
        deltas: list[Delta] = []
        outcome: list[BaseException | None] = []
        sink = Sink(job, lambda item: deltas.append(item) if isinstance(item, Delta) else outcome.append(item))
        self._start([sink])
        if outcome and outcome[0] is not None:
            raise outcome[0]
        return gather(job, deltas, sink.timings)

    def _run_next(self) -> None:
        """On the worker thread: run the oldest waiting request, with what may share its engine call."""
        with self._lock:
            if self.max_batch_size > 1 and self._last_batch_requests > 1 and self._waiting:
                # The last call served several clients: give their next requests a moment to arrive.
                expected = self._last_batch_requests
                self._lock.wait_for(lambda: len(self._waiting) >= expected, timeout=self.batch_wait_seconds)
            batch = self._take()
            if batch:
                self._last_batch_requests = len(batch)
        if batch:
            self._start(batch)

    def _take(self) -> list[Sink]:
        """The next batch: the oldest live request, then later compatible ones while they fit."""
        while self._waiting and self._waiting[0].cancelled.is_set():
            self._waiting.popleft().end()
        if not self._waiting:
            return []
        first = self._waiting.popleft()
        batch, rows = [first], first.job.tokens.n
        tokens = _tokens(first)
        for sink in list(self._waiting):
            if rows >= self.max_batch_size:
                break
            fits = rows + sink.job.tokens.n <= self.max_batch_size
            within_budget = self.max_batch_tokens is None or tokens + _tokens(sink) <= self.max_batch_tokens
            if fits and within_budget and not sink.cancelled.is_set() and compatible(first.job, sink.job):
                self._waiting.remove(sink)
                batch.append(sink)
                rows += sink.job.tokens.n
                tokens += _tokens(sink)
        return batch

    def _start(self, batch: list[Sink]) -> None:
        """Run `batch` on this thread, less the requests whose time budget ran out while they waited."""
        now = time.monotonic()
        live = []
        for sink in batch:
            deadline = sink.job.request.deadline
            if deadline is not None and now >= deadline:
                sink.end(DeadlineExceeded("the request's time budget ran out while it waited for the model"))
            elif sink.cancelled.is_set():
                sink.end()
            else:
                live.append(sink)
        if live:
            self._running = tuple(live)
            try:
                run_batch(self.engine, live)
            finally:
                self._running = ()


def _tokens(sink: Sink) -> int:
    """What a request holds in memory while it generates: sequences x (prompt + new tokens)."""
    job = sink.job
    return job.tokens.n * (job.prompt_tokens + job.request.max_new_tokens)
