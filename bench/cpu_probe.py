"""What proving llama.cpp's CPU variant costs a cold start: the probe's child processes against a pinned variant.

    python bench/cpu_probe.py --model-dir DIR [--rounds 7] [--out bench]

Each round starts three fresh processes that load the llama.cpp engine on DIR's model.gguf and answer one short
prompt, in turn (A/B/C, so other work on the machine weighs on each alike):
  pinned     LLAMA_CPU_VARIANT names the variant the probe chose: no probe (what an operator's pin costs);
  uncached   auto, with an empty cache: every variant tried until one passes (an instance's first cold start);
  cached     auto, with the verdict cached (every later cold start of that instance, or of a warm /tmp).
Reported: spawn to answer, the engine's load (model and CPU backend) and the probe's own time, medians over the
rounds, and each against the pinned start. Writes CPU_PROBE.md and cpu_probe.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "src")]

import bench  # noqa: E402 - machine_info

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


def start(model_dir: Path, variant: str, cache: Path) -> dict[str, Any]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir), variant],
        capture_output=True, text=True, check=True, env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )  # fmt: skip
    return {**json.loads(done.stdout.splitlines()[-1]), "spawn_to_answer_s": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=BENCH)
    args = parser.parse_args()
    machine = bench.machine_info()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as scratch:
        warm = Path(scratch) / "warm"
        chosen = start(args.model_dir, "auto", warm)  # also warms the cache and the page cache
        for round_ in range(args.rounds):
            for mode in MODES:
                cache = warm if mode == "cached" else Path(scratch) / f"empty-{round_}-{mode}"
                runs[mode].append(start(args.model_dir, chosen["variant"] if mode == "pinned" else "auto", cache))
    assert {r["chosen_by"] for r in runs["uncached"]} == {"probe"} and {r["chosen_by"] for r in runs["cached"]} == {
        "cached probe"
    }
    figures = {
        mode: {key: statistics.median(r[key] for r in rows) for key in ("spawn_to_answer_s", "load_s", "probe_s")}
        | {
            "spawn_to_answer_min_max_s": [
                min(r["spawn_to_answer_s"] for r in rows),
                max(r["spawn_to_answer_s"] for r in rows),
            ]
        }
        for mode, rows in runs.items()
    }
    results = {
        "machine": machine | {"loadavg_end": Path("/proc/loadavg").read_text().split()[:3]},
        "model_dir": str(args.model_dir),
        "rounds": args.rounds,
        "variant": chosen["variant"],
        "first_probe": chosen,
        "figures": figures,
    }
    (args.out / "cpu_probe.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "CPU_PROBE.md").write_text(render(results))
    print(render(results))


def render(results: dict[str, Any]) -> str:
    machine, figures = results["machine"], results["figures"]
    pinned = figures["pinned"]["spawn_to_answer_s"]
    lines = [
        "# What choosing llama.cpp's CPU variant costs a cold start",
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
