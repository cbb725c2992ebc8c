"""Dynamic batching: concurrent compatible requests share an engine call, and nothing about a request's
result depends on what shared it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from distilgpt2_api.core.batch import BatchScheduler
from distilgpt2_api.core.request import GREEDY, GenerationRequest, SamplingParams
from distilgpt2_api.core.stream import GenerationResult, GenerationStream
from distilgpt2_api.engines import Engine, load_engine

PROMPTS = ["Once upon a time", "The weather today is", "In a distant galaxy far away", "Hello", "A B C", "Why"]


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return load_engine(model_dir, "ctranslate2", threads=1)


@pytest.fixture
def scheduler(engine: Engine) -> Iterator[BatchScheduler]:
    yield BatchScheduler(engine, max_batch_size=8)


@pytest.fixture(scope="module")
def same_length(engine: Engine) -> list[str]:
    """Prompts of one token length: greedy requests share a call only with such."""
    length = len(engine.tokenizer.encode("Once upon a time"))
    candidates = [f"{w} upon a time" for w in ("Once", "Twice", "Thrice", "Four", "Five", "Six", "Seven", "Nine")]
    chosen = [p for p in candidates if len(engine.tokenizer.encode(p)) == length]
    assert len(chosen) >= 4
    return chosen


def _queued_together(scheduler: BatchScheduler, requests: list[GenerationRequest]) -> list[GenerationStream]:
    """Start `requests` while the worker is held, so they are all waiting when it frees up."""
    gate = threading.Event()
    scheduler._executor.submit(gate.wait)
    streams = [scheduler.schedule(scheduler.validate(request)) for request in requests]
    gate.set()
    return streams


def _run_together(
    scheduler: BatchScheduler, requests: list[GenerationRequest]
) -> tuple[list[GenerationResult], list[GenerationStream]]:
    async def main() -> tuple[list[GenerationResult], list[GenerationStream]]:
        streams = _queued_together(scheduler, requests)
        return list(await asyncio.gather(*(stream.collect() for stream in streams))), streams

    return asyncio.run(main())


def _texts(result: GenerationResult) -> list[tuple[str, str, int]]:
    return [(c.text, c.finish_reason, c.completion_tokens) for c in result.completions]


def test_greedy_results_do_not_depend_on_batch_mates(scheduler: BatchScheduler, same_length: list[str]) -> None:
    requests = [
        GenerationRequest(prompt=prompt, max_new_tokens=4 + 3 * i, stop=(" the",) if i % 2 else ())
        for i, prompt in enumerate(same_length)
    ]
    results, streams = _run_together(scheduler, requests)
    assert {stream.timings.batch_size for stream in streams} == {len(requests)}  # one engine call
    for request, result in zip(requests, results, strict=True):
        assert _texts(result) == _texts(scheduler.generate_blocking(request))  # alone


def test_greedy_prompts_of_other_lengths_are_kept_apart(scheduler: BatchScheduler) -> None:
    # A longer prompt's extra tokens would go through the decoding loop, whose arithmetic can flip a
    # near-tie: greedy requests share a call only with prompts of their own length.
    tokenizer = scheduler.engine.tokenizer
    prompts = ["Once upon a time", "Once upon a time there was a tiny model"]
    assert len(tokenizer.encode(prompts[0])) != len(tokenizer.encode(prompts[1]))
    _, streams = _run_together(scheduler, [GenerationRequest(prompt=p, max_new_tokens=3) for p in prompts])
    assert [s.timings.batch_size for s in streams] == [1, 1]
    sampled = SamplingParams(do_sample=True)
    _, streams = _run_together(
        scheduler, [GenerationRequest(prompt=p, max_new_tokens=3, sampling=sampled) for p in prompts]
    )
    assert [s.timings.batch_size for s in streams] == [2, 2]  # sampled: no answer to keep, so they share


def test_each_request_ends_with_its_own_sequences(scheduler: BatchScheduler) -> None:
    short, long = (GenerationRequest(prompt="Once upon a time", max_new_tokens=k) for k in (2, 60))
    results, (short_stream, long_stream) = _run_together(scheduler, [short, long])
    assert [r.completions[0].completion_tokens for r in results] == [2, results[1].completions[0].completion_tokens]
    assert short_stream.timings.batch_size == 2
    assert short_stream.timings.ended is not None and long_stream.timings.ended is not None
    if results[1].completions[0].completion_tokens > 10:  # the long one really ran on
        assert short_stream.timings.ended < long_stream.timings.ended


def test_seeded_requests_run_alone_and_stay_reproducible(scheduler: BatchScheduler, same_length: list[str]) -> None:
    seeded = GenerationRequest(prompt="Once", max_new_tokens=8, n=2, sampling=SamplingParams(do_sample=True, seed=5))
    others = [GenerationRequest(prompt=p, max_new_tokens=8) for p in same_length[:3]]
    results, streams = _run_together(scheduler, [*others[:1], seeded, *others[1:]])
    assert _texts(results[1]) == _texts(scheduler.generate_blocking(seeded))
    assert streams[1].timings.batch_size == 2  # its own two sequences, nobody else's
    assert streams[0].timings.batch_size == 3  # the greedy ones went together, around it


def test_only_compatible_requests_share_and_the_oldest_goes_first(
    scheduler: BatchScheduler, same_length: list[str]
) -> None:
    warm = SamplingParams(do_sample=True, temperature=0.7)
    requests = [
        GenerationRequest(prompt=same_length[0], max_new_tokens=3, sampling=warm),
        GenerationRequest(prompt=same_length[1], max_new_tokens=3),
        GenerationRequest(prompt=same_length[2], max_new_tokens=3, sampling=warm),
        GenerationRequest(prompt=same_length[3], max_new_tokens=3, sampling=GREEDY),
    ]
    _, streams = _run_together(scheduler, requests)
    sizes = [s.timings.batch_size for s in streams]
    assert sizes == [2, 2, 2, 2]
    starts = [s.timings.started for s in streams]
    assert starts[0] == starts[2] and starts[1] == starts[3]  # sampled together, greedy together
    assert starts[0] is not None and starts[1] is not None and starts[0] < starts[1]  # in arrival order


def test_batches_hold_at_most_max_batch_size_sequences(engine: Engine) -> None:
    scheduler = BatchScheduler(engine, max_batch_size=3)
    sampled = SamplingParams(do_sample=True)
    requests = [GenerationRequest(prompt=p, max_new_tokens=3, n=2, sampling=sampled) for p in PROMPTS[:4]]
    _, streams = _run_together(scheduler, requests)
    assert all(s.timings.batch_size <= 3 for s in streams)  # 2 + 2 would not fit


def test_batching_off_runs_requests_one_at_a_time(engine: Engine) -> None:
    scheduler = BatchScheduler(engine, max_batch_size=1)
    _, streams = _run_together(scheduler, [GenerationRequest(prompt=p, max_new_tokens=3) for p in PROMPTS])
    assert {s.timings.batch_size for s in streams} == {1}


def test_a_cancelled_request_leaves_its_batch_mates_running(scheduler: BatchScheduler, same_length: list[str]) -> None:
    keep_request, leave_request = (GenerationRequest(prompt=p, max_new_tokens=30) for p in same_length[:2])

    async def main() -> tuple[GenerationResult, GenerationStream]:
        keep, leave = _queued_together(scheduler, [keep_request, leave_request])
        await anext(leave)
        await leave.aclose()
        return await keep.collect(), leave

    together, left = asyncio.run(main())
    assert left.timings.batch_size == 2  # it did share the call it left
    assert _texts(together) == _texts(scheduler.generate_blocking(keep_request))


def test_the_reference_engine_does_not_batch(model_dir: Path) -> None:
    scheduler = BatchScheduler(load_engine(model_dir, "transformers", threads=1), max_batch_size=8)
    assert scheduler.max_batch_size == 1
    _, streams = _run_together(scheduler, [GenerationRequest(prompt=p, max_new_tokens=3) for p in PROMPTS[:3]])
    assert {s.timings.batch_size for s in streams} == {1}


def test_after_a_shared_call_the_worker_waits_for_the_clients_next_requests(
    engine: Engine, same_length: list[str]
) -> None:
    # Clients whose answers came back together send their next requests a moment apart; without the
    # wait, the first would start alone and the others queue behind all of it.
    scheduler = BatchScheduler(engine, max_batch_size=8, batch_wait_seconds=5.0)  # ends as soon as all are back
    requests = [GenerationRequest(prompt=p, max_new_tokens=3) for p in same_length[:3]]

    async def main() -> list[GenerationStream]:
        first_round = _queued_together(scheduler, requests)
        await asyncio.gather(*(s.collect() for s in first_round))
        second_round = []
        for request in requests:  # one by one, as separate clients would
            second_round.append(scheduler.schedule(scheduler.validate(request)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*(s.collect() for s in second_round))
        return second_round

    streams = asyncio.run(main())
    assert [s.timings.batch_size for s in streams] == [3, 3, 3]
    assert max(s.timings.queued_seconds for s in streams) < 4.0  # it waited for them, not for its limit
