"""llama.cpp's CPU variants: what proving one costs a cold start, and what the chosen one gains over the next.

    python bench/cpu_probe.py --model-dir DIR [--rounds 7] [--out bench]

Cold start. Each round starts three fresh processes that load the llama.cpp engine on DIR's model.gguf and answer
one short prompt, in turn (A/B/C, so other work on the machine weighs on each alike):
  pinned     LLAMA_CPU_VARIANT names the variant the probe chose: no probe (what an operator's pin costs);
  uncached   auto, with an empty cache: every variant tried until one passes (an instance's first cold start);
  cached     auto, with the verdict cached (every later cold start of that instance, or of a warm /tmp).
Reported: spawn to answer, the engine's load (model and CPU backend) and the probe's own time, medians over the
rounds, and each against the pinned start.

Speed. The variant the probe chose against the next one that passes without it (on an Intel Xeon with AMX:
sapphirerapids, whose AMX kernels need llamacpp/amx-tile-config.patch, against zen4), each pinned in a fresh
process per round, 1 and 2 threads: a 256-token and a 32-token prompt read in one pass (tokens/s, the best of 3),
and 64 greedy tokens decoded one a step after the 32-token prompt.

Writes CPU_PROBE.md and cpu_probe.json into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, PARAGRAPH, loadavg, machine_info, service_env, write_report  # noqa: E402

PACKAGES = ("llama-cpp-python", "numpy")

CHILD = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
from distilgpt2_api.engines import ModelInfo
from distilgpt2_api.engines.base import Chunk
from distilgpt2_api.engines.llamacpp_engine import LlamaCppEngine, load_cpu_backend
info = ModelInfo.read(Path(sys.argv[1]))
imported = time.perf_counter()
engine = LlamaCppEngine(info, threads=1, slots=1, cpu_variant=sys.argv[2])
loaded = time.perf_counter()
engine.forward([Chunk(slot=0, token_ids=engine.tokenizer.encode("Once upon a time"), start=0)])
variant = load_cpu_backend(sys.argv[2])
print(json.dumps({"variant": variant.name, "reason": variant.reason, "chosen_by": variant.chosen_by,
                  "probe_s": variant.seconds,
                  "load_s": loaded - imported, "answered_s": time.perf_counter() - started}))
"""
MODES = ("pinned", "uncached", "cached")
SPEED = """
import json, sys, time
from pathlib import Path
from distilgpt2_api.engines import ModelInfo
from distilgpt2_api.engines.base import Chunk
from distilgpt2_api.engines.llamacpp_engine import LlamaCppEngine

def timed(call):
    started = time.perf_counter()
    call()
    return time.perf_counter() - started

engine = LlamaCppEngine(ModelInfo.read(Path(sys.argv[1])), threads=int(sys.argv[3]), slots=1, cpu_variant=sys.argv[2])
ids = engine.tokenizer.encode(sys.argv[4] * 20)
figures = {}
for length in (256, 32):
    best = min(timed(lambda: engine.forward([Chunk(0, ids[:length], 0)])) for _ in range(3))
    figures[f"prompt_{length}_tok_s"] = length / best
tokens = list(ids[:32])
logits = engine.forward([Chunk(0, tokens, 0)])[0]
started = time.perf_counter()
for _ in range(64):
    tokens.append(int(logits.argmax()))
    logits = engine.forward([Chunk(0, tokens[-1:], len(tokens) - 1)])[0]
figures["decode_tok_s"] = 64 / (time.perf_counter() - started)
print(json.dumps(figures | {"answer": tokens[32:]}))
"""
SPEED_KEYS = ("prompt_256_tok_s", "prompt_32_tok_s", "decode_tok_s")


def child(script: str, cache: Path, *argv: object) -> dict[str, Any]:
    """`script` in a fresh interpreter with XDG_CACHE_HOME=cache: the JSON it prints last, and spawn to exit."""
    began, env = time.perf_counter(), service_env({"XDG_CACHE_HOME": str(cache)})
    command = [sys.executable, "-c", script, *map(str, argv)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return {**json.loads(done.stdout.splitlines()[-1]), "spawn_to_answer_s": time.perf_counter() - began}


def next_variant(chosen: str) -> str | None:
    """The variant the probe would choose without `chosen`."""
    from distilgpt2_api.engines.llamacpp_cpu import choose, variant_files
    from distilgpt2_api.engines.llamacpp_engine import _backend_dirs, _ggml_library_path

    files = {name: path for name, path in variant_files(_backend_dirs()).items() if name != chosen}
    return choose(files, _ggml_library_path()).name if files else None


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=BENCH)
    args = parser.parse_args(argv)
    machine = machine_info(PACKAGES)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as scratch:
        warm = Path(scratch) / "warm"
        chosen = child(CHILD, warm, args.model_dir, "auto")  # also warms the cache and the page cache
        for round_ in range(args.rounds):
            for mode in MODES:
                cache = warm if mode == "cached" else Path(scratch) / f"empty-{round_}-{mode}"
                runs[mode].append(
                    child(CHILD, cache, args.model_dir, chosen["variant"] if mode == "pinned" else "auto")
                )
        other = next_variant(chosen["variant"])
        variants = [chosen["variant"], *([other] if other else [])]
        speeds: dict[str, dict[int, list[dict[str, Any]]]] = {v: {1: [], 2: []} for v in variants}
        for _ in range(args.rounds):
            for threads in (1, 2):
                for variant in variants:
                    speeds[variant][threads].append(child(SPEED, warm, args.model_dir, variant, threads, PARAGRAPH))
    assert {r["chosen_by"] for r in runs["uncached"]} == {"probe"}
    assert {r["chosen_by"] for r in runs["cached"]} == {"cached probe"}
    figures = {
        mode: {key: median_of(rows, key) for key in ("spawn_to_answer_s", "load_s", "probe_s")}
        | {
            "spawn_to_answer_min_max_s": [
                min(r["spawn_to_answer_s"] for r in rows),
                max(r["spawn_to_answer_s"] for r in rows),
            ]
        }
        for mode, rows in runs.items()
    }
    speed_figures = {
        variant: {
            str(threads): {key: median_of(rows, key) for key in SPEED_KEYS}
            | {"same_answer_as_chosen": all(r["answer"] == speeds[variants[0]][threads][0]["answer"] for r in rows)}
            for threads, rows in by_threads.items()
        }
        for variant, by_threads in speeds.items()
    }
    results = {
        "machine": machine | {"loadavg_end": loadavg()},
        "model_dir": str(args.model_dir),
        "rounds": args.rounds,
        "variant": chosen["variant"],
        "first_probe": chosen,
        "figures": figures,
        "speeds": speed_figures,
    }
    write_report(args.out, "cpu_probe", results, render(results))
    print(render(results))
    return 0


def render(results: dict[str, Any]) -> str:
    machine, figures = results["machine"], results["figures"]
    pinned = figures["pinned"]["spawn_to_answer_s"]
    lines = [
        "# llama.cpp's CPU variants: the probe's cost, and the chosen variant against the next",
        "",
        f"`python bench/cpu_probe.py`: {machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, load average "
        f"{' '.join(machine['loadavg_start'])} at the start and {' '.join(machine['loadavg_end'])} at the end; "
        f"model {Path(results['model_dir']).name}, {results['rounds']} interleaved rounds, medians. The probe chose "
        f"**{results['variant']}** ({results['first_probe']['reason']}).",
        "",
        "| start | spawn → first answer s (min–max) | engine load ms | of it, the probe ms | vs pinned |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, f in figures.items():
        low, high = f["spawn_to_answer_min_max_s"]
        lines.append(
            f"| {mode} | {f['spawn_to_answer_s']:.3f} ({low:.3f}–{high:.3f}) | {f['load_s'] * 1000:.0f} | "
            f"{f['probe_s'] * 1000:.0f} | {f['spawn_to_answer_s'] / pinned:.2f}× |"
        )
    speeds = results["speeds"]
    chosen = speeds[results["variant"]]
    lines += [
        "",
        "Tokens/s, each variant pinned (the second: what the probe chooses without the first).",
        "",
        "| variant | threads | prompt 256 | prompt 32 | decode | vs chosen (256 / 32 / decode) | same greedy answer |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, by_threads in speeds.items():
        for threads, f in by_threads.items():
            ratios = " / ".join(f"{f[key] / chosen[threads][key]:.2f}×" for key in SPEED_KEYS)
            lines.append(
                f"| {variant} | {threads} | {f['prompt_256_tok_s']:.0f} | {f['prompt_32_tok_s']:.0f} | "
                f"{f['decode_tok_s']:.1f} | {ratios} | {'yes' if f['same_answer_as_chosen'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
