"""The one contract between the HTTP surface and generation: validate a request once, schedule it, read its stream.

As text-generation-inference's `Backend`: a `Scheduler` takes a `ValidRequest` (`schedule`) and gives back the
stream of its deltas. Two implement it, one per kind of engine (engines/base.py), and nothing above them knows
which runs: `StepScheduler` (core/loop.py) drives a step engine with continuous batching, `BatchScheduler`
(core/batch.py) hands whole jobs to an engine that generates them per call. What each can take is declared in its
`Limits`, checked by its `Validator`. `scheduler_for` (core/__init__.py) picks one for an engine.

Every request runs as a stream of deltas (text as it becomes final, token by token); a plain response is the
same stream collected. Closing a stream early cancels its generation within a token.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np

from distilgpt2_api.core.chat import ChatTemplate
from distilgpt2_api.core.errors import ChatUnsupported, EmbeddingOnly, EmbeddingsUnsupported
from distilgpt2_api.core.request import EmbeddingRequest, GenerationRequest
from distilgpt2_api.core.sequence import Delta
from distilgpt2_api.core.stream import GenerationResult, GenerationStream, Sink, gather
from distilgpt2_api.core.validation import Validator, ValidEmbedding, ValidRequest
from distilgpt2_api.engines.base import Embedder, Engine, Kernels, ModelInfo, StepEngine, TextTokenizer


class Scheduler(ABC):
    """Runs validated requests on one engine, on one worker thread (generation is CPU-bound and an engine already
    spreads one call over every configured core); requests queue in arrival order."""

    engine: Engine | StepEngine

    def __init__(self, validator: Validator, kernels: Kernels) -> None:
        self.validator = validator
        self.kernels = kernels  # what the engine computes with on this CPU: GET /, /metrics
        self._waiting: deque[Sink] = deque()  # queued requests, oldest first
        self._lock = threading.Condition()  # guards _waiting (and what a scheduler adds to it)
        self._running: tuple[Sink, ...] = ()  # the requests generating, replaced whole (read by monitoring)
        # One thread; the executor joins it at interpreter exit, before engines close (engines/*.py atexit).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        # Embeddings: a thread of their own (the engine's embedding context), requests queued in arrival order here
        # rather than holding the event loop's worker threads.
        self._embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    @abstractmethod
    def _enqueue(self, sink: Sink) -> None:
        """Queue `sink`'s request (any thread): the worker generates it and delivers to the sink."""

    @property
    def info(self) -> ModelInfo:
        return self.validator.info

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.validator.tokenizer

    @property
    def model_name(self) -> str:
        return self.info.name

    @property
    def waiting(self) -> int:
        """Requests queued for the model whose clients are still there: a snapshot, for monitoring."""
        with self._lock:
            return sum(not sink.cancelled.is_set() for sink in self._waiting)

    @property
    def running(self) -> int:
        """Requests generating that have not ended yet: a snapshot, for monitoring."""
        return sum(sink.timings.ended is None for sink in self._running)

    @cached_property
    def chat_template(self) -> ChatTemplate:
        """The model's chat template, compiled once; ChatUnsupported when it has none."""
        info = self.info
        if info.embedding_only:
            raise EmbeddingOnly(info.name)
        if info.chat_template is None:
            raise ChatUnsupported(
                f"model {info.name!r} has no chat template, so it cannot serve chat: use /v1/completions or /generate"
            )
        return ChatTemplate(info.chat_template, dict(info.special_tokens))

    def validate(self, request: GenerationRequest) -> ValidRequest:
        """`request` checked once against the model, the server and the engine (InvalidRequest if it cannot run)."""
        return self.validator.validate(request)

    def validate_embedding(self, request: EmbeddingRequest) -> ValidEmbedding:
        """`request` checked once (InvalidRequest: the engine cannot embed, an input is empty or too long...)."""
        return self.validator.validate_embedding(request)

    async def embed(self, request: ValidEmbedding) -> list[list[float]]:
        """One unit vector per input, in order: the engine's, or its first `dimensions` normalised again. Computed
        on the embedding thread, in the engine's context of its own, while the worker generates."""
        return await asyncio.wrap_future(self._embedder.submit(self.embed_blocking, request))

    def embed_blocking(self, request: ValidEmbedding) -> list[list[float]]:
        """`embed` on the calling thread (scripts, tests)."""
        engine = self.engine
        if not isinstance(engine, Embedder):
            raise EmbeddingsUnsupported()
        vectors = engine.embed(request.token_ids)
        if request.dimensions == engine.embedding_size:
            return vectors
        cut = np.asarray(vectors, dtype=np.float64)[:, : request.dimensions]
        norms = np.linalg.norm(cut, axis=1, keepdims=True)
        return (cut / np.where(norms > 0, norms, 1.0)).astype(np.float32).tolist()

    def schedule(self, request: ValidRequest) -> GenerationStream:
        """Queue `request`; iterate the stream for its deltas. Call from the event loop. The caller must iterate
        to the end or `aclose` the stream."""
        stream = GenerationStream(request)
        self._enqueue(stream.sink)
        return stream

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Validate, generate and collect, without blocking the event loop."""
        stream = self.schedule(self.validate(request))
        try:
            return await stream.collect()
        finally:
            await stream.aclose()

    def generate_blocking(self, request: GenerationRequest) -> GenerationResult:
        """Generate from a thread without an event loop (scripts, notebooks), waiting for the end."""
        valid = self.validate(request)
        deltas: list[Delta] = []
        outcome: list[BaseException | None] = []
        done = threading.Event()

        def deliver(item: Delta | BaseException | None) -> None:
            if isinstance(item, Delta):
                deltas.append(item)
            else:
                outcome.append(item)
                done.set()

        sink = Sink(valid, deliver)
        self._enqueue(sink)
        done.wait()
        if outcome[0] is not None:
            raise outcome[0]
        return gather(valid, deltas, sink.timings)
