"""Decoding from the service's generation thread does not sleep at llama.cpp's barriers between operations.

The service calls llama_decode from a thread of its own, not the process's first. libgomp, the thread runtime of
llama.cpp's OpenMP build, then manages one thread more than there are CPUs (the first thread counts too) and waits at a
barrier with only 100 spins before it sleeps on a futex: every operation whose threads finished unevenly cost a sleep
and a wake-up, and decode ran 3-10x slower on 2 cores (llamacpp/spin-barrier.patch, docs/PERFORMANCE.md: Barriers).
Counted, not timed: the sleeps (voluntary context switches) of the process's threads per decode step, which stay a
few a step (the start and end of each step's parallel region) with ggml's spinning barrier.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distilgpt2_api.engines.base import Chunk, ModelInfo
from distilgpt2_api.engines.cpus import usable_cpus
from distilgpt2_api.engines.llamacpp_engine import LlamaCppEngine

pytestmark = pytest.mark.real_weights

STEPS = 32
SLEEPS_PER_STEP = 6  # two libgomp barriers a step (its region's start and end), with room for the odd wake-up


@pytest.fixture(scope="module")
def engine(smollm2_llamacpp_dir: Path) -> Iterator[LlamaCppEngine]:
    if usable_cpus().count < 2:
        pytest.skip("one CPU: llama.cpp computes in one thread, without barriers")
    engine = LlamaCppEngine(ModelInfo.read(smollm2_llamacpp_dir), threads=2, slots=1, context=512)
    yield engine
    engine.close()


def sleeps() -> dict[int, int]:
    """Voluntary context switches of each thread of this process so far, by thread id."""
    counts = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        counts[int(task.name)] = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return counts


def decode_in_a_thread(engine: LlamaCppEngine, steps: int) -> int:
    """Sleeps over `steps` greedy decode steps run in a new thread, as the service's generation thread runs them:
    that thread's and the thread runtime's workers it starts (threads older than it are the test session's)."""
    older = set(sleeps())
    counted: list[int] = []

    def run() -> None:
        prompt = engine.tokenizer.encode("Once upon a time")
        engine.truncate(0, 0)
        logits = engine.forward([Chunk(0, prompt, 0)])[0]
        before = sleeps()
        for offset in range(steps):
            logits = engine.forward([Chunk(0, [int(np.argmax(logits))], len(prompt) + offset)])[0]
        after = sleeps()
        counted.append(sum(count - before.get(tid, 0) for tid, count in after.items() if tid not in older))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return counted[0]


def test_decoding_from_a_thread_of_its_own_sleeps_a_few_times_a_step_not_at_every_barrier(
    engine: LlamaCppEngine,
) -> None:
    per_step = decode_in_a_thread(engine, STEPS) / STEPS
    assert per_step <= SLEEPS_PER_STEP, f"{per_step:.1f} sleeps a decode step"
