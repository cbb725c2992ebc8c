"""Whole jobs on an engine that generates them per call (CTranslate2, transformers), batching compatible requests.

When the model frees up, the worker takes the oldest waiting request and, up to `max_batch_size` sequences, every
later one that may share its engine call (`compatible`); the rest wait for the next call, in arrival order, so
none starves. With `max_batch_size` 1, requests run one at a time. A batch reads the weights once per step for
all its sequences: on these memory-bound models, 8 sequences cost little more than one. Each sequence still ends
on its own: its max_new_tokens, stop strings, EOS, its request's deadline or client.

Clients whose answers came back together send their next requests a moment apart: the first would start alone and
the others wait for all of it. So after a call that served several requests, the worker waits up to
`batch_wait_seconds` for as many to be waiting again. After a call that served one (one client, or Lambda) it
never waits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from distilgpt2_api.core.errors import DeadlineExceeded
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.core.sequence import Sequence
from distilgpt2_api.core.stream import Sink
from distilgpt2_api.core.validation import EmbeddingLimits, Limits, Validator, ValidRequest
from distilgpt2_api.engines.base import Engine, TokenStep

BATCH_WAIT_SECONDS = 0.01  # a client's next request follows its answer within a few ms on a network

# CTranslate2 forwards the prompts of a batch at once only up to the shortest one; the rest of each
# longer prompt goes through the decoding loop a token per step. That is slower, and its arithmetic
# differs slightly from a prompt pass: greedy answers changed for 3 of 100 prompts in mixed-length
# batches (distilgpt2-shape, int8; none in equal-length batches; bench/BATCHING.md). So greedy requests
# share a call only with prompts of their own length; sampled ones within this difference.
MAX_PROMPT_SKEW = 32


def compatible(first: ValidRequest, other: ValidRequest) -> bool:
    """Whether `other` may join a batch that `first` opened.

    One engine call has one set of sampling parameters and one logprobs setting. A seed replays one
    request's random draws, which batch mates would consume: seeded requests run alone. Alternatives
    (top logprobs) need the logits rows of each step in order, which prompts of different lengths shift.
    A greedy answer must not depend on its mates: equal prompt lengths only (see MAX_PROMPT_SKEW).
    """
    if first.sampling.seed is not None or other.sampling.seed is not None:
        return False
    if first.logprobs or other.logprobs:  # alternatives: alone
        return False
    skew = abs(first.prompt_tokens - other.prompt_tokens)
    return (
        first.sampling == other.sampling
        and first.logprobs == other.logprobs
        and skew <= (MAX_PROMPT_SKEW if first.sampling.do_sample else 0)
    )


class BatchScheduler(Scheduler):
    """Runs requests on a whole-job `Engine`, one engine call at a time; concurrent requests share a call when
    they can."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_tokens: int | None = None,
        max_batch_size: int = 1,
        batch_wait_seconds: float = BATCH_WAIT_SECONDS,
        any_model_name: bool = False,
    ) -> None:
        limits = Limits(
            grammar=False,  # an engine call decides each step itself: no logits to mask
            max_batch_tokens=max_batch_tokens,
            max_alternatives_steps=engine.max_alternatives_steps,
            any_model_name=any_model_name,
            embeddings=EmbeddingLimits.of(engine),
        )
        super().__init__(Validator(engine.info, engine.tokenizer, limits), engine.kernels)
        self.engine = engine
        self.max_batch_size = max_batch_size if engine.batching else 1  # sequences per engine call
        self.batch_wait_seconds = batch_wait_seconds
        self._last_batch_requests = 1

    def _enqueue(self, sink: Sink) -> None:
        with self._lock:
            self._waiting.append(sink)
            self._lock.notify()
        self._executor.submit(self._run_next)  # one turn per request: a turn may find it already served

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
        batch, rows, tokens = [first], first.request.sequences, first.request.tokens
        budget = self.validator.limits.max_batch_tokens
        for sink in list(self._waiting):
            if rows >= self.max_batch_size:
                break
            fits = rows + sink.request.sequences <= self.max_batch_size
            within_budget = budget is None or tokens + sink.request.tokens <= budget
            if fits and within_budget and not sink.cancelled.is_set() and compatible(first.request, sink.request):
                self._waiting.remove(sink)
                batch.append(sink)
                rows += sink.request.sequences
                tokens += sink.request.tokens
        return batch

    def _start(self, batch: list[Sink]) -> None:
        """Run `batch` on this thread, less the requests whose time budget ran out while they waited."""
        now = time.monotonic()
        live = []
        for sink in batch:
            deadline = sink.request.deadline
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


@dataclass
class _Row:
    """One computed sequence, and the request it belongs to."""

    sink: Sink
    choice: int
    sequence: Sequence


def run_batch(engine: Engine, sinks: list[Sink]) -> None:
    """Generate every request of `sinks` in one engine call, on this thread.

    Each request ends (its sink's `end`) as soon as its own sequences have, not when the batch does.
    """
    started = time.perf_counter()
    rows = [
        _Row(sink, choice, Sequence.for_request(engine.tokenizer, sink.request, engine.info.eos_token_ids))
        for sink in sinks
        for choice in range(sink.request.sequences)
    ]
    for sink in sinks:
        sink.timings.started, sink.timings.batch_size = started, len(rows)
    by_sink = {id(sink): [row for row in rows if row.sink is sink] for sink in sinks}

    def publish(row: _Row) -> None:
        sink = row.sink
        sink.publish(row.choice, row.sequence)
        if all(r.sequence.finished for r in by_sink[id(sink)]):
            sink.end()

    def on_step(step: TokenStep) -> bool:
        row = rows[step.sequence]
        sequence, sink = row.sequence, row.sink
        sequence.add(step)
        deadline = sink.request.deadline
        if not sequence.finished and deadline is not None and time.monotonic() >= deadline:
            sequence.finish("time_limit")
        publish(row)
        return sequence.finished or sink.cancelled.is_set()

    try:
        engine.generate([sink.request.token_request() for sink in sinks], on_step)
    except Exception as error:  # noqa: BLE001 - each request gets it, through its stream
        for sink in sinks:
            sink.end(error)
        return
    for row in rows:
        if not row.sink.cancelled.is_set():
            row.sequence.finish("length")  # ended by the engine without a reason of ours: max_new_tokens
            publish(row)
    for sink in sinks:
        sink.end()
