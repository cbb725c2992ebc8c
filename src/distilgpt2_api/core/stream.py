"""One request's results as they come: deltas on the event loop, its timings, whole completions at the end."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from distilgpt2_api.core.sequence import Delta, FinishReason, GeneratedToken, Sequence
from distilgpt2_api.core.validation import ValidRequest


@dataclass(frozen=True)
class Completion:
    """One generated continuation (without the prompt)."""

    text: str
    finish_reason: FinishReason
    completion_tokens: int
    tokens: tuple[GeneratedToken, ...] = ()  # the visible tokens, with their logprobs when asked for
    stop_sequence: str | None = None  # the stop string that ended it (finish_reason `stop`), if one did


@dataclass(frozen=True)
class GenerationResult:
    completions: list[Completion]
    prompt_tokens: int
    seed: int | None  # the caller's seed, when sampling with one
    timings: Timings

    @property
    def completion_tokens(self) -> int:
        return sum(completion.completion_tokens for completion in self.completions)


@dataclass
class Timings:
    """Where a request's time went (time.perf_counter() readings), for Server-Timing and logs."""

    submitted: float
    started: float | None = None  # its batch began
    first_token: float | None = None
    ended: float | None = None
    batch_size: int = 1  # sequences in its batch (continuous batching: the most it generated beside)
    cached_tokens: int = 0  # prompt tokens whose KV the prefix cache already held (not computed again)

    @property
    def queued_seconds(self) -> float:
        return (self.started or self.submitted) - self.submitted

    @property
    def generating_seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.perf_counter()) - self.started


class Sink:
    """Where the generating thread puts one request's deltas and its end; read as a `GenerationStream`."""

    def __init__(self, request: ValidRequest, deliver: Callable[[Delta | BaseException | None], None]) -> None:
        self.request = request
        self.timings = Timings(submitted=time.perf_counter())
        self.cancelled = threading.Event()
        self._deliver = deliver

    def delta(self, delta: Delta) -> None:
        if self.timings.first_token is None:
            self.timings.first_token = time.perf_counter()
        self._deliver(delta)

    def publish(self, choice: int, sequence: Sequence) -> None:
        """Send what `sequence` (choice `choice`) released since its last delta, if anything; a greedy request's
        one sequence goes to every choice it stands for (`ValidRequest.copies`)."""
        delta = sequence.take(choice)
        if delta is None:
            return
        if self.request.copies == 1:
            self.delta(delta)
        else:
            for copy in range(self.request.copies):
                self.delta(replace(delta, index=copy))

    def end(self, error: BaseException | None = None) -> None:
        """The request is over: every sequence finished, or `error`. Only the first call counts."""
        if self.timings.ended is not None:
            return
        self.timings.ended = time.perf_counter()
        self._deliver(error)


class GenerationStream:
    """The deltas of one request, as the model produces them; `aclose` (or the client leaving) cancels it."""

    def __init__(self, request: ValidRequest) -> None:
        self.request = request
        self._queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def deliver(item: Delta | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # its event loop is closed: nobody is listening any more
                self.sink.cancelled.set()

        self.sink = Sink(request, deliver)

    @property
    def timings(self) -> Timings:
        return self.sink.timings

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
        """Stop generating for this request: the model is free of it within a token."""
        self.sink.cancelled.set()

    async def collect(self) -> GenerationResult:
        """Every delta, gathered into whole completions."""
        deltas = [delta async for delta in self]
        return gather(self.request, deltas, self.timings)


class MergedStream:
    """Several requests answered as one (OpenAI's list of prompts): request i's choices follow request i-1's,
    so with `n` each, prompt i's choice j is index i*n + j. Deltas come in the order they are generated."""

    def __init__(self, streams: list[GenerationStream]) -> None:
        self.streams = streams
        self._offsets = [sum(s.request.choices for s in streams[:i]) for i in range(len(streams))]
        # The requests as one: every choice, every prompt token (the first request's prompt, for the log).
        self.request = streams[0].request.merged([s.request for s in streams[1:]])
        self._next: dict[asyncio.Future[Delta], int] = {}
        self._ready: list[Delta] = []
        self._running = list(range(len(streams)))  # the streams whose next delta is not asked for yet

    @property
    def timings(self) -> Timings:
        """From the first submission to the last end; the batch of the largest."""
        all_timings = [s.timings for s in self.streams]
        return Timings(
            submitted=min(t.submitted for t in all_timings),
            started=min((t.started for t in all_timings if t.started is not None), default=None),
            first_token=min((t.first_token for t in all_timings if t.first_token is not None), default=None),
            ended=None if any(t.ended is None for t in all_timings) else max(t.ended or 0.0 for t in all_timings),
            batch_size=max(t.batch_size for t in all_timings),
            cached_tokens=sum(t.cached_tokens for t in all_timings),
        )

    def __aiter__(self) -> MergedStream:
        return self

    async def __anext__(self) -> Delta:
        while not self._ready:
            for i in self._running:
                self._next[asyncio.ensure_future(anext(self.streams[i]))] = i
            self._running = []
            if not self._next:
                raise StopAsyncIteration
            done, _ = await asyncio.wait(self._next, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                i = self._next.pop(future)
                try:
                    delta = future.result()
                except StopAsyncIteration:
                    continue
                self._ready.append(replace(delta, index=self._offsets[i] + delta.index))
                self._running.append(i)
        return self._ready.pop(0)

    async def aclose(self) -> None:
        for future in self._next:
            future.cancel()
        for stream in self.streams:
            await stream.aclose()

    async def collect(self) -> GenerationResult:
        deltas = [delta async for delta in self]
        return gather(self.request, deltas, self.timings)


RequestStream = GenerationStream | MergedStream  # what a route reads: one request's deltas, or several requests'


def gather(request: ValidRequest, deltas: list[Delta], timings: Timings) -> GenerationResult:
    """A request's deltas, in order, as whole completions."""
    texts: list[list[str]] = [[] for _ in range(request.choices)]
    tokens: list[list[GeneratedToken]] = [[] for _ in range(request.choices)]
    ends: list[Delta | None] = [None] * request.choices
    for delta in deltas:
        texts[delta.index].append(delta.text)
        tokens[delta.index].extend(delta.tokens)
        if delta.finish_reason is not None:
            ends[delta.index] = delta
    completions = [
        Completion("".join(text), end.finish_reason, end.completion_tokens, tuple(toks), end.stop_sequence)
        for text, toks, end in zip(texts, tokens, ends, strict=True)
        if end is not None and end.finish_reason is not None
    ]
    return GenerationResult(completions, request.prompt_tokens, request.sampling.seed_in_use, timings)
