"""Processes that served requests exit cleanly: no native thread outlives the interpreter (exit code -6).

CTranslate2 frees a request's Python callback on its own worker thread, after the caller has the
result. A process that exits right after its last request used to abort in std::terminate: before the
fix, most runs of the script below did (16 of 20 here).
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROCESSES = 12
EXIT_TIMEOUT_S = 120

SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from distilgpt2_api.engines import load_engine
from distilgpt2_api.core.request import GenerationRequest, SamplingParams
from distilgpt2_api.core.batch import BatchScheduler

generator = BatchScheduler(load_engine(Path(sys.argv[1]), "ctranslate2", threads=1))
deadline = time.monotonic() + 60  # a deadline: the engine passes CTranslate2 a Python callback
requests = [GenerationRequest("Once", 8, sampling=SamplingParams(do_sample=True, seed=seed), deadline=deadline)
            for seed in (None, 7, None)]  # the seeded request replaces the generator
for request in requests[:2]:
    asyncio.run(generator.generate(request))  # on the generation thread, as when serving
generator.generate_blocking(requests[2])  # on this thread, then exit at once, as scripts and the benchmark do
"""


def _run(model_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", SCRIPT, str(model_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, check=False)


def test_processes_that_generated_exit_cleanly(model_dir: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(_run, [model_dir] * PROCESSES))
    failures = [(run.returncode, run.stderr[-300:]) for run in runs if run.returncode != 0]
    assert not failures, f"{len(failures)} of {PROCESSES} processes failed at exit: {failures[:3]}"


def test_a_closed_engine_frees_its_generator(model_dir: Path) -> None:
    from distilgpt2_api.engines import load_engine

    engine = load_engine(model_dir, "ctranslate2", threads=1)
    engine.close()
    engine.close()  # idempotent
    assert not hasattr(engine, "generator")


REPLACING = """
import sys
from pathlib import Path
from distilgpt2_api.engines import load_engine
from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.batch import BatchScheduler

for _ in range(6):  # as the benchmark does: an engine per configuration, each dropped after use
    scheduler = BatchScheduler(load_engine(Path(sys.argv[1]), "ctranslate2", threads=1))
    scheduler.generate_blocking(GenerationRequest("Once", 8))
print("ok")
"""


def test_an_engine_dropped_right_after_generating_is_freed_on_this_thread(model_dir: Path) -> None:
    # The per-token callback lives in CTranslate2's job until its worker frees it. Were the engine reachable
    # from it, dropping the engine could leave the callback as its last reference, and the generator would be
    # destroyed on its own worker thread, which cannot join itself: "Resource deadlock avoided", abort.
    command = [sys.executable, "-c", REPLACING, str(model_dir)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(
            pool.map(
                lambda _: subprocess.run(command, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, check=False),
                range(4),
            )
        )
    failures = [(run.returncode, run.stderr[-300:]) for run in runs if run.returncode != 0 or "ok" not in run.stdout]
    assert not failures, f"{len(failures)} of 4 processes failed: {failures[:2]}"
