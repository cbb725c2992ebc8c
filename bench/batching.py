"""Dynamic batching, measured: does a greedy answer depend on its batch mates, and what does batching buy?

    python bench/batching.py --model smollm2=models/default --model distil=PATH --out bench

1. Determinism: 100 prompts, greedy, 50 new tokens; each alone (`Scheduler.generate_blocking`), in
   engine calls of 8 consecutive prompts whatever their lengths (what the scheduler would do without its
   equal-length rule for greedy requests), and in batches of 8 queued together through the scheduler
   (which applies the rule). Counts the answers that differ from alone.
2. Load: `bench/load.py` against uvicorn with 1, 4 and 8 clients, batching off (MAX_BATCH_SIZE=1) and on
   (MAX_BATCH_SIZE=8), plain (`POST /generate`) and streamed (`POST /generate_stream`), 50-token greedy
   requests; `--routes sampled` adds unseeded sampled requests (`do_sample`), which may share a call
   whatever their prompt lengths. Ratios are taken between runs of the same model in one invocation.

Writes BATCHING.md (and batching.json) into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import threading
from pathlib import Path
from typing import Any

from distilgpt2_api.core.batch import run_batch
from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.core.sequence import Delta
from distilgpt2_api.core.stream import Sink
from distilgpt2_api.engines import load_engine

sys.path.insert(0, str(Path(__file__).parent))
import load  # noqa: E402 - bench/load.py, the load test this drives

NEW_TOKENS = 50
PROMPT_COUNT = 100
BATCH = 8
SUBJECTS = ["The old lighthouse", "My favourite recipe", "The history of Rome", "A quiet morning", "Quantum physics"]
OPENINGS = ["is", "was never", "can teach us that", "reminds me of", "began when"]
CLIENT_COUNTS = (1, 4, 8)
SETTINGS = {"off": 1, "on": BATCH}
ROUTES = {"plain": "POST /generate", "streamed": "POST /generate_stream", "sampled": "POST /generate sampled"}
DEFAULT_ROUTES = ("plain", "streamed")


def prompts() -> list[str]:
    """PROMPT_COUNT distinct prompts of a few different lengths."""
    out = []
    for i in range(PROMPT_COUNT):
        subject, opening = SUBJECTS[i % len(SUBJECTS)], OPENINGS[(i // len(SUBJECTS)) % len(OPENINGS)]
        out.append(f"{subject} {opening}" + " and then" * (i // 25))
    return out


def determinism(model_dir: Path) -> dict[str, Any]:
    scheduler = Scheduler(load_engine(model_dir, "ctranslate2", threads=1), max_batch_size=BATCH)
    requests = [GenerationRequest(prompt=p, max_new_tokens=NEW_TOKENS) for p in prompts()]
    batch_sizes: list[int] = []
    alone = [scheduler.generate_blocking(r).completions[0].text for r in requests]

    async def batched() -> list[str]:
        texts: list[str] = []
        sizes: list[int] = []
        for start in range(0, len(requests), BATCH):
            gate = threading.Event()
            scheduler._executor.submit(gate.wait)  # hold the worker: the next BATCH requests queue together
            streams = [scheduler.stream(r) for r in requests[start : start + BATCH]]
            gate.set()
            results = await asyncio.gather(*(s.collect() for s in streams))
            texts += [r.completions[0].text for r in results]
            sizes += [s.timings.batch_size for s in streams]
        assert max(sizes) > 1, "nothing was batched"
        batch_sizes.extend(sizes)
        return texts

    def mixed_lengths() -> list[str]:
        texts: list[str] = []
        for start in range(0, len(requests), BATCH):
            group = [scheduler._job(r) for r in requests[start : start + BATCH]]
            collected: list[list[Delta]] = [[] for _ in group]
            sinks = [
                Sink(job, lambda item, out=out: out.append(item) if isinstance(item, Delta) else None)
                for job, out in zip(group, collected, strict=True)
            ]
            run_batch(scheduler.engine, sinks)
            texts += ["".join(d.text for d in deltas) for deltas in collected]
        return texts

    together = asyncio.run(batched())
    mixed = mixed_lengths()
    differing = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b]
    differing_mixed = [i for i, (a, b) in enumerate(zip(alone, mixed, strict=True)) if a != b]
    return {
        "compute_type": getattr(scheduler.engine, "compute_type", "?"),
        "prompts": len(requests),
        "differing": len(differing),
        "differing_mixed_lengths": len(differing_mixed),
        "mean_batch_size": round(sum(batch_sizes) / len(batch_sizes), 2),
        "examples": [{"prompt": requests[i].prompt, "alone": alone[i], "mixed": mixed[i]} for i in differing_mixed[:3]],
    }


def load_run(model_dir: Path, clients: int, batch: int, route: str, seconds: float) -> dict[str, Any]:
    argv = ["--model-dir", str(model_dir), "--clients", str(clients), "--duration", str(seconds)]
    argv += ["--max-new-tokens", str(NEW_TOKENS), "--routes", route, "--max-batch-size", str(batch)]
    report = load.run(load.parse_args(argv))
    figures = report["latency"][route]
    return {
        "clients": clients,
        "batching": batch > 1,
        "route": route,
        "requests_per_s": report["throughput_rps"],
        "tokens_per_s": report["tokens_per_s"],
        "p50_ms": figures["p50_ms"],
        "p95_ms": figures["p95_ms"],
        "p99_ms": figures["p99_ms"],
        "first_event_p50_ms": figures.get("first_event_p50_ms"),
        "errors": report["errors"],
        "rss_growth_pct": report["rss"]["growth_pct"],
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests per second (itself, when there is one), and how many it was among."""
    ranked = sorted(runs, key=lambda run: run["requests_per_s"])
    return {**ranked[len(ranked) // 2], "repeats": len(runs)}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def markdown(results: dict[str, Any], seconds: float) -> str:
    lines = [
        "# Dynamic batching",
        "",
        f"`python bench/batching.py` on {cpu_name()} (2 cores), THREADS=1, CTranslate2 with the compute type "
        f"prepare-time chose. Greedy requests of {NEW_TOKENS} new tokens; each load run {seconds:g} s after a warm-up.",
        "",
        "## Does a greedy answer depend on its batch mates?",
        "",
        f"{PROMPT_COUNT} prompts, each alone, then {BATCH} at a time in one engine call whatever their prompt "
        "lengths, and through the scheduler (greedy requests share a call only with prompts of their length):",
        "",
        "| model | compute type | differ, mixed lengths in a call | differ, through the scheduler |",
        "| --- | --- | ---: | ---: |",
    ]
    for name, model in results.items():
        d = model["determinism"]
        lines.append(
            f"| {name} | {d['compute_type']} | {d['differing_mixed_lengths']} of {d['prompts']} "
            f"| {d['differing']} of {d['prompts']} |"
        )
    lines += [
        "",
        "## Load: batching off (MAX_BATCH_SIZE=1) and on (8)",
        "",
        "| model | route | clients | batching | req/s | tokens/s | p50 ms | p95 ms | p99 ms | first event p50 ms "
        "| errors | RSS growth |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, model in results.items():
        for run in model["load"]:
            first = run["first_event_p50_ms"] if run["first_event_p50_ms"] is not None else ""
            lines.append(
                f"| {name} | {run['route']} | {run['clients']} | {'on' if run['batching'] else 'off'} | "
                f"{run['requests_per_s']} | {run['tokens_per_s']} | {run['p50_ms']} | {run['p95_ms']} | "
                f"{run['p99_ms']} | {first} | {run['errors']} | {run['rss_growth_pct']:+.1f} % |"
            )
    lines += ["", "## Ratios (on ÷ off, same model, route and clients)", ""]
    lines += ["| model | route | clients | req/s | p95 latency |", "| --- | --- | ---: | ---: | ---: |"]
    for name, model in results.items():
        runs = {(r["route"], r["clients"], r["batching"]): r for r in model["load"]}
        for route in ROUTES.values():
            for clients in sorted({r["clients"] for r in model["load"]}):
                on, off = runs.get((route, clients, True)), runs.get((route, clients, False))
                if on and off and off["requests_per_s"] and off["p95_ms"]:
                    rps = on["requests_per_s"] / off["requests_per_s"]
                    p95 = on["p95_ms"] / off["p95_ms"]
                    lines.append(f"| {name} | {route} | {clients} | {rps:.2f}× | {p95:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="name=MODEL_DIR (repeatable)")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each load run")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--determinism-from", type=Path, help="reuse part 1 from an earlier run's batching.json")
    parser.add_argument("--routes", nargs="+", choices=list(ROUTES), default=list(DEFAULT_ROUTES))
    parser.add_argument("--clients", nargs="+", type=int, default=list(CLIENT_COUNTS))
    parser.add_argument("--append", action="store_true", help="add these load runs to --out's batching.json")
    parser.add_argument("--repeat", type=int, default=1, help="alternate off/on this many times; report medians")
    args = parser.parse_args()
    earlier = json.loads(args.determinism_from.read_text()) if args.determinism_from else {}
    results: dict[str, Any] = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        model_dir = Path(path)
        print(f"[{name}] determinism", flush=True)
        measured = earlier[name]["determinism"] if name in earlier else determinism(model_dir)
        results[name] = {"determinism": measured, "load": []}
        determined = results[name]["determinism"]
        print(
            f"[{name}] differing: {determined['differing_mixed_lengths']} mixed, {determined['differing']}", flush=True
        )
        if args.skip_load:
            continue
        for route in (ROUTES[kind] for kind in args.routes):
            for clients in args.clients:
                runs: dict[int, list[dict[str, Any]]] = {batch: [] for batch in SETTINGS.values()}
                for _ in range(args.repeat):  # off, on, off, on, ...: drifting machine noise hits both alike
                    for batch in SETTINGS.values():
                        runs[batch].append(load_run(model_dir, clients, batch, route, args.seconds))
                        print(f"[{name}] {json.dumps(runs[batch][-1])}", flush=True)
                for batch in SETTINGS.values():
                    results[name]["load"].append(median_run(runs[batch]))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.append:  # these runs replace earlier ones of the same route and clients
        before = json.loads((args.out / "batching.json").read_text())
        for name, model in results.items():
            kept = before.setdefault(name, {"determinism": model["determinism"], "load": []})
            new = {(run["route"], run["clients"]) for run in model["load"]}
            kept["load"] = [r for r in kept["load"] if (r["route"], r["clients"]) not in new] + model["load"]
        results = before
    (args.out / "batching.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results, args.seconds)
    (args.out / "BATCHING.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
