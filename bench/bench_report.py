"""Figures derived from bench/bench.py's measurements (bounds, targets, Lambda sizing), and RESULTS.md."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Targets from the performance issue, all against the once-created pipeline in the same run.
WARM_SPEEDUP_MIN = 3.0
COLD_RATIO_MAX = 0.5
COLD_SMOLLM2_MAX_S = 10.0
RSS_RATIO_MAX = 0.6
QUALITY_TOLERANCE = 0.05

# AWS Lambda, x86, published prices: per GB-second and per request; one vCPU-equivalent per 1,769 MB.
LAMBDA_GB_SECOND_USD = 0.0000166667
LAMBDA_REQUEST_USD = 0.20 / 1_000_000
LAMBDA_MB_PER_VCPU = 1769
LAMBDA_MEMORY_SIZES_MB = (1024, 1769, 2048, 3008, 3538)

TITLES = {
    "tiny": "tiny GPT-2 (2 layers, random weights; --quick: timings are meaningless)",
    "distil": "distilgpt2-shaped GPT-2 (6 layers, 768 wide, 50,257 tokens, random weights)",
    "smollm2": "SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide, 49,152 tokens)",
}


def bytes_per_param(compute: str) -> int:
    """Bytes of weight read per parameter by a compute type (int8 arithmetic reads int8 weights)."""
    if compute.startswith("int8"):
        return 1
    if compute.startswith("int16"):
        return 2
    return 4  # float32: CTranslate2 dequantizes int8-stored weights at load, torch is fp32


def add_derived(results: dict[str, Any]) -> None:
    bandwidth = results["memory_bandwidth"]["copy_gbps_2_threads"] * 1e9
    targets: list[dict[str, Any]] = []
    for name, model in results["models"].items():
        systems = model["systems"]
        params = model["weights"]["params"]
        model["bounds"] = {}
        for system, figures in systems.items():
            per_token = params * bytes_per_param(figures["compute"])
            bound = bandwidth / per_token
            model["bounds"][system] = {
                "bytes_per_token": per_token,
                "tokens_per_s_bound": bound,
                "percent_of_bound": 100 * figures["warm"]["greedy"]["tokens_per_s"] / bound,
            }
        targets += model_targets(name, systems)
        quality = model["quality"]
        reference = quality["perplexity"]["transformers_float32"]
        quality["relative_difference"] = {
            k: v / reference - 1 for k, v in quality["perplexity"].items() if k != "transformers_float32"
        }
        model["lambda_sizing"] = lambda_sizing(model)
    results["targets"] = targets


def model_targets(name: str, systems: dict[str, Any]) -> list[dict[str, Any]]:
    base, fast = systems["pipeline"], systems["ctranslate2"]
    speedup = base["warm"]["greedy"]["median_s"] / fast["warm"]["greedy"]["median_s"]
    cold_ratio = fast["cold_start"]["total_s"] / base["cold_start"]["total_s"]
    rows = [
        target(name, "warm 50-token greedy: pipeline ÷ ctranslate2 latency", speedup, f"≥ {WARM_SPEEDUP_MIN:g}×"),
        target(name, "cold start to first response: ctranslate2 ÷ pipeline", cold_ratio, f"≤ {COLD_RATIO_MAX:.0%}"),
    ]
    rows[0]["passed"] = speedup >= WARM_SPEEDUP_MIN
    rows[1]["passed"] = cold_ratio <= COLD_RATIO_MAX
    if name == "smollm2":
        total = fast["cold_start"]["total_s"]
        rows.append(target(name, "cold start to first response, ctranslate2 (s)", total, f"≤ {COLD_SMOLLM2_MAX_S:g} s"))
        rows[-1]["passed"] = total <= COLD_SMOLLM2_MAX_S
    if name in ("distil", "tiny"):
        rss_ratio = fast["peak_rss_mb"] / base["peak_rss_mb"]
        rows.append(target(name, "peak RSS serving: ctranslate2 ÷ pipeline", rss_ratio, f"≤ {RSS_RATIO_MAX:.0%}"))
        rows[-1]["passed"] = rss_ratio <= RSS_RATIO_MAX
    return rows


def target(model: str, what: str, value: float, threshold: str) -> dict[str, Any]:
    return {"model": model, "target": what, "value": value, "threshold": threshold, "passed": False}


def lambda_sizing(model: dict[str, Any]) -> dict[str, Any]:
    """Estimated duration and cost per 1,000 requests at several Lambda memory sizes, from 1- and 2-thread latency.

    Model: Lambda gives M/1769 vCPUs of CPU time. One thread needs one vCPU: duration t1 / min(1, share).
    Two threads keep two vCPUs busy: duration t2 * max(1, 2 / share) (a CPU quota below 2 stretches them).
    The cheaper of the two thread counts is shown.
    """
    threads = {row["threads"]: row for row in model["alternatives"]["engine_threads"]}
    engine = model["systems"]["ctranslate2"]
    rows = []
    for memory in LAMBDA_MEMORY_SIZES_MB:
        share = memory / LAMBDA_MB_PER_VCPU
        row: dict[str, Any] = {"memory_mb": memory, "vcpu_share": share, "fits": memory >= 1.25 * engine["peak_rss_mb"]}
        for kind in ("greedy", "sampled"):
            options = {}
            if 1 in threads:
                options[1] = threads[1][kind]["median_s"] / min(1.0, share)
            if 2 in threads:
                options[2] = threads[2][kind]["median_s"] * max(1.0, 2 / share)
            best = min(options, key=lambda t: options[t])
            seconds = options[best]
            row[kind] = {
                "threads": best,
                "duration_s": seconds,
                "usd_per_1000": 1000 * (seconds * memory / 1024 * LAMBDA_GB_SECOND_USD + LAMBDA_REQUEST_USD),
            }
        row["cold_start_usd"] = engine["cold_start"]["total_s"] * memory / 1024 * LAMBDA_GB_SECOND_USD
        rows.append(row)
    return {
        "latency_by_threads": {
            t: {k: threads[t][k]["median_s"] for k in ("greedy", "sampled")} for t in sorted(threads)
        },
        "peak_rss_mb": engine["peak_rss_mb"],
        "rows": rows,
    }


# --- markdown ------------------------------------------------------------------------------------------


def s(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.0f} ms"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    machine, bandwidth = results["machine"], results["memory_bandwidth"]
    out = [
        "# Benchmark results\n",
        f"`python bench/bench.py{' --quick' if results['quick'] else ''}`, {results['started_at']}, "
        f"{results['duration_s']:.0f} s. {results['options']['rounds']} fresh process(es) per system and model, "
        f"interleaved; {results['options']['runs']} warm request(s) timed in each; figures are medians. "
        "Ratios compare systems measured in this same run.\n",
    ]
    if results["quick"]:
        out.append("**Quick mode: a tiny model, single runs. The timings mean nothing; this checks the harness.**\n")
    flags = ", ".join(f for f, present in machine["cpu_flags"].items() if present) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    out.append("## Machine\n")
    out.append(
        table(
            ["", ""],
            [
                [
                    "CPU",
                    f"{machine['cpu_model']} ({machine['logical_cpus']} logical CPUs, {machine['usable_cpus']} usable)",
                ],
                ["SIMD flags", flags],
                ["memory", f"{machine['memory_gb']} GB"],
                [
                    "memory bandwidth",
                    f"{bandwidth['copy_gbps_1_thread']:.1f} GB/s (1 thread), {bandwidth['copy_gbps_2_threads']:.1f} "
                    f"GB/s (2 threads): {bandwidth['method']}, {bandwidth['array_mb']} MB arrays",
                ],
                ["software", f"Python {machine['python']}, kernel {machine['kernel']}, {versions}"],
                [
                    "load average",
                    f"start {' '.join(machine['loadavg_start'])}, end {' '.join(machine.get('loadavg_end', []))}",
                ],
            ],
        )
    )
    for name, model in results["models"].items():
        out.append(model_section(name, model))
    out.append("## Targets\n")
    out.append(
        table(
            ["model", "target", "measured", "threshold", "result"],
            [
                [t["model"], t["target"], f"{t['value']:.2f}", t["threshold"], "pass" if t["passed"] else "**fail**"]
                for t in results["targets"]
            ],
        )
    )
    out.append(lambda_section(results))
    return "\n".join(out)


def model_section(name: str, model: dict[str, Any]) -> str:
    systems, bounds = model["systems"], model["bounds"]
    base = systems["pipeline"]
    label = {
        "pipeline": "baseline: `pipeline()` created once",
        "ctranslate2": "ENGINE=ctranslate2 (default)",
        "transformers": "ENGINE=transformers",
    }
    out = [f"## {TITLES.get(name, name)}\n", f"`{model['path']}`\n"]
    out.append("### Cold start: fresh process to first 50-token response\n")
    rows = []
    for system, f in systems.items():
        c = f["cold_start"]
        rows.append(
            [
                label[system],
                s(c["interpreter_s"]),
                s(c["import_s"]),
                s(c["load_s"]),
                s(c["first_response_s"]),
                f"**{s(c['total_s'])}**",
                f"{c['total_s'] / base['cold_start']['total_s']:.0%}",
            ]
        )
    out.append(
        table(["system", "interpreter", "imports", "model load", "first response", "total", "vs baseline"], rows)
    )
    out.append(
        "Engines: imports = web stack, Lambda glue and the engine's library; model load = `import handler` "
        "(imports `distilgpt2_api.api`); first response = `handler.handler` with an HTTP API POST /generate "
        "event. Baseline: `from transformers import pipeline`, `pipeline(...)`, first call. The OS page cache "
        f"is warm (files read before). A pipeline created per request costs {s(base['per_request_pipeline_s'])} "
        "per request (once measured per process).\n"
    )
    out.append("### Warm requests: 50 new tokens\n")
    rows = []
    for system, f in systems.items():
        w = f["warm"]
        speed = base["warm"]["greedy"]["median_s"] / w["greedy"]["median_s"]
        speed_sampled = base["warm"]["sampled"]["median_s"] / w["sampled"]["median_s"]
        rows.append(
            [
                label[system],
                f"{f['compute']}, {f['threads']} thr",
                f"**{s(w['greedy']['median_s'])}**",
                f"{w['greedy']['tokens_per_s']:.1f}",
                f"{speed:.2f}×",
                f"{bounds[system]['percent_of_bound']:.0f}%",
                s(w["sampled"]["median_s"]),
                f"{w['sampled']['tokens_per_s']:.1f}",
                f"{speed_sampled:.2f}×",
                s(w["sampled_seeded"]["median_s"]) if "sampled_seeded" in w else "–",
                s(w["handler_greedy"]["median_s"]) if "handler_greedy" in w else "–",
                f"{f['peak_rss_mb']:.0f} MB ({f['peak_rss_mb'] / base['peak_rss_mb']:.0%})",
            ]
        )
    out.append(
        table(
            [
                "system",
                "compute",
                "greedy 1×50",
                "tok/s",
                "speed-up",
                "% of bw bound",
                "sampled 5×50",
                "tok/s",
                "speed-up",
                "sampled, seeded",
                "greedy via handler",
                "peak RSS (vs baseline)",
            ],
            rows,
        )
    )
    weights = model["weights"]
    out.append(
        f"Bandwidth bound: {weights['params'] / 1e6:.1f} M weights read per token (every matrix incl. the output "
        f"projection; excluded lookups: {', '.join(weights['excluded']) or 'none'}; {weights['all_params'] / 1e6:.1f} "
        "M parameters in all) × bytes per weight (float32 4, int8 1) against the 2-thread copy bandwidth: "
        + ", ".join(f"{k} ≤ {v['tokens_per_s_bound']:.0f} tok/s" for k, v in bounds.items())
        + ". Processes: "
        + ", ".join(f"{k} {v['processes']}" for k, v in systems.items())
        + "; other processes' CPU use during each (cores): "
        + "; ".join(f"{k} {v['foreign_load_cores']}" for k, v in systems.items())
        + ". In-process = `Scheduler.generate_blocking`; sampled uses top-k 50 like the tutorial route; "
        "seeded adds `seed`.\n"
    )
    out.append(alternatives_section(model))
    out.append(quality_section(model["quality"]))
    return "\n".join(out)


def alternatives_section(model: dict[str, Any]) -> str:
    alt = model["alternatives"]
    engine_default = model["systems"]["ctranslate2"]["warm"]["greedy"]["median_s"]
    out = ["### Alternatives\n", "CTranslate2 directly (`Generator.generate_batch`, exactly 50 greedy tokens):\n"]
    rows = []
    for run in alt["ct2"]:
        for row in run["rows"]:
            if "skipped" in row:
                rows.append([run["backend"], row["compute_type"], "–", "–", "–", "–", "–", row["skipped"]])
                continue
            rows.append(
                [
                    run["backend"],
                    f"{row['compute_type']} → {row['resolved_compute_type']}",
                    str(row["threads"]),
                    s(row["greedy"]["median_s"]),
                    f"{row['greedy']['tokens_per_s']:.1f}",
                    f"{row['perplexity']:.2f}",
                    f"{row['rss_added_mb']:.0f} MB",
                    f"load {s(row['load_s'])}",
                ]
            )
    out.append(
        table(["backend", "compute type", "threads", "greedy 50", "tok/s", "perplexity", "RSS added", "note"], rows)
    )
    out.append(
        f"The service's engine ({model['prepared_compute_type']}, chosen at prepare time) in this run: "
        f"{s(engine_default)} for the same request (stops at EOS, includes tokenization).\n"
    )
    rows = [
        [
            str(r["threads"]),
            r["compute_type"],
            s(r["greedy"]["median_s"]),
            f"{r['greedy']['tokens_per_s']:.1f}",
            s(r["sampled"]["median_s"]),
        ]
        for r in alt["engine_threads"]
    ]
    out.append("The engine (`load_engine(..., threads=N)`), for Lambda sizing:\n")
    out.append(table(["threads", "compute type", "greedy 1×50", "tok/s", "sampled 5×50"], rows))
    torch_alt = alt["torch_dynamic_quantization"]
    modules = torch_alt["modules"]
    rows = [
        [r["variant"], str(r["threads"]), s(r["greedy"]["median_s"]), f"{r['greedy']['tokens_per_s']:.1f}"]
        for r in torch_alt["rows"]
    ]
    out.append(
        "torch: `torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8)` vs float32 "
        f"(`model.generate`, 50 greedy tokens). The model has {modules['nn.Linear']} nn.Linear and "
        f"{modules['Conv1D']} Conv1D modules; {modules['quantized_by_quantize_dynamic']} were quantized "
        "(GPT-2's attention and MLP are Conv1D, which quantize_dynamic skips: only its lm_head is nn.Linear). "
        f"Perplexity float32 {torch_alt['perplexity']['float32']:.2f}, dynamic int8 "
        f"{torch_alt['perplexity']['dynamic_int8']:.2f}.\n"
    )
    out.append(table(["variant", "threads", "greedy 50", "tok/s"], rows))
    out.append(f"bf16: {alt['bf16']['reason']}.\n")
    return "\n".join(out)


def quality_section(quality: dict[str, Any]) -> str:
    reference = quality["perplexity"]["transformers_float32"]
    rows = [["transformers float32 (reference)", f"{reference:.3f}", "–", "–"]]
    for key, value in quality["perplexity"].items():
        if key == "transformers_float32":
            continue
        diff = quality["relative_difference"][key]
        rows.append([key, f"{value:.3f}", f"{diff:+.1%}", "yes" if diff <= QUALITY_TOLERANCE else "**no**"])
    out = [
        "### Quality\n",
        f"Perplexity of a fixed ~150-word English paragraph ({quality['scored_tokens']} scored tokens, the same "
        "token ids for both engines; CTranslate2 via `Generator.score_batch`):\n",
        table(["engine", "perplexity", "vs reference", "within 5%"], rows),
    ]
    greedy = quality["greedy"]
    out.append("Greedy, 20 new tokens after “Once upon a time”:\n")
    rows = [["transformers float32", repr(greedy["transformers_float32"]["text"]), "reference"]]
    for key, entry in greedy.items():
        if key != "transformers_float32":
            rows.append([key, repr(entry["text"]), "identical" if entry["identical"] else "**differs**"])
    out.append(table(["engine", "text", "tokens"], rows))
    for key, entry in greedy.items():
        d = entry.get("first_divergence")
        if d:
            fp32_top = ", ".join(f"{t['token']!r} {t['logit']:.2f} (p {t['prob']:.3f})" for t in d["float32_top2"])
            ct2_top = ", ".join(f"{t['token']!r} {t['logit']:.2f} (p {t['prob']:.3f})" for t in d["ctranslate2_top2"])
            out.append(
                f"{key} first differs at step {d['step']}: float32 chose {d['float32_chose']!r}, {key} chose "
                f"{d['ctranslate2_chose']!r}. float32 top-2 logits there: {fp32_top} (margin "
                f"{d['float32_margin']:.3f}); {key} top-2: {ct2_top} (margin {d['ctranslate2_margin']:.3f}).\n"
            )
    return "\n".join(out)


def lambda_section(results: dict[str, Any]) -> str:
    out = [
        "## Lambda sizing (ENGINE=ctranslate2)\n",
        f"Estimate: Lambda gives memory/{LAMBDA_MB_PER_VCPU} vCPUs of CPU time; one thread runs at "
        "t1 / min(1, share), two threads at t2 × max(1, 2 / share); the faster is shown. x86 price "
        f"${LAMBDA_GB_SECOND_USD} per GB-second plus $0.20 per million requests. 'fits' = memory ≥ 1.25 × "
        "the measured peak RSS.\n",
    ]
    for name, model in results["models"].items():
        sizing = model["lambda_sizing"]
        latency = "; ".join(
            f"{t} thread(s): greedy {s(v['greedy'])}, sampled 5×50 {s(v['sampled'])}"
            for t, v in sizing["latency_by_threads"].items()
        )
        out.append(f"**{name}**: {latency}; peak RSS {sizing['peak_rss_mb']:.0f} MB.\n")
        rows = [
            [
                f"{r['memory_mb']} MB",
                f"{r['vcpu_share']:.2f}",
                "yes" if r["fits"] else "no",
                f"{s(r['greedy']['duration_s'])} ({r['greedy']['threads']} thr)",
                f"${r['greedy']['usd_per_1000']:.4f}",
                f"{s(r['sampled']['duration_s'])} ({r['sampled']['threads']} thr)",
                f"${r['sampled']['usd_per_1000']:.4f}",
                f"${r['cold_start_usd']:.6f}",
            ]
            for r in sizing["rows"]
        ]
        out.append(
            table(
                [
                    "memory",
                    "vCPUs",
                    "fits",
                    "greedy 1×50",
                    "per 1,000",
                    "sampled 5×50",
                    "per 1,000",
                    "one cold start (init billed)",
                ],
                rows,
            )
        )
    return "\n".join(out)


def machine_section(machine: dict[str, Any], extra: Sequence[list[str]] = ()) -> str:
    """The `## Machine` table of a side-by-side benchmark: CPU, SIMD flags, memory, software (and `extra` rows)."""
    flags = ", ".join(f for f, present in machine["cpu_flags"].items() if present)
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    start, end = " ".join(machine["loadavg_start"]), " ".join(machine.get("loadavg_end", []))
    rows = [
        ["CPU", f"{machine['cpu_model']} ({machine['logical_cpus']} logical CPUs, {machine['usable_cpus']} usable)"],
        ["SIMD flags", flags],
        ["memory", f"{machine['memory_gb']} GB"],
        ["software", f"Python {machine['python']}, kernel {machine['kernel']}, {versions}"],
        *extra,
        ["load average", f"start {start}, end {end}"],
    ]
    return "## Machine\n\n" + table(["", ""], rows)


def noise_section(results: dict[str, Any], measured: str) -> str:
    """What else used the CPU during each part (`results["noise"]`), besides `measured` (this benchmark and ...)."""
    rows = [
        [part, f"{v['foreign_load_cores']:.2f}", "<br>".join(p.replace("|", "/") for p in v["busiest_processes"][:3])]
        for part, v in results.get("noise", {}).items()
    ]
    return (
        "### What else ran\n\n"
        f"CPU used by processes other than {measured}, averaged over each part (2 cores in all), and the busiest of "
        "them when the part began:\n\n" + table(["part", "others' CPU, cores", "busiest other processes"], rows)
    )


def targets_section(results: dict[str, Any]) -> list[str]:
    """`## Targets`: each target's measured value, threshold and whether it was met (nothing if none)."""
    if not results.get("targets"):
        return []
    rows = [
        [t["target"], t["value"], t["threshold"], "met" if t["passed"] else "**not met**"] for t in results["targets"]
    ]
    return ["## Targets\n", table(["target", "measured", "threshold", "result"], rows)]
