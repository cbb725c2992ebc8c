"""Which queued requests may share one engine call, and running such a call.

A batch reads the weights once per step for all its sequences: on these memory-bound models,
8 sequences cost little more than one. Requests share a batch only when the engine computes them
exactly as it would alone (see `compatible`), and each sequence still ends on its own: its
max_new_tokens, stop strings, EOS, its request's deadline or client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from distilgpt2_api.core.sequence import Sequence
from distilgpt2_api.core.stream import Job, Sink
from distilgpt2_api.engines import Engine
from distilgpt2_api.engines.base import TokenStep

# CTranslate2 forwards the prompts of a batch at once only up to the shortest one; the rest of each
# longer prompt goes through the decoding loop a token per step. That is slower, and its arithmetic
# differs slightly from a prompt pass: greedy answers changed for 3 of 100 prompts in mixed-length
# batches (distilgpt2-shape, int8; none in equal-length batches; bench/BATCHING.md). So greedy requests
# share a call only with prompts of their own length; sampled ones within this difference.
MAX_PROMPT_SKEW = 32


def compatible(first: Job, other: Job) -> bool:
    """Whether `other` may join a batch that `first` opened.

    One engine call has one set of sampling parameters and one logprobs setting. A seed replays one
    request's random draws, which batch mates would consume: seeded requests run alone. Alternatives
    (top logprobs) need the logits rows of each step in order, which prompts of different lengths shift.
    A greedy answer must not depend on its mates: equal prompt lengths only (see MAX_PROMPT_SKEW).
    """
    a, b = first.tokens, other.tokens
    if a.sampling.seed is not None or b.sampling.seed is not None:
        return False
    if a.logprobs or b.logprobs:  # alternatives: alone
        return False
    skew = abs(len(a.prompt_ids) - len(b.prompt_ids))
    return (
        a.sampling == b.sampling
        and a.logprobs == b.logprobs
        and skew <= (MAX_PROMPT_SKEW if a.sampling.do_sample else 0)
    )


@dataclass
class _Row:
    """One computed sequence, and the request it belongs to."""

    sink: Sink
    choice: int
    sequence: Sequence


def run_batch(engine: Engine, sinks: list[Sink]) -> None:
    """Generate every job of `sinks` in one engine call, on this thread.

    Each job ends (its sink's `end`) as soon as its own sequences have, not when the batch does.
    """
    started = time.perf_counter()
    rows = [
        _Row(
            sink,
            choice,
            Sequence(
                engine.tokenizer,
                max_new_tokens=sink.job.request.max_new_tokens,
                stop=sink.job.request.stop,
                eos_token_ids=engine.info.eos_token_ids,
            ),
        )
        for sink in sinks
        for choice in range(sink.job.tokens.n)
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
        deadline = sink.job.request.deadline
        if not sequence.finished and deadline is not None and time.monotonic() >= deadline:
            sequence.finish("time_limit")
        publish(row)
        return sequence.finished or sink.cancelled.is_set()

    try:
        engine.generate([sink.job.tokens for sink in sinks], on_step)
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
