"""The worst request the limits allow, through `handler.handler`: peak RSS and duration per model and engine.

    python bench/worst_case.py --model smollm2=models/default --build-distil-shape /tmp/worstcase \
        --verify 4096 --wait-idle 60 --out bench
    python bench/worst_case.py --model smollm2=models/default --verify 3072 --verify 2048 --verify-only --out bench
    python bench/worst_case.py --model smollm2=models/default --warm 3072 --rounds 5 --verify-only --out bench

The limits allow MAX_PROMPT_CHARS (8000) characters, num_return_sequences 8 and max_new_tokens 512. For
every model and engine, fresh processes (peak RSS is per process) import handler (the cold start), then
send POST /generate with do_sample=true, n=8, max_new_tokens=512 and 8000 characters of English; when
that exceeds the model's context (a 400), also the prompt trimmed to context - 512 tokens. That runs with
the service's defaults, then with MAX_BATCH_TOKENS lifted: under the default time budget (25 s), and
uncut (MAX_REQUEST_SECONDS 600), where a prefill probe (max_new_tokens=1) follows. `--verify N` then sends
the extremes a MAX_BATCH_TOKENS of N admits, each alone, with the default budget and uncut; `--warm N` sends
them all, --rounds times over, to one process, as a warm instance would get them.
Writes worst_case.json and WORST_CASE.md to --out; `--render` only rewrites the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "src"), str(ROOT / "tests")]

PROMPT_CHARS = 8000  # MAX_PROMPT_CHARS
SEQUENCES = 8  # MAX_RETURN_SEQUENCES
NEW_TOKENS = 512  # MAX_NEW_TOKENS_LIMIT
ENGINES = ("ctranslate2", "transformers")
UNCUT = {"MAX_REQUEST_SECONDS": "600", "GATEWAY_TIMEOUT_SECONDS": "900"}
NO_BATCH_LIMIT = {"MAX_BATCH_TOKENS": str(10**9)}
CONFIGS = {  # label: environment
    "defaults": {},
    "no batch limit": NO_BATCH_LIMIT,
    "no batch limit, uncut": {**NO_BATCH_LIMIT, **UNCUT},
}
DEFAULT_BUDGET_S = 25.0
LAMBDA_MEMORY_MB = 1769  # template.yaml's default MemorySize
HEADROOM_MB = 300  # the Lambda runtime and the rest of the process
CHILD_TIMEOUT_S = 900


# --- the measured process ------------------------------------------------------------------------------


def child(args_file: Path, out_file: Path) -> None:
    """Runs in a fresh process with MODEL_DIR and ENGINE set: import handler, then each request in turn."""
    sys.path[:0] = [str(ROOT)]  # handler.py
    from worker import LambdaContext, current_rss_mb, peak_rss_mb

    from event_factory import http_api_event, response_json

    requests = json.loads(args_file.read_text())
    started = time.perf_counter()
    import handler  # loads the model

    result: dict[str, Any] = {
        "load_s": time.perf_counter() - started,
        "rss_after_load_mb": current_rss_mb(),
        "peak_rss_after_load_mb": peak_rss_mb(),
        "requests": [],
    }
    for request in requests:
        body = {
            "prompt": request["prompt"],
            "do_sample": True,
            "num_return_sequences": request["n"],
            "max_new_tokens": request["max_new_tokens"],
        }
        started = time.perf_counter()
        response = handler.handler(http_api_event("POST", "/generate", body=body), LambdaContext())
        row: dict[str, Any] = {
            "label": request["label"],
            "n": request["n"],
            "prompt_chars": len(request["prompt"]),
            "max_new_tokens": request["max_new_tokens"],
            "status": response["statusCode"],
            "seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(),
            "rss_mb": current_rss_mb(),
        }
        answer = response_json(response)
        if response["statusCode"] == 200:
            row["prompt_tokens"] = answer["usage"]["prompt_tokens"]
            row["completion_tokens"] = answer["usage"]["completion_tokens"]
            row["finish_reasons"] = dict(Counter(answer["finish_reasons"]))
        else:
            row["error"] = answer.get("error")
        result["requests"].append(row)
        out_file.write_text(json.dumps(result))  # what was measured survives a later timeout


# --- the parent ----------------------------------------------------------------------------------------


def english_text(chars: int) -> str:
    """Exactly `chars` characters of plain English: the tests' corpus, repeated."""
    corpus = " ".join((ROOT / "tests" / "data" / "corpus.txt").read_text().split())
    return ((corpus + " ") * (chars // len(corpus) + 1))[:chars]


def digits_text(chars: int) -> str:
    """`chars` digits: one token each for both tokenizers, the most tokens 8000 characters of ASCII make."""
    return "".join(str(i * 7 % 10) for i in range(chars))


def trimmed(tokenizer: Any, text: str, tokens: int) -> str:
    """The longest prefix of `text` that is at most `tokens` tokens."""
    encoding = tokenizer.encode(text)
    if len(encoding.ids) <= tokens:
        return text
    end = encoding.offsets[tokens - 1][1]
    while len(tokenizer.encode(text[:end]).ids) > tokens:  # merges at the cut can change the count
        end -= 1
    return text[:end]


def model_facts(model_dir: Path) -> tuple[Any, int]:
    from tokenizers import Tokenizer

    from distilgpt2_api.engines.base import ModelInfo

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # as the service counts
    return tokenizer, ModelInfo.read(model_dir).context_length


def worst_requests(model_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The 8000-character request and, if it exceeds the context, the longest prompt that is accepted."""
    tokenizer, context = model_facts(model_dir)
    text = english_text(PROMPT_CHARS)
    requests = [{"label": f"{len(text)} chars", "prompt": text, "n": SEQUENCES, "max_new_tokens": NEW_TOKENS}]
    room = context - NEW_TOKENS
    full_tokens = len(tokenizer.encode(text).ids)
    if full_tokens > room:
        label = f"trimmed to {room} tokens"
        requests.append({**requests[0], "label": label, "prompt": trimmed(tokenizer, text, room)})
    digits = digits_text(PROMPT_CHARS)
    info = {
        "context_tokens": context,
        "full_prompt_tokens": full_tokens,
        "full_prompt_chars": len(text),
        "digits_prompt_tokens": len(tokenizer.encode(digits).ids),
    }
    return requests, info


def budget_requests(model_dir: Path, total: int) -> list[dict[str, Any]]:
    """The extremes n x (prompt + max_new_tokens) <= total admits: the longest prefill (which the time budget
    cannot cut), a long prompt with every new token, and eight sequences with the most new tokens."""
    tokenizer, context = model_facts(model_dir)
    english = english_text(PROMPT_CHARS)
    fits_english = len(tokenizer.encode(english).ids)
    longest = min(total, context)
    per_row = total // SEQUENCES
    short_new = min(NEW_TOKENS, per_row - 16)
    shapes = ((1, longest - 1, 1), (1, longest - NEW_TOKENS, NEW_TOKENS), (SEQUENCES, per_row - short_new, short_new))
    return [
        {
            "label": f"n={n} prompt={p} new={m}" + ("" if p <= fits_english else " (digits)"),
            "prompt": trimmed(tokenizer, english if p <= fits_english else digits_text(PROMPT_CHARS), p),
            "n": n,
            "max_new_tokens": m,
        }
        for n, p, m in shapes
    ]


def peak_of(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else None


def run_child(
    model_dir: Path, engine: str, extra_env: dict[str, str], requests: list[dict[str, Any]], work: Path, wait_s: float
) -> dict[str, Any]:
    """One fresh process; the parent also watches its VmHWM, which survives a timeout."""
    import bench

    idle = bench.wait_for_idle(wait_s)  # other processes on the machine skew the timings
    stamp = f"{model_dir.name}-{engine}-{time.monotonic_ns()}"
    args_file, out_file, log_file = (work / f"{stamp}.{ext}" for ext in ("args.json", "out.json", "log"))
    args_file.write_text(json.dumps(requests))
    env = bench.worker_env({"MODEL_DIR": str(model_dir), "ENGINE": engine})
    for name in ("API_KEY", "API_KEY_PARAMETER", "MAX_BATCH_TOKENS", *UNCUT):
        env.pop(name, None)  # an open API and the service's defaults, whatever this shell has set
    env.update(extra_env)
    run: dict[str, Any] = {"loadavg_before": Path("/proc/loadavg").read_text().split()[:3], "idle_wait": idle}
    run["env"] = extra_env
    busy_before, children_before = bench.cpu_busy_jiffies(), bench.children_cpu_s()
    started = time.time()
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(args_file), str(out_file)], env=env, stdout=log, stderr=log
        )
        observed = 0.0
        while proc.poll() is None and time.time() - started < CHILD_TIMEOUT_S:
            observed = max(observed, peak_of(proc.pid) or 0.0)
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
            run["error"] = f"killed after {CHILD_TIMEOUT_S} s"
        proc.wait()
    run["wall_s"] = wall = time.time() - started
    run["observed_peak_rss_mb"] = observed
    busy_s = (bench.cpu_busy_jiffies() - busy_before) / os.sysconf("SC_CLK_TCK")
    run["foreign_load_cores"] = max(0.0, busy_s - (bench.children_cpu_s() - children_before)) / wall
    if proc.returncode and "error" not in run:
        run["error"] = f"exit {proc.returncode}: {log_file.read_text()[-1500:]}"
    if out_file.is_file():
        run.update(json.loads(out_file.read_text()))
    return run


def measure(
    models: dict[str, Path],
    out: Path,
    wait_s: float,
    verify: list[int],
    warm: list[int],
    rounds: int,
    earlier: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything, or with `earlier` results only the --verify and --warm runs, added to them."""
    import bench

    results = earlier or {"machine": bench.machine_info(), "models": {}, "runs": [], "verify": []}
    work = Path(tempfile.mkdtemp(prefix="worst-case-"))

    def run(group: str, name: str, engine: str, config: str, env: dict[str, str], requests: list[Any]) -> None:
        print(f"{group} {name} {engine} {config}: {requests[0]['label']} ...", file=sys.stderr, flush=True)
        measured = run_child(models[name], engine, env, requests, work, wait_s)
        results[group].append({"model": name, "engine": engine, "config": config, **measured})
        (out / "worst_case.json").write_text(json.dumps(results, indent=1))

    for name, model_dir in models.items() if earlier is None else ():
        requests, info = worst_requests(model_dir)
        results["models"][name] = {"dir": str(model_dir), **info}
        probe = {**requests[-1], "label": "prefill probe", "max_new_tokens": 1}  # the prompt's share of the time
        for engine in ENGINES:
            for config, env in CONFIGS.items():
                run("runs", name, engine, config, env, [*requests, probe] if "uncut" in config else requests)
    for total in verify:  # each request alone in a fresh process: its own peak
        for name, model_dir in models.items():
            for engine in ENGINES:
                for request in budget_requests(model_dir, total):
                    for uncut in (False, True):
                        config = f"MAX_BATCH_TOKENS={total}" + (", uncut" if uncut else "")
                        env = {"MAX_BATCH_TOKENS": str(total), **(UNCUT if uncut else {})}
                        run("verify", name, engine, config, env, [request])
    for total in warm:  # a warm instance: every extreme, round after round, in one process (allocators keep memory)
        for name, model_dir in models.items():
            for engine in ENGINES:
                requests = budget_requests(model_dir, total) * rounds
                config = f"MAX_BATCH_TOKENS={total}, one warm process, {rounds} rounds"
                run("verify", name, engine, config, {"MAX_BATCH_TOKENS": str(total)}, requests)
    return results


# --- report --------------------------------------------------------------------------------------------


GATEWAY_LEFT_S = 28.5  # API Gateway's 30 s less the service's 1.5 s margin
COLUMNS = (
    "model",
    "engine",
    "config",
    "request",
    "n",
    "status",
    "prompt tok",
    "s",
    "completion tok",
    "finish reasons",
    "RSS after load MB",
    "peak RSS MB",
    "memory",
    "time",
    "load / foreign",
)


def time_verdict(row: dict[str, Any], config: str) -> str:
    if row["status"] != 200:
        return "-"
    if row["seconds"] <= DEFAULT_BUDGET_S:
        return "in budget"
    if "uncut" in config:
        return "over 25 s"
    cut = "time_limit" in row.get("finish_reasons", {})
    return "cut in time" if cut and row["seconds"] <= GATEWAY_LEFT_S else "**late**"


def table(runs: list[dict[str, Any]]) -> list[str]:
    limit = LAMBDA_MEMORY_MB - HEADROOM_MB
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for run in runs:
        config = run["config"]
        load = f"{run['loadavg_before'][0]} / {run['foreign_load_cores']:.2f}"
        after_load = f"{run['rss_after_load_mb']:.0f}" if "rss_after_load_mb" in run else "-"
        for row in run.get("requests", []):
            error = f" {row['error']['code']}" if row.get("error") else ""
            if "budget of" in str(row.get("error")):  # the MAX_BATCH_TOKENS in force when it was measured
                error += f" ({row['error']['message'].split('budget of ')[1].split()[0]})"
            reasons = ", ".join(f"{k} x{v}" for k, v in row.get("finish_reasons", {}).items()) or "-"
            cells = [
                run["model"],
                run["engine"],
                config,
                row["label"],
                row["n"],
                f"{row['status']}{error}",
                row.get("prompt_tokens", "-"),
                f"{row['seconds']:.1f}",
                row.get("completion_tokens", "-"),
                reasons,
                after_load,
                f"{row['peak_rss_mb']:.0f}",
                "fits" if row["peak_rss_mb"] <= limit else "**over**",
                time_verdict(row, config),
                load,
            ]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        if run.get("error"):
            failed = [run["model"], run["engine"], config, f"failed: {run['error'][:150]!r}", "", "", ""]
            failed += [
                f"{run['wall_s']:.0f} (wall)",
                "",
                "",
                after_load,
                f"{run['observed_peak_rss_mb']:.0f} (observed)",
            ]
            lines.append("| " + " | ".join([*failed, "", "", load]) + " |")
    return lines


def summary(runs: list[dict[str, Any]]) -> list[str]:
    """Per MAX_BATCH_TOKENS, model and engine: the largest peak and the latest answer under the 25 s budget."""
    limit = LAMBDA_MEMORY_MB - HEADROOM_MB
    groups: dict[tuple[int, str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for run in runs:
        key = (int(run["env"]["MAX_BATCH_TOKENS"]), run["model"], run["engine"])
        groups.setdefault(key, []).extend((run, row) for row in run.get("requests", []))
    lines = [
        "| MAX_BATCH_TOKENS | model | engine | largest peak RSS MB (request) | latest answer, 25 s budget (request)"
        " | longest prefill s |",
        "|---|---|---|---|---|---|",
    ]
    for (total, model, engine), rows in sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1:])):
        _, peak = max(rows, key=lambda pair: pair[1]["peak_rss_mb"])
        budgeted = [row for run, row in rows if "uncut" not in run["config"]]
        late = max(budgeted, key=lambda row: row["seconds"])
        memory = "fits" if peak["peak_rss_mb"] <= limit else "**over**"
        prefill = max((row["seconds"] for _, row in rows if row["max_new_tokens"] == 1), default=float("nan"))
        lines.append(
            f"| {total} | {model} | {engine} | {peak['peak_rss_mb']:.0f} {memory} ({peak['label']})"
            f" | {late['seconds']:.1f} s {time_verdict(late, 'defaults')} ({late['label']}) | {prefill:.1f} |"
        )
    return lines


HEADER = """# Worst-case request: memory and duration

Generated by `bench/worst_case.py` from `worst_case.json`. Each row is a request through `handler.handler` in a
fresh process (peak RSS is per process: VmHWM after the request, the model load included): POST /generate,
do_sample=true, num_return_sequences={sequences}, max_new_tokens={new_tokens} (the limits' maximum) and {chars}
characters of English (tests/data/corpus.txt, repeated), or that prompt trimmed to context - {new_tokens} tokens
when the full one exceeds the context. A prefill probe repeats the last request with max_new_tokens=1.

Configurations: `defaults` = the service's own (MAX_BATCH_TOKENS among them); `no batch limit` =
MAX_BATCH_TOKENS {no_limit}, what the limits allowed before it; `uncut` = MAX_REQUEST_SECONDS 600 and
GATEWAY_TIMEOUT_SECONDS 900 (otherwise the budget is {budget:.0f} s and generation is cut with finish_reason
time_limit). The Lambda context reports 900 s remaining. Columns: memory = peak RSS within {memory} MB (the
template's MemorySize) less {headroom} MB headroom = {limit} MB. time: in budget = done within {budget:.0f} s; cut
in time = cut by the budget and answered within {gateway} s; **late** = answered after the gateway's 30 s less
the margin (a client gets a 504); over 25 s = uncut, the default budget would cut it. load / foreign =
/proc/loadavg before the run / cores other processes used during it (above ~0.3 the timings are contended).

Machine: {cpu}, {cores} cores (flags: {flags}); THREADS=1 (the service default, as Lambda's single
vCPU at {memory} MB), so one generation uses one core. Lambda's CPUs may be slower: read the times as lower bounds.

distilgpt2-shape is bench/bench.py's random-weight GPT-2 with distilgpt2's shape and a byte-level BPE of GPT-2's
size (50,000 merges, trained on tests' corpus and made-up words): English takes a different number of tokens than
with GPT-2's own tokenizer, which only moves the character count where the context ends; time and memory follow
tokens. Its EOS row is zeroed (it rarely stops).

How to read it: the time budget is checked between generated tokens, so it cuts decoding cleanly, but not the
prefill (the prompt's forward pass, once per sequence: n copies of the prompt); a request whose prefill outlasts
the budget answers late. Memory grows with n x (prompt + new tokens) (the KV cache) plus, during the prefill, with
the square of the prompt (attention scores). CTranslate2's allocator keeps what it once used, so a warm process
can peak higher than a fresh one (the `one warm process` rows).
"""


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    flags = ", ".join(flag for flag, present in machine["cpu_flags"].items() if present)
    lines = [
        HEADER.format(
            sequences=SEQUENCES,
            new_tokens=NEW_TOKENS,
            chars=PROMPT_CHARS,
            no_limit=NO_BATCH_LIMIT["MAX_BATCH_TOKENS"],
            budget=DEFAULT_BUDGET_S,
            memory=LAMBDA_MEMORY_MB,
            headroom=HEADROOM_MB,
            limit=LAMBDA_MEMORY_MB - HEADROOM_MB,
            gateway=GATEWAY_LEFT_S,
            cpu=machine["cpu_model"],
            flags=flags,
            cores=machine["logical_cpus"],
        )
    ]
    for name, info in results["models"].items():
        lines.append(
            f"- **{name}** (`{info['dir']}`): context {info['context_tokens']} tokens; the"
            f" {info['full_prompt_chars']}-character English prompt is {info['full_prompt_tokens']} tokens,"
            f" {PROMPT_CHARS} digits are {info['digits_prompt_tokens']}."
        )
    lines += ["", *table(results["runs"])]
    if results["verify"]:
        lines += [
            "",
            "## The largest requests MAX_BATCH_TOKENS admits",
            "",
            "n x (prompt tokens + max_new_tokens) <= MAX_BATCH_TOKENS; its extremes, each alone in a fresh process:",
            "the longest prefill (max_new_tokens=1, uncut by any budget), a long prompt with 512 new tokens, and",
            "eight sequences with the most new tokens. Prompts beyond what 8000 characters of English hold are",
            "digits (one token each, so still within MAX_PROMPT_CHARS). `one warm process` rows send them all, round",
            "after round, to one process, as a warm instance gets them; the summary counts those too.",
            "",
            *summary(results["verify"]),
            "",
            *table(results["verify"]),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a prepared model dir")
    parser.add_argument("--build-distil-shape", type=Path, metavar="DIR", help="build distilgpt2's shape in DIR")
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument("--wait-idle", type=float, default=0.0, help="seconds to wait for a quiet machine per run")
    parser.add_argument("--verify", type=int, action="append", default=[], metavar="N", help="a token budget to try")
    parser.add_argument("--warm", type=int, action="append", default=[], metavar="N", help="N's extremes, one process")
    parser.add_argument("--rounds", type=int, default=2, help="how often --warm sends each request (default 2)")
    parser.add_argument("--verify-only", action="store_true", help="add --verify/--warm runs to --out's results")
    parser.add_argument("--render", action="store_true", help="only rewrite WORST_CASE.md from worst_case.json")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.render:
        results = json.loads((args.out / "worst_case.json").read_text())
    else:
        models = {name: Path(path) for name, path in (spec.split("=", 1) for spec in args.model)}
        if args.build_distil_shape:
            import bench

            # Random weights, a BPE of GPT-2's size and a zeroed EOS row (never ends early).
            models = {"distilgpt2-shape": bench.prepare_distil(args.build_distil_shape), **models}
        earlier = json.loads((args.out / "worst_case.json").read_text()) if args.verify_only else None
        results = measure(models, args.out, args.wait_idle, args.verify, args.warm, args.rounds, earlier)
    (args.out / "WORST_CASE.md").write_text(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
