"""llama.cpp's CPU variant is proven in a child process before this process runs it, on any CPU.

A stand-in variant that executes an illegal instruction (the way AMX kernels died on an Intel Xeon under
Firecracker) is ranked first by its score: its child dies, it is skipped with the reason, and the best real variant
serves. Every real variant this machine runs gives the same greedy answer on float32 weights, and on the real
SmolLM2's Q4_1 logits within rounding of the best one's.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distilgpt2_api.engines import ModelLoadError, llamacpp_cpu
from distilgpt2_api.engines.base import cpu_identity
from distilgpt2_api.engines.llamacpp_cpu import Attempt, CpuVariant, choose, variant_files
from distilgpt2_api.engines.llamacpp_engine import _backend_dirs, _ggml_library_path

# Scored above every real variant; its backend's init executes an illegal instruction (ud2 on x86).
CRASHING_BACKEND = r"""
#include <signal.h>
int ggml_backend_score(void) { return 1 << 30; }
void * ggml_backend_init(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("ud2");
#endif
    raise(SIGILL);
    return 0;
}
"""
# Scored above every real variant too; its backend's init never returns.
HANGING_BACKEND = r"""
#include <unistd.h>
int ggml_backend_score(void) { return 1 << 30; }
void * ggml_backend_init(void) { for (;;) pause(); }
"""
GREEDY_TOKENS = 16
QUANTIZED_LOGITS_ATOL = 1.5  # see the last test


@pytest.fixture(scope="module")
def real_variants() -> dict[str, Path]:
    files = variant_files(_backend_dirs())
    assert files, "llama-cpp-python ships no CPU backend"
    return files


def build_backend(directory: Path, name: str, source: str) -> Path:
    """libggml-cpu-<name>.so from C `source`, built with the C compiler the llama.cpp build needs anyway."""
    source_file, library = directory / f"{name}.c", directory / f"libggml-cpu-{name}.so"
    source_file.write_text(source)
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler, "no C compiler (make install needs one to build llama.cpp)"
    subprocess.run([compiler, "-shared", "-fPIC", "-O0", "-o", str(library), str(source_file)], check=True)
    return library


@pytest.fixture(scope="module")
def crashing_backend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_backend(tmp_path_factory.mktemp("crashing"), "crashing", CRASHING_BACKEND)


@pytest.fixture(scope="module")
def best(real_variants: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> CpuVariant:
    """The variant the service runs on this CPU: the probe's choice among the real ones."""
    return choose(real_variants, _ggml_library_path(), cache_dir=tmp_path_factory.mktemp("cache"))


def test_the_chosen_variant_passed_the_probe_and_every_better_one_is_accounted_for(best: CpuVariant) -> None:
    assert best.chosen_by == "probe"
    assert best.attempts[-1].variant == best.name and best.attempts[-1].outcome == "passed"
    for attempt in best.attempts[:-1]:  # better-scored variants: each failed or crashed, with a reason
        assert attempt.outcome in ("failed", "crashed") and attempt.reason, attempt
    assert best.name in best.reason


def test_a_variant_that_crashes_is_skipped_and_the_next_one_serves(
    real_variants: dict[str, Path],
    crashing_backend: Path,
    best: CpuVariant,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = {"crashing": crashing_backend, **real_variants}
    with caplog.at_level(logging.WARNING, logger="distilgpt2_api.engines.llamacpp_cpu"):
        variant = choose(files, _ggml_library_path(), cache_dir=tmp_path)
    assert variant.name == best.name  # the crash cost nothing but its own probe
    crashed = variant.attempts[0]
    assert (crashed.variant, crashed.outcome) == ("crashing", "crashed")
    assert "killed by SIGILL while probing load" in crashed.reason
    assert [a.variant for a in variant.attempts[1:]] == [a.variant for a in best.attempts]
    assert any("crashing cannot run here: killed by SIGILL" in r.getMessage() for r in caplog.records)
    assert "crashing crashed (killed by SIGILL while probing load)" in variant.reason


def test_the_verdict_is_cached_per_cpu_and_build(
    real_variants: dict[str, Path], crashing_backend: Path, tmp_path: Path
) -> None:
    files = {"crashing": crashing_backend, **real_variants}
    first = choose(files, _ggml_library_path(), cache_dir=tmp_path)
    (cached_file,) = tmp_path.glob("llamacpp-cpu-*.json")
    assert json.loads(cached_file.read_text())["variant"] == first.name
    again = choose(files, _ggml_library_path(), cache_dir=tmp_path)
    assert (again.name, again.chosen_by, again.attempts) == (first.name, "cached probe", first.attempts)
    assert again.seconds < first.seconds
    os.utime(crashing_backend, ns=(0, 0))  # another build: the cache does not apply to it
    assert choose(files, _ggml_library_path(), cache_dir=tmp_path).chosen_by == "probe"


def test_a_variant_that_hangs_is_skipped_after_the_time_limit(
    real_variants: dict[str, Path], best: CpuVariant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llamacpp_cpu, "PROBE_TIMEOUT_SECONDS", 3.0)
    hanging = build_backend(tmp_path, "hanging", HANGING_BACKEND)
    variant = choose({"hanging": hanging, **real_variants}, _ggml_library_path())
    assert variant.name == best.name
    assert variant.attempts[0] == Attempt("hanging", "crashed", "no answer within 3 s while probing load")


def test_when_no_variant_runs_loading_fails_with_every_reason(crashing_backend: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no llama.cpp CPU variant runs on this CPU: crashing crashed \(killed"):
        choose({"crashing": crashing_backend}, _ggml_library_path(), cache_dir=tmp_path)


def test_a_pinned_variant_is_loaded_without_a_probe(crashing_backend: Path, real_variants: dict[str, Path]) -> None:
    files = {"crashing": crashing_backend, **real_variants}
    pinned = choose(files, _ggml_library_path(), pin="crashing")  # an operator's word is taken: no child runs
    assert (pinned.name, pinned.chosen_by, pinned.attempts) == ("crashing", "LLAMA_CPU_VARIANT", ())
    with pytest.raises(ModelLoadError, match=r"LLAMA_CPU_VARIANT=nonesuch: this build has .*crashing, .*\(or auto\)"):
        choose(files, _ggml_library_path(), pin="nonesuch")


# In a process of its own (a process loads one variant): argv is the model directory, the variant, what to feed after
# the prompt (a list of tokens, one a step; or a number of greedy steps, each feeding the last answer) and where to save
# every step's logits. Prints the greedy token after the prompt and after each token fed.
RUN = """
import json, sys
from pathlib import Path
import numpy as np
from distilgpt2_api.engines import ModelInfo
from distilgpt2_api.engines.base import Chunk
from distilgpt2_api.engines.llamacpp_engine import LlamaCppEngine
model, variant, feed, out = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
engine = LlamaCppEngine(ModelInfo.read(model), threads=1, slots=1, cpu_variant=variant)
tokens = engine.tokenizer.encode("The capital of France is a city where")
rows = [engine.forward([Chunk(slot=0, token_ids=tokens, start=0)])[0]]  # the prompt's rows at once
for step in range(feed if isinstance(feed, int) else len(feed)):
    tokens.append(int(rows[-1].argmax()) if isinstance(feed, int) else feed[step])
    rows.append(engine.forward([Chunk(slot=0, token_ids=tokens[-1:], start=len(tokens) - 1)])[0])
np.save(out, np.stack(rows))
print(json.dumps({"variant": engine.kernels.variant, "greedy": [int(row.argmax()) for row in rows]}))
"""


@pytest.fixture(scope="module")
def runnable(real_variants: dict[str, Path], best: CpuVariant) -> list[str]:
    """The variants this CPU runs: each probed on its own."""
    names = []
    for name, path in real_variants.items():
        try:
            names.append(choose({name: path}, _ggml_library_path()).name)
        except ModelLoadError:
            continue  # not for this CPU (or it would crash): never loaded
    assert best.name in names
    return names


def run(model: Path, variant: str, feed: list[int] | int, out: Path) -> tuple[list[int], np.ndarray]:
    """`variant`'s greedy token after the prompt and after each token fed, and every step's logits."""
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(model), variant, json.dumps(feed), str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["variant"] == variant
    return answer["greedy"], np.load(out)


@pytest.mark.slow
def test_every_variant_this_cpu_runs_gives_the_same_greedy_tokens_on_float32_weights(
    runnable: list[str], best: CpuVariant, model_dir: Path, tmp_path: Path
) -> None:
    """The tiny GPT-2's float32 GGUF: variants differ only in the order of float sums, so no argmax moves."""
    answers = {name: run(model_dir, name, GREEDY_TOKENS, tmp_path / f"{name}.npy")[0] for name in runnable}
    assert len(answers[best.name]) == GREEDY_TOKENS + 1
    assert {name: tokens for name, tokens in answers.items() if tokens != answers[best.name]} == {}


@pytest.mark.real_weights
@pytest.mark.slow
def test_every_variant_this_cpu_runs_computes_the_same_logits_on_quantized_weights(
    runnable: list[str], best: CpuVariant, smollm2_llamacpp_dir: Path, tmp_path: Path
) -> None:
    """SmolLM2's shipped Q4_1, every variant fed the best one's greedy answer. Variants of one family (the AVX-512
    ones) give identical logits; across families (AVX2, SSE, plain x86) kernels sum in other orders, so logits move
    (measured on a Xeon: up to 1.0, on logits with a spread of 5) and where the top two are that close a variant
    may choose the other. A broken kernel is far beyond either."""
    greedy, reference = run(smollm2_llamacpp_dir, best.name, GREEDY_TOKENS, tmp_path / "reference.npy")
    order = np.argsort(reference, axis=1)
    runner_up = order[:, -2]
    margin = (
        np.take_along_axis(reference, order[:, -1:], 1)[:, 0] - np.take_along_axis(reference, order[:, -2:-1], 1)[:, 0]
    )
    for name in runnable:
        tokens, logits = run(smollm2_llamacpp_dir, name, greedy[:-1], tmp_path / f"{name}.npy")
        moved = np.abs(logits - reference).max()
        assert moved < QUANTIZED_LOGITS_ATOL, name
        for step, (token, expected) in enumerate(zip(tokens, greedy, strict=True)):
            if token != expected:  # only a near tie may go the other way, and only to the runner-up
                assert (token, margin[step] < 2 * moved) == (runner_up[step], True), (name, step)


AMX_VARIANT = "sapphirerapids"
AMX_FLAGS = ("amx_tile", "amx_int8", "avx512_vnni", "avx512_bf16", "avx512vbmi")


def test_the_amx_variant_serves_where_the_cpu_has_amx_and_nowhere_else(
    real_variants: dict[str, Path], best: CpuVariant
) -> None:
    """llama.cpp's AMX kernels, built with llamacpp/amx-tile-config.patch, run on a CPU with AMX (without it they
    died with SIGILL) and are the best-scored there; on any other CPU ggml scores the variant 0, so it never loads."""
    if AMX_VARIANT not in real_variants:
        pytest.skip(f"an {platform.machine()} build has no {AMX_VARIANT} variant")
    flags = next(line for line in cpu_identity().splitlines() if line.startswith("flags:")).split()
    if all(flag in flags for flag in AMX_FLAGS):
        assert best.name == AMX_VARIANT and [a.outcome for a in best.attempts] == ["passed"], best.reason
    else:
        with pytest.raises(ModelLoadError, match=rf"{AMX_VARIANT} failed \(not for this CPU: it lacks an extension"):
            choose({AMX_VARIANT: real_variants[AMX_VARIANT]}, _ggml_library_path())
