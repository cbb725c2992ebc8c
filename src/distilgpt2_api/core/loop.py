"""Continuous batching on a step-level engine: one worker thread runs the step loop and owns the KV slots.

Every step:

1. ends the requests whose client left or whose time budget ran out (their slots free at once);
2. admits waiting requests, oldest first, while their sequences fit in `max_batch_size` and the engine's
   slots (a request that does not fit yet blocks the ones behind it: none starves);
3. reads prompts: at most `prefill_chunk_tokens` prompt tokens in all, oldest admitted request first, each
   prompt in a `forward` call of its own (prompts read together changed greedy answers; read alone, then
   decoded together, they did not). A long prompt takes several steps, so a step costs at most one such
   chunk besides the decode: running streams wait at most that long between tokens. A prompt whose last
   chunk is read gives its request's first token(s); with `n` sequences it is read once and copied;
4. decodes: one `forward` with one token for every running sequence, each then sampled with its own
   parameters and generator (core/sampling.py) and fed to its `Sequence`, which may end it. A sequence
   whose request has a grammar chooses only among the tokens its `Constraint` allows (core/grammar.py),
   and ends when the grammar is complete.

A sequence that ends gives its slot back at once, as a prefix-cache entry (core/slots.py): a later prompt
sharing its beginning (a system prompt, a conversation so far) computes only the rest, and reports the
tokens it reused in `Timings.cached_tokens`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from distilgpt2_api.core.errors import DeadlineExceeded
from distilgpt2_api.core.grammar import GRAMMAR_CACHE_SIZE, Constraint
from distilgpt2_api.core.sampling import Sampler
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.core.sequence import Sequence
from distilgpt2_api.core.slots import SlotPool
from distilgpt2_api.core.stream import Sink
from distilgpt2_api.core.validation import EmbeddingLimits, Limits, Validator, ValidRequest
from distilgpt2_api.engines.base import Chunk, StepEngine, TokenStep

logger = logging.getLogger(__name__)

PREFILL_CHUNK_TOKENS = 256  # prompt tokens read per step, all prompts together


class Phase(Enum):
    """Where an admitted request is (llama.cpp's server names its slots' states the same way)."""

    WAITING = "waiting"  # admitted, no slot yet
    PROMPT = "prompt"  # its slots placed, its prompt being read a chunk a step
    GENERATING = "generating"  # its sequences decode a token a step
    DONE = "done"  # ended (every sequence finished, an error, or its client left); its slots are free


@dataclass
class _Row:
    """One sequence of a running request."""

    choice: int
    sequence: Sequence
    sampler: Sampler
    constraint: Constraint | None = None  # the request's grammar, where this sequence is in it
    slot: int | None = None  # the KV slot it holds, while it holds one
    next_token: int | None = None  # chosen, not yet fed to the model

    def choose(self, logits: np.ndarray) -> TokenStep:
        """The next token after `logits`, within the grammar if there is one."""
        if self.constraint is None:
            return self.sampler.sample(logits)
        step = self.sampler.sample(logits, self.constraint.allowed(logits.size))
        self.constraint.advance(step.token_id)
        return step

    @property
    def decoding(self) -> bool:
        return self.next_token is not None and not self.sequence.finished


@dataclass
class _Request:
    """An admitted request: its sequences, and how much of its prompt its first slot holds."""

    sink: Sink
    rows: list[_Row]
    phase: Phase = Phase.WAITING
    read: int = 0  # prompt tokens in its first slot
    slots: tuple[int, ...] = field(default=())

    @property
    def valid(self) -> ValidRequest:
        return self.sink.request

    @property
    def prompt(self) -> tuple[int, ...]:
        return self.sink.request.prompt_ids

    @property
    def reading(self) -> bool:
        return self.phase in (Phase.WAITING, Phase.PROMPT)

    @property
    def live_rows(self) -> list[_Row]:
        return [row for row in self.rows if not row.sequence.finished]


class StepScheduler(Scheduler):
    """Runs requests on a `StepEngine` with continuous batching, per-sequence sampling and prefix caching."""

    def __init__(
        self,
        engine: StepEngine,
        *,
        max_batch_tokens: int | None = None,
        max_batch_size: int = 8,
        prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS,
        prefix_cache_slots: int | None = None,
        grammar_cache_size: int = GRAMMAR_CACHE_SIZE,
        any_model_name: bool = False,
    ) -> None:
        limits = Limits(
            grammar=True,
            token_rules=True,
            max_batch_tokens=max_batch_tokens,
            max_sequences=engine.slots,
            any_model_name=any_model_name,
            embeddings=EmbeddingLimits.of(engine),
        )
        validator = Validator(engine.info, engine.tokenizer, limits, grammar_cache_size=grammar_cache_size)
        super().__init__(validator, engine.kernels)
        self.engine = engine
        self.max_batch_size = max(1, min(max_batch_size, engine.slots))  # sequences decoded together
        self.prefill_chunk_tokens = max(1, prefill_chunk_tokens)
        self._pool = SlotPool(engine, cache_entries=prefix_cache_slots)
        self._looping = False  # a worker turn is running the loop, or queued to (guarded by _lock)
        self._active: list[_Request] = []  # the worker's own; admission order

    def _enqueue(self, sink: Sink) -> None:
        with self._lock:
            self._waiting.append(sink)
            if self._looping:
                return
            self._looping = True
        self._executor.submit(self._run)

    # The worker thread from here on.

    def _run(self) -> None:
        """Step until nothing is waiting or running."""
        while True:
            with self._lock:
                if not self._waiting and not self._active:
                    self._looping = False
                    return
            try:
                self.step()
            except Exception as error:  # a fault of the loop itself: its requests get it, the loop goes on
                logger.exception("the generation loop failed")
                for request in list(self._active):
                    self._end(request, error, keep=False)

    def step(self) -> None:
        """One step of the loop (on the worker thread): schedule, then execute and update."""
        self._retire_gone()
        self._admit()
        self._read_prompts()
        self._decode()

    def _retire_gone(self) -> None:
        """End the requests whose client left or whose time ran out."""
        now = time.monotonic()
        for request in list(self._active):
            deadline = request.valid.deadline
            if request.sink.cancelled.is_set():
                self._end(request)
            elif deadline is not None and now >= deadline:
                if request.reading:
                    self._end(request, DeadlineExceeded("the request's time budget ran out before its prompt was read"))
                else:
                    for row in request.live_rows:
                        row.sequence.finish("time_limit")
                        self._publish(request, row)

    def _admit(self) -> None:
        """Admit waiting requests, oldest first, while their sequences fit (one with more than `max_batch_size`
        runs alone)."""
        running = sum(len(request.live_rows) for request in self._active)
        while True:
            with self._lock:
                if not self._waiting:
                    break
                sink = self._waiting[0]
                deadline = sink.request.deadline
                gone = sink.cancelled.is_set() or (deadline is not None and time.monotonic() >= deadline)
                if not gone and running > 0 and running + sink.request.sequences > self.max_batch_size:
                    break  # it waits for room (alone, it may have more), and everything behind it too
                self._waiting.popleft()
            if sink.cancelled.is_set():
                sink.end()
            elif gone:
                sink.end(DeadlineExceeded("the request's time budget ran out while it waited for the model"))
            else:
                try:
                    request = self._request(sink)
                except Exception as error:  # noqa: BLE001 - taken from the queue, not yet active: it ends here
                    sink.end(error)
                    continue
                self._active.append(request)
                running += sink.request.sequences
        self._running = tuple(request.sink for request in self._active)
        for request in self._active:
            request.sink.timings.batch_size = max(request.sink.timings.batch_size, running)

    def _request(self, sink: Sink) -> _Request:
        valid = sink.request
        sink.timings.started = time.perf_counter()
        info = self.engine.info
        rows = [
            _Row(
                choice,
                Sequence.for_request(self.engine.tokenizer, valid, info.eos_token_ids),
                Sampler(
                    valid.sampling,
                    history=valid.prompt_ids,
                    sequence=choice,
                    logprobs=valid.logprobs,
                    rules=valid.rules,
                    eos_token_ids=info.eos_token_ids,
                ),
                None if valid.grammar is None else valid.grammar.constraint(),
            )
            for choice in range(valid.sequences)
        ]
        return _Request(sink, rows)

    def _read_prompts(self) -> None:
        """Read up to `prefill_chunk_tokens` prompt tokens, each prompt in a forward call of its own."""
        budget = self.prefill_chunk_tokens
        for request in [r for r in self._active if r.reading]:
            if budget <= 0:
                break
            try:
                budget -= self._read_chunk(request, budget)
            except Exception as error:  # noqa: BLE001 - the request gets it, through its stream
                self._end(request, error, keep=False)

    def _read_chunk(self, request: _Request, budget: int) -> int:
        """Feed the next piece of `request`'s prompt; after its last one, choose its first tokens. Returns the
        prompt tokens fed."""
        if request.phase is Phase.WAITING:
            placement = self._pool.place(request.prompt, len(request.rows))
            request.slots, request.read, request.phase = placement.slots, placement.reused, Phase.PROMPT
            for row, slot in zip(request.rows, placement.slots, strict=True):
                row.slot = slot
            request.sink.timings.cached_tokens = placement.reused
        first = request.slots[0]
        chunk = request.prompt[request.read : request.read + budget]
        logits = self.engine.forward([Chunk(first, chunk, request.read)])
        self._pool.fed(first, chunk)
        request.read += len(chunk)
        if request.read == len(request.prompt):
            request.phase = Phase.GENERATING
            for slot in request.slots[1:]:
                self._pool.copy(first, slot, len(request.prompt))
            for row in request.rows:
                self._choose(request, row, row.choose(logits[0]))
        return len(chunk)

    def _decode(self) -> None:
        """One token for every running sequence, in one forward call."""
        rows = [(request, row) for request in self._active for row in request.rows if row.decoding]
        if not rows:
            return
        try:
            moved = self._pool.gather([row.slot for _, row in rows if row.slot is not None])
        except Exception as error:  # noqa: BLE001 - the engine failed to copy a slot: every request here gets it
            for request in {id(request): request for request, _ in rows}.values():
                self._end(request, error, keep=False)
            return
        for _, row in rows:
            row.slot = moved.get(row.slot, row.slot) if row.slot is not None else None
        chunks = []
        for _, row in rows:
            assert row.next_token is not None and row.slot is not None  # a decoding row holds both
            chunks.append(Chunk(row.slot, (row.next_token,), len(self._pool.tokens(row.slot))))
        try:
            logits = self.engine.forward(chunks)
        except Exception as error:  # noqa: BLE001 - every request in the call gets it
            for request in {id(request): request for request, _ in rows}.values():
                self._end(request, error, keep=False)
            return
        for index, (request, row) in enumerate(rows):
            if request not in self._active:
                continue  # a mate of this row failed its request just now
            self._pool.fed(chunks[index].slot, chunks[index].token_ids)
            try:
                step = row.choose(logits[index])
            except Exception as error:  # noqa: BLE001 - a grammar that cannot go on: its request fails
                self._end(request, error, keep=False)
                continue
            self._choose(request, row, step)

    def _choose(self, request: _Request, row: _Row, step: TokenStep) -> None:
        """`step` is the next token of `row`: show it, and end the row if it ends there."""
        sequence = row.sequence
        sequence.add(step)
        if row.constraint is not None and row.constraint.done:  # the grammar is complete (or ended with EOS)
            problem = row.constraint.problem()
            if problem is None:
                sequence.finish("stop", grammar_complete=True)  # the answer matches it
            else:
                logger.info("an answer fails its schema's check: %s", problem)
                sequence.finish("schema_violation", grammar_complete=True)
        deadline = request.valid.deadline
        if not sequence.finished and deadline is not None and time.monotonic() >= deadline:
            sequence.finish("time_limit")
        row.next_token = None if sequence.finished else step.token_id
        self._publish(request, row)

    def _publish(self, request: _Request, row: _Row) -> None:
        """Send what `row` released; a row that ended frees its slot, and the last one ends the request."""
        request.sink.publish(row.choice, row.sequence)
        if row.sequence.finished and row.slot is not None:
            self._pool.release(row.slot, keep=True)
            row.slot = None
        if all(r.sequence.finished for r in request.rows):
            self._end(request)

    def _end(self, request: _Request, error: BaseException | None = None, *, keep: bool = True) -> None:
        """`request` is over (or failed with `error`): free its slots and take it out of the loop."""
        request.phase = Phase.DONE
        for row in request.rows:
            if row.slot is not None:
                slot, row.slot = row.slot, None
                try:
                    self._pool.release(slot, keep=keep)
                except Exception:  # noqa: BLE001 - the engine could not even empty it; the request still ends
                    logger.exception("could not free KV slot %d", slot)
        if request in self._active:
            self._active.remove(request)
            self._running = tuple(r.sink for r in self._active)
        request.sink.end(error)
