"""Benchmark: the tutorial's transformers pipeline vs the service's engines, measured side by side in one run.

    python bench/bench.py [--quick] [--models distil,smollm2] [--out bench/]

Writes RESULTS.md and results.json to --out: cold start (import, load, first response), warm latency of
a 50-token request (1 greedy sequence; 5 sampled), tokens/s against the memory-bandwidth bound, peak RSS,
CTranslate2 and torch alternatives, quality (perplexity, greedy agreement), targets and Lambda sizing.
Every process-level figure is taken in a fresh subprocess (bench/worker.py); systems are interleaved
round by round so that load from other processes on the machine spreads over all of them.
`--quick` runs everything once on a tiny random GPT-2 (the smoke test); its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "src"), str(ROOT / "tests")]  # bench_report.py, the service, model_factory

import bench_report as report  # noqa: E402

from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR, prepared_compute_type  # noqa: E402

SYSTEMS = ("pipeline", "ctranslate2", "transformers")  # baseline first
CT2_COMPUTE_TYPES = ("int8", "int8_float32", "int16", "float32")
IDLE_CORES = 0.3  # other processes' CPU use, in cores, under which the machine counts as idle
WORKER_TIMEOUT_S = 1800
GREEDY_PROMPT = "Once upon a time"
GREEDY_TOKENS = 20
# Written for this benchmark (not the prepare-time quality text), ~150 words of plain English.
PARAGRAPH = (
    "Every spring, the small harbour town prepares for the return of the fishing boats. Families gather on the "
    "stone pier early in the morning, carrying flasks of tea and warm bread wrapped in cloth. The children race "
    "along the sea wall, counting the masts as they appear on the horizon, while their grandparents tell stories "
    "about storms that kept the fleet away for weeks. When the first boat finally ties up, the crew hands baskets "
    "of fish to the waiting buyers, and the market square fills with noise. Shopkeepers open their doors, the "
    "baker sells out before noon, and the old church bell rings to mark the occasion. By evening, the harbour is "
    "quiet again. The sailors rest, the nets are hung out to dry, and the lights of the cottages shine across the "
    "calm water until the stars come out."
)
PACKAGES = ("torch", "transformers", "ctranslate2", "tokenizers", "numpy", "fastapi", "mangum", "aws-lambda-powertools")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class Options:
    quick: bool
    models: list[str]
    out: Path
    rounds: int  # fresh processes per system and model, interleaved
    runs: int  # warm requests timed per process
    wait_idle_s: float  # before each round, wait up to this long for other processes to go quiet
    cache_dir: Path
    smollm2_dir: Path
    quick_model: Path | None
    render: bool


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="everything once, on a tiny model (smoke test)")
    parser.add_argument("--models", default="distil,smollm2", help="comma-separated: distil, smollm2")
    parser.add_argument("--out", type=Path, help="output directory (default bench/, or a temp dir with --quick)")
    parser.add_argument("--rounds", type=int, help="fresh processes per system (default 3; 1 with --quick)")
    parser.add_argument("--runs", type=int, help="warm requests per process (default 3; 1 with --quick)")
    parser.add_argument("--wait-idle", type=float, help="seconds to wait for an idle machine per round (default 120)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "distilgpt2-api-bench")
    parser.add_argument("--smollm2-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--quick-model", type=Path, help="an already prepared tiny model dir (--quick only)")
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from --out's results.json")
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else BENCH)
    return Options(
        quick=args.quick,
        models=["tiny"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()],
        out=out,
        rounds=args.rounds or (1 if args.quick else 3),
        runs=args.runs or (1 if args.quick else 3),
        wait_idle_s=args.wait_idle if args.wait_idle is not None else (0.0 if args.quick else 120.0),
        cache_dir=args.cache_dir,
        smollm2_dir=args.smollm2_dir,
        quick_model=args.quick_model,
        render=args.render,
    )


# --- machine -------------------------------------------------------------------------------------------


def cpu_busy_jiffies() -> int:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_cores(seconds: float) -> float:
    """Cores in use by every process over `seconds` (this one sleeps meanwhile)."""
    before = cpu_busy_jiffies()
    time.sleep(seconds)
    return (cpu_busy_jiffies() - before) / os.sysconf("SC_CLK_TCK") / seconds


def wait_for_idle(max_wait_s: float) -> dict[str, float]:
    """Wait until other processes use under IDLE_CORES cores (or max_wait_s passes); return what was seen."""
    started = time.time()
    while True:
        busy = busy_cores(2.0 if max_wait_s > 0 else 0.2)
        waited = time.time() - started
        if busy < IDLE_CORES or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "busy_cores": round(busy, 2)}


def machine_info(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags_line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0]
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gb": round(int(meminfo.split()[1]) / 2**20, 1),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def memory_bandwidth(quick: bool) -> dict[str, Any]:
    """numpy copy of a large array, 1 and 2 threads: GB/s counting bytes read plus bytes written."""
    import numpy as np

    size = (64 if quick else 512) * 2**20
    repeats = 2 if quick else 5
    src = np.ones(size // 8)
    dst = np.empty_like(src)

    def copy(threads: int) -> float:
        parts = np.array_split(np.arange(src.size), threads)
        spans = [(int(p[0]), int(p[-1]) + 1) for p in parts]
        workers = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in spans]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return 2 * size / (time.perf_counter() - started) / 1e9

    copy(1)  # touches every page once
    return {
        "array_mb": size // 2**20,
        "copy_gbps_1_thread": max(copy(1) for _ in range(repeats)),
        "copy_gbps_2_threads": max(copy(2) for _ in range(repeats)),
        "method": "numpy copyto, best of repeats, (bytes read + bytes written) / time",
    }


# --- models --------------------------------------------------------------------------------------------


def prepare_tiny(workdir: Path) -> Path:
    from distilgpt2_api.model_store.convert import convert_for_ctranslate2

    from model_factory import build_tiny_gpt2

    path = build_tiny_gpt2(workdir / "tiny-gpt2")
    convert_for_ctranslate2(path)
    return path


def prepare_distil(cache_dir: Path) -> Path:
    """distilgpt2's shape (6 layers, 768 wide, 50257 tokens) with random weights, built once and cached.

    Its tokenizer is a byte-level BPE of GPT-2's size (50,000 merges, no padding tokens): tokens added on
    top of a small BPE would make the pipeline's decoding, not its model, the baseline's cost."""
    path = cache_dir / "distilgpt2-shape-v2"  # v1 padded a 1,000-token BPE with 49,257 added tokens
    if (path / "ctranslate2-int8" / "model.bin").is_file():
        return path
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from distilgpt2_api.model_store import write_manifest
    from distilgpt2_api.model_store.convert import convert_for_ctranslate2

    from model_factory import EOS, build_gpt2_size_tokenizer

    shutil.rmtree(path, ignore_errors=True)
    tokenizer = build_gpt2_size_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        n_layer=6,
        n_embd=768,
        n_head=12,
        vocab_size=len(tokenizer),
        n_positions=1024,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        # A zero EOS row in the tied embedding gives EOS logit 0, far below the best of 50k random
        # logits: random weights never end a 50-token request early, so every system times 50 steps.
        model.transformer.wte.weight[eos_id] = 0
    path.mkdir(parents=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_manifest(path, source="local", model_id="distilgpt2-shape-random")
    convert_for_ctranslate2(path)
    return path


def params_read_per_token(model_dir: Path) -> dict[str, Any]:
    """Weights a decode step reads: every 2-D matrix, minus lookup tables (position embeddings; the token
    embedding too unless it doubles as the output projection, as in tied models)."""
    raw = (model_dir / "model.safetensors").read_bytes()[:8]
    header_len = int.from_bytes(raw, "little")
    with (model_dir / "model.safetensors").open("rb") as file:
        file.seek(8)
        header = json.loads(file.read(header_len))
    matrices = {
        name: info["shape"][0] * info["shape"][1]
        for name, info in header.items()
        if name != "__metadata__" and len(info["shape"]) == 2
    }
    lookups = {n for n in matrices if "wpe" in n or "position" in n}
    if any(n.endswith("lm_head.weight") for n in matrices):
        lookups |= {n for n in matrices if "wte" in n or "embed_tokens" in n}
    counted = {n: v for n, v in matrices.items() if n not in lookups}
    total = sum(
        info["shape"][0] * (info["shape"][1] if len(info["shape"]) > 1 else 1)
        for name, info in header.items()
        if name != "__metadata__"
    )
    return {"params": sum(counted.values()), "all_params": total, "excluded": sorted(lookups)}


# --- subprocesses --------------------------------------------------------------------------------------


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {"MODEL_DIR", "ENGINE", "THREADS", "COMPUTE_TYPE", "MODEL_S3_URI", "SERVED_MODEL_NAME", "CT2_USE_MKL"}
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update(extra)
    return env


def run_worker(mode: str, args: dict[str, Any], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Run bench/worker.py MODE in a fresh process; its result, plus spawn time and others' CPU load meanwhile."""
    stamp = f"{mode}-{time.monotonic_ns()}"
    args_file, out_file, log_file = (workdir / f"{stamp}.{ext}" for ext in ("args.json", "out.json", "log"))
    args_file.write_text(json.dumps(args))
    busy_before, children_before = cpu_busy_jiffies(), children_cpu_s()
    with log_file.open("w") as log:
        spawn = time.time()
        proc = subprocess.run(
            [sys.executable, str(BENCH / "worker.py"), mode, str(args_file), str(out_file)],
            env=worker_env(env),
            stdout=log,  # the service logs JSON lines to stdout: keep them out of the way
            stderr=subprocess.STDOUT,
            timeout=WORKER_TIMEOUT_S,
            check=False,
        )
        wall = time.time() - spawn
    if proc.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"bench worker {mode} failed ({proc.returncode}); log {log_file}:\n{tail}")
    result: dict[str, Any] = json.loads(out_file.read_text())
    busy_s = (cpu_busy_jiffies() - busy_before) / os.sysconf("SC_CLK_TCK")
    result["spawn"] = spawn
    result["wall_s"] = wall
    # CPU that other processes used while this worker ran: > ~0.3 cores means contended figures.
    result["foreign_load_cores"] = max(0.0, busy_s - (children_cpu_s() - children_before)) / wall
    return result


def cold_start(result: dict[str, Any]) -> dict[str, float]:
    times = result["times"]
    return {
        "interpreter_s": result["t_start"] - result["spawn"],
        "import_s": times["import"] - result["t_start"],
        "load_s": times["load"] - times["import"],
        "first_response_s": times["first_response"] - times["load"],
        "total_s": times["first_response"] - result["spawn"],
    }


def merge_runs(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's figures over every round: medians of cold-start parts, of all warm runs, of peak RSS."""
    colds = [cold_start(r) for r in results]
    merged: dict[str, Any] = {
        "processes": len(results),
        "cold_start": {k: statistics.median(c[k] for c in colds) for k in colds[0]},
        "cold_start_totals_s": [c["total_s"] for c in colds],
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
        "threads": results[0]["threads"],
        "compute": results[0]["compute"],
        "foreign_load_cores": [round(r["foreign_load_cores"], 2) for r in results],
        "warm": {},
    }
    for kind in results[0]["warm"]:
        runs = [s for r in results for s in r["warm"][kind]["runs_s"]]
        tokens = [t for r in results for t in r["warm"][kind]["tokens"]]
        median = statistics.median(runs)
        merged["warm"][kind] = {
            "median_s": median,
            "runs_s": runs,
            "tokens": statistics.median(tokens),
            "tokens_per_s": statistics.median(tokens) / median,
        }
    if "per_request_pipeline_s" in results[0]:
        merged["per_request_pipeline_s"] = statistics.median(r["per_request_pipeline_s"] for r in results)
    return merged


# --- one model -----------------------------------------------------------------------------------------


def bench_model(name: str, model_dir: Path, options: Options, workdir: Path) -> dict[str, Any]:
    log(f"[{name}] systems: {options.rounds} round(s) of {', '.join(SYSTEMS)}")
    per_system: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    idle: list[dict[str, float]] = []
    for round_index in range(options.rounds):
        idle.append(wait_for_idle(options.wait_idle_s))
        shift = round_index % len(SYSTEMS)  # rotate the order so no system always runs first
        for system in SYSTEMS[shift:] + SYSTEMS[:shift]:
            if system == "pipeline":
                result = run_worker("pipeline", {"model_dir": str(model_dir), "runs": options.runs}, {}, workdir)
            else:
                # A long time budget: on a busy machine a slow request must finish, not be cut short.
                env = {"MODEL_DIR": str(model_dir), "ENGINE": system, "MAX_REQUEST_SECONDS": "600"}
                env["GATEWAY_TIMEOUT_SECONDS"] = "900"
                result = run_worker("engine", {"runs": options.runs}, env, workdir)
            per_system[system].append(result)
            log(f"[{name}] round {round_index + 1} {system}: cold {cold_start(result)['total_s']:.2f} s")
    systems = {s: merge_runs(rs) for s, rs in per_system.items()}

    log(f"[{name}] quality, torch dynamic quantization")
    ct2_args = {"model_dir": str(model_dir), "ct2_subdir": "ctranslate2-int8"}
    prepared = prepared_compute_type(model_dir / CT2_SUBDIR)
    quality = run_worker(
        "quality",
        {
            **ct2_args,
            "paragraph": PARAGRAPH,
            "greedy_prompt": GREEDY_PROMPT,
            "greedy_tokens": GREEDY_TOKENS,
            "compute_types": sorted({"int8", prepared}),
            "torch_threads": [1] if options.quick else [1, 2],
            "runs": options.runs,
        },
        {},
        workdir,
    )
    score = {"score_tokens": quality.pop("score_tokens"), "score_ids": quality.pop("score_ids")}

    # CTranslate2 picks Intel MKL on Intel CPUs and oneDNN on others (CT2_USE_MKL overrides): the
    # alternative is whichever backend the default is not.
    intel = "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    default_backend = "default (Intel MKL on Intel)" if intel else "default (oneDNN on AMD)"
    other_backend, other_env = ("oneDNN (CT2_USE_MKL=0)", "0") if intel else ("Intel MKL (CT2_USE_MKL=1)", "1")
    log(f"[{name}] alternatives: CTranslate2 compute types and threads")
    ct2_default = run_worker(
        "ct2_alt",
        {
            **ct2_args,
            **score,
            "backend": default_backend,
            "compute_types": list(CT2_COMPUTE_TYPES),
            "threads": [1, 2],
            "runs": options.runs,
            "engine_threads": True,
        },
        {},
        workdir,
    )
    log(f"[{name}] alternatives: CTranslate2 with {other_backend}")
    ct2_other = run_worker(
        "ct2_alt",
        {
            **ct2_args,
            **score,
            "backend": other_backend,
            "compute_types": list(CT2_COMPUTE_TYPES),
            "threads": [2],
            "runs": 1,  # a first look at the other backend: one run per compute type
        },
        {"CT2_USE_MKL": other_env},
        workdir,
    )
    flags = machine_info()["cpu_flags"]
    bf16 = flags["avx512_bf16"] or flags["amx_bf16"]
    return {
        "path": str(model_dir),
        "prepared_compute_type": prepared,
        "weights": params_read_per_token(model_dir),
        "idle_before_rounds": idle,
        "systems": systems,
        "quality": quality,
        "alternatives": {
            "ct2": [ct2_default, ct2_other],
            "engine_threads": ct2_default.pop("engine_threads"),
            "torch_dynamic_quantization": quality.pop("torch_dynamic_quantization"),
            "bf16": {
                "supported": bf16,
                "measured": False,
                "reason": "CPU has avx512_bf16/amx_bf16; not measured"
                if bf16
                else "no avx512_bf16 or amx_bf16 in /proc/cpuinfo: bf16 matmuls would be emulated, so not tried",
            },
        },
    }


def log(message: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.render:
        results = json.loads((options.out / "results.json").read_text())
        report.add_derived(results)
        (options.out / "RESULTS.md").write_text(report.markdown(results))
        return 0
    started = time.time()
    options.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "schema": 1,
        "quick": options.quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {"rounds": options.rounds, "runs": options.runs, "wait_idle_s": options.wait_idle_s},
        "machine": machine_info(),
    }
    log(f"memory bandwidth (idle: {wait_for_idle(options.wait_idle_s)})")
    results["memory_bandwidth"] = memory_bandwidth(options.quick)
    results["models"] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        for name in options.models:
            if name == "tiny":
                model_dir = options.quick_model or prepare_tiny(workdir)
            elif name == "distil":
                log("[distil] preparing the distilgpt2-shaped model (cached)")
                model_dir = prepare_distil(options.cache_dir)
            elif name == "smollm2":
                model_dir = options.smollm2_dir
                if not (model_dir / "ctranslate2-int8" / "model.bin").is_file():
                    raise SystemExit(f"{model_dir} is not a prepared model (no ctranslate2-int8/model.bin)")
            else:
                raise SystemExit(f"unknown model {name!r}: choose from distil, smollm2")
            results["models"][name] = bench_model(name, model_dir, options, workdir)
    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results["duration_s"] = round(time.time() - started, 1)
    report.add_derived(results)
    (options.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (options.out / "RESULTS.md").write_text(report.markdown(results))
    log(f"wrote {options.out / 'RESULTS.md'} and results.json in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
