"""Continuous batching on a step-level engine (core/loop.py), against a fake engine that records every call.

The fake's logits are a fixed function of a slot's whole token history, so an answer is right only if the
loop fed each slot exactly its own tokens, whatever ran beside it, and reused or copied KV correctly.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from distilgpt2_api.core import loop as loop_module
from distilgpt2_api.core.errors import DeadlineExceeded, TooManySequences
from distilgpt2_api.core.grammar import Grammar, InvalidGrammar
from distilgpt2_api.core.loop import Phase, StepScheduler
from distilgpt2_api.core.request import GenerationRequest, SamplingParams
from distilgpt2_api.core.sequence import Delta
from distilgpt2_api.core.slots import SlotState
from distilgpt2_api.core.stream import GenerationResult, Sink, gather
from distilgpt2_api.engines.base import Chunk, Kernels, ModelInfo, StepEngine, TextTokenizer

PROMPT_MARK = 7  # prompts here start with a token of their own; the fake can be told to end one at a length


@dataclass
class Call:
    kind: str  # "forward", "truncate", "copy"
    chunks: tuple[Chunk, ...] = ()
    args: tuple[int, ...] = ()


@dataclass
class FakeStepEngine(StepEngine):
    """A `StepEngine` whose next-token logits are a hash of the slot's history; it checks every call."""

    info: ModelInfo
    tokenizer: TextTokenizer
    slots: int = 4
    kernels: Kernels = Kernels("fake", "any", "none", "a test's stand-in", 1)
    calls: list[Call] = field(default_factory=list)
    on_forward: Callable[[int, Sequence[Chunk]], None] | None = None  # (call number, chunks): may block or raise
    end_after: dict[int, int] = field(default_factory=dict)  # a prompt's first token -> EOS at this history length

    def __post_init__(self) -> None:
        self.history: list[list[int]] = [[] for _ in range(self.slots)]
        self.vocab = self.tokenizer.vocab_size
        self.eos = min(self.info.eos_token_ids)
        self.forwards = 0

    def forward(self, chunks: Sequence[Chunk]) -> np.ndarray:
        self.forwards += 1
        if self.on_forward is not None:
            self.on_forward(self.forwards, chunks)
        assert len({c.slot for c in chunks}) == len(chunks), "a slot twice in one call"
        for chunk in chunks:
            assert chunk.token_ids, "an empty chunk"
            assert chunk.start == len(self.history[chunk.slot]), "a chunk not after what its slot holds"
        self.calls.append(Call("forward", tuple(chunks)))
        rows = []
        for chunk in chunks:
            self.history[chunk.slot].extend(chunk.token_ids)
            rows.append(self.logits(self.history[chunk.slot]))
        return np.stack(rows)

    def logits(self, history: list[int]) -> np.ndarray:
        seed = zlib.crc32(np.asarray(history, dtype=np.int64).tobytes())
        row = np.random.default_rng(seed).standard_normal(self.vocab).astype(np.float32) * 3
        row[self.eos] = -1e9
        if history and history[0] in self.end_after and len(history) >= self.end_after[history[0]]:
            row[self.eos] = 1e9
        return row

    def truncate(self, slot: int, length: int) -> None:
        assert length <= len(self.history[slot])
        self.calls.append(Call("truncate", args=(slot, length)))
        del self.history[slot][length:]

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        assert source != target and length <= len(self.history[source])
        self.calls.append(Call("copy", args=(source, target, length)))
        self.history[target] = self.history[source][:length]

    def close(self) -> None:
        pass

    def forwards_of(self) -> list[tuple[Chunk, ...]]:
        return [c.chunks for c in self.calls if c.kind == "forward"]

    def tokens_fed(self) -> int:
        return sum(len(chunk.token_ids) for chunks in self.forwards_of() for chunk in chunks)


@pytest.fixture
def engine(info: ModelInfo, tokenizer: TextTokenizer) -> FakeStepEngine:
    return FakeStepEngine(info, tokenizer)


class Collector:
    """One request's deltas and end, collected on the loop's thread (no event loop needed)."""

    def __init__(self, scheduler: StepScheduler, request: GenerationRequest) -> None:
        self.deltas: list[Delta] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.sink = Sink(scheduler.validate(request), self._deliver)

    def _deliver(self, item: Delta | BaseException | None) -> None:
        if isinstance(item, Delta):
            self.deltas.append(item)
        else:
            self.error = item
            self.done.set()

    def result(self) -> GenerationResult:
        assert self.done.wait(30), "the request never ended"
        if self.error is not None:
            raise self.error
        return gather(self.sink.request, self.deltas, self.sink.timings)

    def texts(self) -> list[tuple[str, str, int]]:
        return [(c.text, c.finish_reason, c.completion_tokens) for c in self.result().completions]


def submit(scheduler: StepScheduler, request: GenerationRequest) -> Collector:
    collector = Collector(scheduler, request)
    scheduler._enqueue(collector.sink)
    return collector


def submit_together(scheduler: StepScheduler, requests: list[GenerationRequest]) -> list[Collector]:
    """Queue `requests` while the worker is held, so the loop finds them all waiting at its first step."""
    gate = threading.Event()
    scheduler._executor.submit(gate.wait)
    collectors = [submit(scheduler, request) for request in requests]
    gate.set()
    return collectors


def prompt(i: int, length: int = 6) -> tuple[int, ...]:
    """A prompt of token ids of its own: its first token marks it (`FakeStepEngine.end_after`)."""
    return (PROMPT_MARK + i, *(100 + 13 * i + j for j in range(length - 1)))


def greedy(i: int, **fields: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt(i), **{"max_new_tokens": 12, **fields})  # type: ignore[arg-type]


@pytest.fixture
def scheduler(engine: FakeStepEngine) -> Iterator[StepScheduler]:
    yield StepScheduler(engine, max_batch_size=4, prefill_chunk_tokens=64, prefix_cache_slots=0)


def alone(engine: FakeStepEngine, request: GenerationRequest) -> list[tuple[str, str, int]]:
    fresh = StepScheduler(replace(engine, calls=[], on_forward=None), max_batch_size=4, prefix_cache_slots=0)
    return submit(fresh, request).texts()


def test_greedy_answers_do_not_depend_on_batch_mates_or_arrival(engine: FakeStepEngine) -> None:
    requests = [greedy(i, max_new_tokens=8 + i) for i in range(6)]
    expected = [alone(engine, r) for r in requests]
    together = StepScheduler(engine, max_batch_size=4, prefix_cache_slots=0)
    assert [c.texts() for c in submit_together(together, requests)] == expected
    staggered = StepScheduler(replace(engine, calls=[]), max_batch_size=3, prefix_cache_slots=0)
    late: list[Collector] = []

    def arrive(call: int, chunks: Sequence[Chunk]) -> None:  # one more request at each of the first calls
        if call < len(requests):
            late.append(submit(staggered, requests[call]))

    staggered.engine.on_forward = arrive  # type: ignore[attr-defined]
    first = submit(staggered, requests[0])
    assert first.texts() == expected[0]
    assert [c.texts() for c in late] == expected[1:]


def test_a_request_arriving_while_others_run_joins_at_the_next_step(
    engine: FakeStepEngine, scheduler: StepScheduler
) -> None:
    joined: list[Collector] = []

    def arrive(call: int, chunks: Sequence[Chunk]) -> None:
        if call == 3:
            joined.append(submit(scheduler, greedy(1, max_new_tokens=3)))

    engine.on_forward = arrive
    running = submit(scheduler, greedy(0, max_new_tokens=20))
    running.result()
    late = joined[0].result()
    assert late.timings.ended is not None and running.sink.timings.ended is not None
    assert late.timings.ended < running.sink.timings.ended  # it did not wait for the long one
    forwards = engine.forwards_of()
    # Call 3 decodes the first request; the next step reads the newcomer's prompt, then decodes both.
    assert [c.token_ids for c in forwards[3]] == [prompt(1)]
    assert len(forwards[4]) == 2
    assert late.timings.batch_size == 2


def test_mixed_sampling_shares_a_batch_and_seeded_answers_do_not_depend_on_it(engine: FakeStepEngine) -> None:
    seeded = [
        GenerationRequest(prompt=prompt(0), max_new_tokens=10, sampling=SamplingParams(True, 0.7, 0.9, seed=11)),
        GenerationRequest(
            prompt=prompt(1), max_new_tokens=10, n=2, sampling=SamplingParams(True, 1.3, top_k=20, seed=5)
        ),
        GenerationRequest(
            prompt=prompt(2),
            max_new_tokens=10,
            sampling=SamplingParams(True, repetition_penalty=1.4, seed=3),
            logprobs=2,
        ),
    ]
    expected = [alone(engine, r) for r in seeded]
    assert expected[1][0] != expected[1][1]  # each sequence of a request draws its own tokens
    mates = [greedy(5), GenerationRequest(prompt=prompt(6), sampling=SamplingParams(True, 2.0))]
    for order in (seeded + mates, mates[::-1] + seeded[::-1]):
        scheduler = StepScheduler(replace(engine, calls=[], slots=8), max_batch_size=8, prefix_cache_slots=0)
        collectors = dict(zip(order, submit_together(scheduler, order), strict=True))
        assert [collectors[r].texts() for r in seeded] == expected
        widths = [len(chunks) for chunks in scheduler.engine.forwards_of()]  # type: ignore[attr-defined]
        assert max(widths) == 6  # every sequence decoded in one call
    with_logprobs = submit(StepScheduler(replace(engine, calls=[])), seeded[2]).result()
    assert all(t.logprob is not None and len(t.top_logprobs) == 2 for t in with_logprobs.completions[0].tokens)


def _slots_of(engine: FakeStepEngine, forward: int) -> set[int]:
    return {chunk.slot for chunk in engine.forwards_of()[forward]}


def test_stop_strings_max_tokens_and_eos_end_one_sequence_while_mates_continue(
    engine: FakeStepEngine, scheduler: StepScheduler
) -> None:
    free_text = alone(engine, greedy(0, max_new_tokens=12))[0][0]
    stop = free_text[len(free_text) // 3 : len(free_text) // 3 + 3]
    engine.end_after = {prompt(2)[0]: len(prompt(2)) + 4}  # EOS as its 5th token
    requests = [greedy(0, max_new_tokens=12, stop=(stop,)), greedy(1, max_new_tokens=3), greedy(2), greedy(3)]
    results = [c.result() for c in submit_together(scheduler, requests)]
    stopped, short, eos, long = (r.completions[0] for r in results)
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert free_text.startswith(stopped.text)
    assert (short.finish_reason, short.completion_tokens) == ("length", 3)
    assert (eos.finish_reason, eos.completion_tokens) == ("eos", 5)
    assert (long.finish_reason, long.completion_tokens) == ("length", 12)
    # Each one's slot leaves the decode calls as soon as it ends; the last one runs on alone.
    decode_widths = [len(chunks) for chunks in engine.forwards_of()[4:]]
    assert decode_widths == sorted(decode_widths, reverse=True)
    assert decode_widths[-1] == 1 and decode_widths[0] == 4
    assert decode_widths.count(4) == 2  # the short one (3 tokens) leaves after 2 decodes


def test_a_client_that_leaves_frees_its_slot_at_once(engine: FakeStepEngine, scheduler: StepScheduler) -> None:
    collectors: list[Collector] = []

    def leave(call: int, chunks: Sequence[Chunk]) -> None:
        if call == 4:
            collectors[0].sink.cancelled.set()

    engine.on_forward = leave
    collectors += submit_together(scheduler, [greedy(0, max_new_tokens=30), greedy(1, max_new_tokens=10)])
    mate = collectors[1].result()
    assert collectors[0].done.wait(5) and collectors[0].error is None
    assert mate.completions[0].completion_tokens == 10
    gone_slot = next(iter(_slots_of(engine, 0)))
    # It left during call 4 (the 2nd decode), whose token it still got; the next step frees its slot.
    assert gone_slot in _slots_of(engine, 3)
    assert all(gone_slot not in _slots_of(engine, i) for i in range(4, len(engine.forwards_of())))
    assert len(collectors[0].deltas) == 3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return time.perf_counter()


def test_a_deadline_ends_its_request_with_what_it_has(
    engine: FakeStepEngine, scheduler: StepScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(loop_module, "time", clock)

    def late(call: int, chunks: Sequence[Chunk]) -> None:
        if call == 5:
            clock.now = 1010.0

    engine.on_forward = late
    timed, queued_too_long, mate = submit_together(
        scheduler,
        [
            greedy(0, max_new_tokens=30, deadline=1005.0),
            greedy(1, deadline=999.0),  # already out of time when the loop sees it
            greedy(2, max_new_tokens=10, deadline=2000.0),
        ],
    )
    result = timed.result()
    assert result.completions[0].finish_reason == "time_limit"
    # Its prompt's token, then calls 3, 4 and 5's: its time ran out during call 5, which ends it there.
    assert result.completions[0].completion_tokens == 4
    with pytest.raises(DeadlineExceeded):
        queued_too_long.result()
    assert mate.result().completions[0].completion_tokens == 10


def test_a_long_prompt_is_read_in_chunks_between_decode_steps(engine: FakeStepEngine) -> None:
    scheduler = StepScheduler(engine, max_batch_size=4, prefill_chunk_tokens=16, prefix_cache_slots=0)
    long_prompt = GenerationRequest(prompt=prompt(1, length=100), max_new_tokens=4)
    reads: list[Collector] = []

    def arrive(call: int, chunks: Sequence[Chunk]) -> None:
        if call == 2:
            reads.append(submit(scheduler, long_prompt))

    engine.on_forward = arrive
    running = submit(scheduler, greedy(0, max_new_tokens=20))
    running.result()
    assert reads[0].texts() == alone(engine, long_prompt)
    forwards = engine.forwards_of()
    running_slot = forwards[0][0].slot
    steps: list[int] = []  # prompt tokens read in each step: a step ends with the decode of the running one
    read = 0
    for chunks in forwards[1:]:
        if any(c.slot == running_slot for c in chunks):
            steps.append(read)
            read = 0
        else:
            read += sum(len(c.token_ids) for c in chunks)
    assert max(steps) == 16 and sum(steps) == 100
    assert steps.count(16) == 6  # 100 tokens: six full chunks, then 4, each while the first stream kept going


def test_a_shared_prefix_is_read_once(engine: FakeStepEngine) -> None:
    scheduler = StepScheduler(engine, max_batch_size=2, prefill_chunk_tokens=64)
    system = tuple(range(200, 240))
    first = GenerationRequest(prompt=(*system, 11, 12, 13), max_new_tokens=5)
    second = GenerationRequest(prompt=(*system, 21, 22), max_new_tokens=5)
    assert submit(scheduler, first).result().timings.cached_tokens == 0
    fed = engine.tokens_fed()
    reused = submit(scheduler, second).result()
    assert reused.timings.cached_tokens == len(system)
    assert engine.tokens_fed() - fed == 2 + 4  # its own two prompt tokens, then 4 decodes
    assert [(c.text, c.finish_reason) for c in reused.completions] == [(t, r) for t, r, _ in alone(engine, second)]
    again = submit(scheduler, second).result()  # the same prompt: all but its last token
    assert again.timings.cached_tokens == len(second.prompt) - 1
    assert again.completions == reused.completions


def test_sequences_of_one_request_read_the_prompt_once(engine: FakeStepEngine, scheduler: StepScheduler) -> None:
    request = GenerationRequest(prompt=prompt(0, length=30), n=3, sampling=SamplingParams(True, seed=1))
    collector = submit(scheduler, request)
    assert len(collector.result().completions) == 3
    copies = [c.args for c in engine.calls if c.kind == "copy"]
    assert len(copies) == 2 and all(length == 30 for _, _, length in copies)
    assert sum(len(c.token_ids) for c in engine.forwards_of()[0]) == 30
    assert collector.texts() == alone(engine, request)


def test_a_running_sequence_shares_its_prefix_with_a_newcomer(engine: FakeStepEngine) -> None:
    scheduler = StepScheduler(engine, max_batch_size=2)
    system = tuple(range(300, 330))
    newcomer = GenerationRequest(prompt=(*system, 1, 2), max_new_tokens=3)
    joined: list[Collector] = []

    def arrive(call: int, chunks: Sequence[Chunk]) -> None:
        if call == 2:
            joined.append(submit(scheduler, newcomer))

    engine.on_forward = arrive
    submit(scheduler, GenerationRequest(prompt=(*system, 5), max_new_tokens=10)).result()
    result = joined[0].result()
    assert result.timings.cached_tokens == len(system)
    assert any(c.kind == "copy" and c.args[2] == len(system) for c in engine.calls)
    assert [(c.text, c.finish_reason) for c in result.completions] == [(t, r) for t, r, _ in alone(engine, newcomer)]


def test_the_prefix_cache_stays_within_its_bound_least_recently_used_first(engine: FakeStepEngine) -> None:
    scheduler = StepScheduler(engine, max_batch_size=1, prefix_cache_slots=2)
    a, b, c = (tuple(range(base, base + 20)) for base in (400, 500, 600))

    def run(prefix: tuple[int, ...], tail: int) -> int:
        request = GenerationRequest(prompt=(*prefix, tail), max_new_tokens=2)
        return submit(scheduler, request).result().timings.cached_tokens

    assert run(a, 1) == 0
    assert run(b, 1) == 0
    assert run(a, 2) == 20  # a is now the more recent entry
    assert scheduler._pool.cached == 2
    assert run(c, 1) == 0  # evicts b, the least recently used
    assert scheduler._pool.cached == 2
    assert run(a, 3) == 20
    assert run(b, 2) == 0
    off = StepScheduler(replace(engine, calls=[]), max_batch_size=1, prefix_cache_slots=0)
    for tail in (1, 2):
        assert submit(off, GenerationRequest(prompt=(*a, tail), max_new_tokens=2)).result().timings.cached_tokens == 0


def test_max_batch_size_holds_and_the_oldest_request_goes_first(engine: FakeStepEngine) -> None:
    scheduler = StepScheduler(engine, max_batch_size=2, prefix_cache_slots=0)
    requests = [greedy(i, max_new_tokens=3 + i % 2) for i in range(5)]
    big = GenerationRequest(prompt=prompt(9), n=2, max_new_tokens=3, sampling=SamplingParams(True, seed=1))
    collectors = submit_together(scheduler, [*requests[:2], big, *requests[2:]])
    results = [c.result() for c in collectors]
    assert max(len(chunks) for chunks in engine.forwards_of()) <= 2
    starts = [r.timings.started for r in results]
    assert starts == sorted(starts)  # admitted in arrival order: the n=2 one held back those behind it
    first_reads = [chunks[0].token_ids[0] for chunks in engine.forwards_of() if len(chunks[0].token_ids) > 1]
    assert first_reads == [PROMPT_MARK + i for i in (0, 1, 9, 2, 3, 4)]


def test_more_sequences_than_slots_are_refused(engine: FakeStepEngine, scheduler: StepScheduler) -> None:
    with pytest.raises(TooManySequences):
        scheduler.validate(GenerationRequest(prompt="hi", n=5, sampling=SamplingParams(True)))
    scheduler.validate(GenerationRequest(prompt="hi", n=5))  # greedy: one sequence, repeated


def test_an_engine_error_ends_the_requests_it_hit_and_the_loop_goes_on(
    engine: FakeStepEngine, scheduler: StepScheduler
) -> None:
    def fail(call: int, chunks: Sequence[Chunk]) -> None:
        if call == 2 or call == 6:  # the second prompt's read; later, a decode of both others
            raise RuntimeError(f"engine failure {call}")

    engine.on_forward = fail
    first, second, third = submit_together(
        scheduler, [greedy(0, max_new_tokens=10), greedy(1), greedy(2, max_new_tokens=10)]
    )
    with pytest.raises(RuntimeError, match="failure 2"):
        second.result()
    for collector in (first, third):
        with pytest.raises(RuntimeError, match="failure 6"):
            collector.result()
    assert submit(scheduler, greedy(3)).texts() == alone(engine, greedy(3))
    assert all(not tokens for tokens in engine.history)  # failed slots emptied; the last one cached nothing
    assert scheduler.running == 0 and scheduler._active == []


def test_waiting_and_running_counts(engine: FakeStepEngine) -> None:
    scheduler = StepScheduler(engine, max_batch_size=1, prefix_cache_slots=0)
    inside, release = threading.Event(), threading.Event()

    def hold(call: int, chunks: Sequence[Chunk]) -> None:
        if call == 1:
            inside.set()
            assert release.wait(30)

    engine.on_forward = hold
    collectors = [submit(scheduler, greedy(i, max_new_tokens=2)) for i in range(3)]
    assert inside.wait(30)
    assert (scheduler.running, scheduler.waiting) == (1, 2)
    collectors[2].sink.cancelled.set()
    assert scheduler.waiting == 1
    release.set()
    for collector in collectors:
        assert collector.done.wait(30)
    assert (scheduler.running, scheduler.waiting) == (0, 0)
    assert collectors[2].deltas == [] and collectors[2].error is None


def test_the_scheduler_surface_on_the_event_loop(engine: FakeStepEngine, scheduler: StepScheduler) -> None:
    request = GenerationRequest(prompt="Once upon a time", max_new_tokens=5, n=2)

    async def main() -> tuple[GenerationResult, list[Delta]]:
        result = await scheduler.generate(request)
        stream = scheduler.schedule(scheduler.validate(request))
        deltas = [delta async for delta in stream]
        return result, deltas

    result, deltas = asyncio.run(main())
    assert [c.completion_tokens for c in result.completions] == [5, 5]
    assert result.completions[0].text == result.completions[1].text
    assert {d.index for d in deltas} == {0, 1}
    assert scheduler.generate_blocking(request).completions == result.completions
    assert scheduler.model_name == "tiny-gpt2"


def test_openai_usage_and_server_timing_report_the_cached_prompt_tokens(engine: FakeStepEngine) -> None:
    from fastapi.testclient import TestClient

    from distilgpt2_api.http_api.app_factory import create_app
    from distilgpt2_api.settings import Settings

    app = create_app(StepScheduler(engine, max_batch_size=2), Settings(model_dir=Path("unused")))
    system = " ".join(["The quick brown fox jumps over the lazy dog."] * 4)
    with TestClient(app) as client:
        usages, timings = [], []
        for question in ("Why?", "How?"):
            body = {"model": "tiny-gpt2", "prompt": f"{system} {question}", "max_tokens": 3}
            response = client.post("/v1/completions", json=body)
            assert response.status_code == 200, response.text
            usages.append(response.json()["usage"])
            timings.append(response.headers["server-timing"])
        with client.stream(
            "POST", "/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
        ) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith("data: {")]
    assert usages[0]["prompt_tokens_details"] == {"cached_tokens": 0}
    shared = len(engine.tokenizer.encode(system))
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] >= shared - 1
    assert f"cached={usages[1]['prompt_tokens_details']['cached_tokens']}" in timings[1]
    assert "cached=" not in timings[0]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["usage"]["prompt_tokens_details"]["cached_tokens"] == usages[1]["prompt_tokens"] - 1


def test_a_deadline_while_the_prompt_is_read_ends_the_request_unanswered(
    engine: FakeStepEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(loop_module, "time", clock)
    scheduler = StepScheduler(engine, prefill_chunk_tokens=8, prefix_cache_slots=0)

    def late(call: int, chunks: Sequence[Chunk]) -> None:
        if call == 2:
            clock.now = 1010.0

    engine.on_forward = late
    long = submit(scheduler, GenerationRequest(prompt=prompt(0, length=40), deadline=1005.0))
    with pytest.raises(DeadlineExceeded):
        long.result()
    assert len(engine.forwards_of()) == 2  # two chunks, then nothing more for it
    assert all(not tokens for tokens in engine.history)


def test_a_short_shared_prefix_copies_from_a_long_entry_rather_than_cutting_it(engine: FakeStepEngine) -> None:
    scheduler = StepScheduler(engine, max_batch_size=1)
    long = GenerationRequest(prompt=tuple(range(200, 240)), max_new_tokens=2)
    submit(scheduler, long).result()
    short = GenerationRequest(prompt=(*range(200, 205), 1, 2, 3), max_new_tokens=2)
    assert submit(scheduler, short).result().timings.cached_tokens == 5
    assert any(c.kind == "copy" and c.args[2] == 5 for c in engine.calls)
    assert submit(scheduler, long).result().timings.cached_tokens == 39  # the long entry is still whole


SMALL_SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "e": {"enum": ["x", "yz"]}},
    "required": ["n", "e"],
    "additionalProperties": False,
}


def test_constrained_and_free_sequences_share_steps_and_every_constrained_answer_matches(
    engine: FakeStepEngine,
) -> None:
    grammar = Grammar.json_schema(SMALL_SCHEMA)
    constrained = [
        GenerationRequest(prompt=prompt(0), max_new_tokens=40, grammar=grammar, stop=("{", '"')),
        GenerationRequest(
            prompt=prompt(1), max_new_tokens=40, n=3, sampling=SamplingParams(True, seed=4), grammar=grammar, logprobs=1
        ),
        GenerationRequest(prompt=prompt(2), max_new_tokens=40, grammar=Grammar("regex", "[a-z]{3,6}")),
    ]
    free = [greedy(5), GenerationRequest(prompt=prompt(6), sampling=SamplingParams(True, seed=9), max_new_tokens=12)]
    expected = [alone(engine, r) for r in free + constrained]
    scheduler = StepScheduler(replace(engine, calls=[], slots=8), max_batch_size=8, prefix_cache_slots=0)
    collectors = submit_together(scheduler, free + constrained)
    assert [c.texts() for c in collectors] == expected  # neither kind changes the other's answers
    assert max(len(chunks) for chunks in scheduler.engine.forwards_of()) == 7  # type: ignore[attr-defined]
    for collector in collectors[2:4]:
        for completion in collector.result().completions:
            assert completion.finish_reason == "stop"  # complete: the grammar ended it, no stop string cut it
            jsonschema.validate(json.loads(completion.text), SMALL_SCHEMA)
    sampled = collectors[3].result().completions
    assert all(t.logprob is not None for c in sampled for t in c.tokens)
    (word,) = collectors[4].result().completions
    assert re.fullmatch("[a-z]{3,6}", word.text) and word.finish_reason in ("eos", "stop")


def test_a_grammar_a_scheduler_cannot_compile_is_refused_before_it_queues(scheduler: StepScheduler) -> None:
    with pytest.raises(InvalidGrammar, match="nowhere"):
        scheduler.validate(GenerationRequest(prompt=prompt(0), grammar=Grammar.json_schema({"$ref": "#/nowhere"})))
    assert not scheduler._waiting


def test_a_request_goes_through_its_phases_in_order(engine: FakeStepEngine) -> None:
    scheduler = StepScheduler(engine, max_batch_size=4, prefill_chunk_tokens=16, prefix_cache_slots=0)
    seen: list[Phase] = []

    def watch(call: int, chunks: Sequence[Chunk]) -> None:  # on the loop's thread, before each forward
        seen.extend(request.phase for request in scheduler._active)

    engine.on_forward = watch
    collector = submit(scheduler, GenerationRequest(prompt=prompt(0, length=40), max_new_tokens=3))
    assert [c.finish_reason for c in collector.result().completions] == ["length"]
    # A 40-token prompt in chunks of 16: three reads, then a decode step per token after the first.
    assert seen == [Phase.PROMPT] * 3 + [Phase.GENERATING] * 2
    assert scheduler._active == [] and scheduler._pool.state(engine.forwards_of()[0][0].slot) is SlotState.IDLE


def test_an_answer_the_grammar_completes_but_its_schema_refuses_is_flagged(engine: FakeStepEngine) -> None:
    """The mask cannot hold uniqueItems: the one answer this schema's grammar allows repeats an item, so it ends
    with `schema_violation`, never `stop`; a schema it satisfies ends with `stop`."""
    twice = {"type": "array", "items": {"const": 7}, "minItems": 2, "maxItems": 2}
    scheduler = StepScheduler(replace(engine, calls=[], slots=4), max_batch_size=4, prefix_cache_slots=0)
    flagged, valid = submit_together(
        scheduler,
        [
            GenerationRequest(
                prompt=prompt(0), max_new_tokens=20, grammar=Grammar.json_schema(twice | {"uniqueItems": True})
            ),
            GenerationRequest(prompt=prompt(1), max_new_tokens=20, grammar=Grammar.json_schema(twice)),
        ],
    )
    (bad,), (good,) = flagged.result().completions, valid.result().completions
    assert bad.text == good.text == "[7, 7]"
    assert (bad.finish_reason, good.finish_reason) == ("schema_violation", "stop")


def test_every_decode_step_runs_its_sequences_in_consecutive_slots(engine: FakeStepEngine) -> None:
    """Sequences end at different steps and newcomers take the freed slots: the loop gathers the running ones into
    one run of slots before each decode (llama.cpp splits a step at every gap), and no answer changes."""
    requests = [greedy(i, max_new_tokens=4 + 5 * (i % 3)) for i in range(10)]
    expected = [alone(engine, r) for r in requests]
    busy = replace(engine, calls=[], slots=8)
    scheduler = StepScheduler(busy, max_batch_size=4, prefill_chunk_tokens=64, prefix_cache_slots=None)
    late: list[Collector] = []

    def arrive(call: int, chunks: Sequence[Chunk]) -> None:  # a newcomer every other call
        if call % 2 == 0 and len(late) < len(requests) - 1:
            late.append(submit(scheduler, requests[len(late) + 1]))

    busy.on_forward = arrive
    first = submit(scheduler, requests[0])
    assert [first.texts(), *(c.texts() for c in late)] == expected
    decodes = [sorted(c.slot for c in chunks) for chunks in busy.forwards_of() if len(chunks) > 1]
    assert decodes and all(slots == list(range(slots[0], slots[0] + len(slots))) for slots in decodes)
    assert any(call.kind == "copy" for call in busy.calls)  # some had to move
