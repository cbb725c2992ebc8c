"""The llama.cpp engine on the step loop vs the CTranslate2 engine vs llama.cpp's own llama-server, in one run.

    python bench/step_loop.py --llama-server PATH/llama-server --smollm2-dir DIR --distil-dir DIR \
        [--parts single,load,ttft,prefix,determinism,cold] [--rounds 3] [--out bench]

Every server runs on 127.0.0.1: ours (`uvicorn distilgpt2_api.api:app`, ENGINE=llamacpp or ctranslate2, at their
default threads unless --threads, MAX_BATCH_SIZE=8) and llama-server (`-t N -np 1` for one client, `-np 8` for eight,
N the CPUs this process may use, or --threads) on the same GGUF that our llama.cpp engine reads. Requests go through
the OpenAI-compatible routes of both (bench/load.py's client), tokens are counted from `usage`. Systems are measured
round by round, A/B/C/A/B/C, and medians reported; the CPU other processes used meanwhile is recorded per part.

Parts:
  single       one client, 50 greedy tokens after a short prompt, streamed: decode tokens/s (tokens after the
               first ÷ time after the first) and end-to-end tokens/s. SmolLM2 (its model.gguf) and distilgpt2-shape
               (its model.gguf, and a model.q8_0.gguf beside it if there is one).
  load         8 clients for --load-seconds each, prompts of mixed lengths (each starting with its own number, so
               no prompt cache serves them), greedy / sampled (temperature 0.8, top_p 0.95) / seeded requests in
               turn, 50 tokens: tokens/s, p50/p95 latency (SmolLM2).
  ttft         time to first token of a ~800-token prompt, streamed, 100 tokens; every prompt starts with its
               own number so no prefix cache (ours or llama-server's) can serve it.
  prefix       a chat's 5th turn after turns 1-4 (whole history each time, /v1/chat/completions, SmolLM2):
               time to first token with the prefix cache vs PREFIX_CACHE_SLOTS=0 (llama-server: cache_prompt
               on vs off), and usage.prompt_tokens_details.cached_tokens.
  determinism  100 prompts of mixed lengths, greedy 50 tokens, each alone then 8 at a time concurrently through
               our llama.cpp server: answers that differ (both models).
  cold         distilgpt2-shape: cold start (Server-Timing `cold-start` of the first response; spawn to first
               answer of GET /) and peak RSS (VmHWM after a 50-token request), llamacpp vs ctranslate2.

Writes STEP_LOOP.md and step_loop.json into --out (`--render` rewrites the markdown from the JSON).
llama-server is not part of this project: build it from the llama.cpp that llama-cpp-python vendors.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import load  # noqa: E402
from harness import Service  # noqa: E402

from distilgpt2_api.engines.cpus import usable_cpus  # noqa: E402

PARTS = ("single", "load", "ttft", "prefix", "determinism", "cold")
NEW_TOKENS, TTFT_TOKENS, BATCH = 50, 100, 8
THREADS: int | None = None  # None: ours at the product's defaults, llama-server at the CPUs this process may use
PEER_CTX_PER_SLOT = 2048
PACKAGES = ("llama-cpp-python", "ctranslate2", "tokenizers", "numpy", "fastapi", "uvicorn", "httpx")
SHORT_PROMPT = "Once upon a time"
SINGLE_RATIO_MIN, PREFIX_RATIO_MAX = 0.9, 0.15  # targets from the issue
KINDS = ("greedy", "sampled", "seeded")
# Words of the repeated paragraph that make ~800 tokens with each model's tokenizer (SmolLM2: 824; the
# distilgpt2-shape's random-text BPE splits English finer, and its context is 1,024).
LONG_PROMPT_WORDS = {"smollm2": 750, "distil": 500}
SUBJECTS = ["The old lighthouse", "My favourite recipe", "The history of Rome", "A quiet morning", "Quantum physics"]
OPENINGS = ["is", "was never", "can teach us that", "reminds me of", "began when"]
TOPICS = ["a lighthouse keeper", "the history of tea", "learning to sail", "a city garden", "an old violin"]
USER_TURNS = [
    "I would like to write a short story about {topic}. Could you suggest a setting, a main character with a "
    "name and an age, and one problem that character has to solve? Keep it to a few sentences.",
    "Good. Now describe the first scene in more detail: the time of day, the weather, the sounds and smells, and "
    "what the main character is doing when the story begins.",
    "Introduce a second character who either helps or gets in the way. Tell me how they meet and what they say "
    "to each other in their first conversation.",
    "Now write the turning point of the story, where the problem gets worse before it gets better. Make it tense.",
    "Finally, write a hopeful ending in three sentences that ties back to the first scene.",
]


@dataclass(frozen=True)
class Spec:
    """One server to run: ours (`engine` set) or llama-server (`parallel` set)."""

    label: str
    model_dir: Path
    engine: str | None = None  # ours: llamacpp / ctranslate2
    gguf: str = "model.gguf"  # llama-server's weights in model_dir; ours always reads model.gguf
    parallel: int = 0  # llama-server: -np
    env: dict[str, str] = field(default_factory=dict)

    @property
    def peer(self) -> bool:
        return self.engine is None


def start(spec: Spec, peer_binary: Path) -> Service:
    if not spec.peer:
        env = {"ENGINE": str(spec.engine), "MAX_BATCH_SIZE": str(BATCH), "LOG_LEVEL": "WARNING"}
        env |= {"THREADS": str(THREADS)} if THREADS else {}
        return Service.ours(spec.model_dir, env | spec.env)
    port = harness.free_port()
    threads = str(THREADS or usable_cpus().count)
    command = [str(peer_binary), "-m", str(spec.model_dir / spec.gguf), "-t", threads, "-tb", threads]
    command += ["-c", str(PEER_CTX_PER_SLOT * spec.parallel), "-np", str(spec.parallel)]
    return Service([*command, "--host", harness.HOST, "--port", str(port), "--no-webui"], port, health="/health")


@contextmanager
def running(specs: list[Spec], peer_binary: Path) -> Iterator[dict[str, Service]]:
    """Every spec's server started and ready; all stopped on the way out."""
    with ExitStack() as stack:
        servers = {spec.label: start(spec, peer_binary) for spec in specs}
        for server in servers.values():
            stack.callback(server.stop)
        for server in servers.values():
            server.wait_ready()
        yield servers


def q8_0_dir(model_dir: Path, workdir: Path) -> Path | None:
    """A copy of `model_dir` (symlinks) whose model.gguf is its model.q8_0.gguf: our engine reads model.gguf."""
    source = model_dir / "model.q8_0.gguf"
    if not source.is_file():
        return None
    target = workdir / f"{model_dir.name}-q8_0"
    target.mkdir(exist_ok=True)
    for item in model_dir.iterdir():
        if not (target / item.name).exists():
            (target / item.name).symlink_to((source if item.name == "model.gguf" else item).resolve())
    return target


def body(spec: Spec, kind: str, tokens: int, **fields: Any) -> dict[str, Any]:
    """An OpenAI request body: greedy, sampled or seeded. For sampled requests llama-server's sampler chain is cut
    to temperature and top_p like ours (its defaults add top_k 40 and min_p 0.05); greedy ones carry temperature 0
    alone, its greedy path (top_k 0 there would have it sort the whole vocabulary every token)."""
    out: dict[str, Any] = {"max_tokens": tokens, **fields}
    out |= {"temperature": 0} if kind == "greedy" else {"temperature": 0.8, "top_p": 0.95}
    out |= {"seed": 1234} if kind == "seeded" else {}
    return out | ({"top_k": 0, "min_p": 0.0} if spec.peer and kind != "greedy" else {})


async def ask(server: Service, path: str, payload: dict[str, Any], stream: bool = True) -> load.Outcome:
    """One request through the load client (streamed: to [DONE], usage included); RuntimeError if it failed."""
    if stream:
        payload = payload | {"stream": True, "stream_options": {"include_usage": True}}
    route = load.Route(path, "POST", lambda prompt, tokens: (path, payload), "[DONE]" if stream else None)
    async with load.client(server.base_url) as http:
        outcome = await load.send(http, route, "", 0)
    if outcome.error:
        raise RuntimeError(outcome.error)
    return outcome


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def streamed_figures(rows: list[load.Outcome]) -> dict[str, Any]:
    """Medians over streamed requests: tokens, time to first token, total time, decode tokens/s."""
    return {
        "requests": len(rows),
        "completion_tokens": median([r.completion_tokens for r in rows]),
        "prompt_tokens": median([r.usage.get("prompt_tokens", 0) for r in rows]),
        "cached_tokens_max": max(cached(r) for r in rows),
        "decode_tokens_per_s": round(median([r.decode_tokens_per_s for r in rows]), 1),
        "end_to_end_tokens_per_s": round(median([r.completion_tokens / r.latency_s for r in rows]), 1),
        "ttft_ms": round(1000 * median([r.first_event_s or r.latency_s for r in rows]), 1),
        "total_ms": round(1000 * median([r.latency_s for r in rows]), 1),
        "text": rows[-1].text,
    }


def cached(outcome: load.Outcome) -> int:
    return int((outcome.usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))


# --- parts ----------------------------------------------------------------------------------------------


def model_specs(name: str, model_dir: Path, workdir: Path, peer_parallel: tuple[int, ...]) -> list[Spec]:
    """Ours on llama.cpp (each GGUF) and CTranslate2, llama-server on each GGUF."""
    specs = [Spec(f"{name} ours-llamacpp", model_dir, engine="llamacpp")]
    q8 = q8_0_dir(model_dir, workdir) if name != "smollm2" else None  # SmolLM2: its model.gguf alone
    if q8 is not None:
        specs.append(Spec(f"{name} ours-llamacpp-q8_0", q8, engine="llamacpp"))
    specs.append(Spec(f"{name} ours-ctranslate2", model_dir, engine="ctranslate2"))
    ggufs = [("", "model.gguf")] + ([("-q8_0", "model.q8_0.gguf")] if q8 is not None else [])
    for np in peer_parallel:
        specs += [Spec(f"{name} llama-server-np{np}{tag}", model_dir, gguf=g, parallel=np) for tag, g in ggufs]
    return specs


async def part_streamed(
    servers: dict[str, Service], specs: list[Spec], rounds: int, runs: int, prompt: Callable[[int], str], tokens: int
) -> dict[str, Any]:
    """single and ttft: `runs` streamed greedy completions of `prompt(index)` per server and round, after a warm-up."""
    samples: dict[str, list[load.Outcome]] = {s.label: [] for s in specs}
    counter = 0
    for spec in specs:
        counter += 1
        await ask(servers[spec.label], "/v1/completions", body(spec, "greedy", 4, prompt=prompt(10_000 + counter)))
    for _ in range(rounds):
        for spec in specs:
            for _ in range(runs):
                counter += 1
                payload = body(spec, "greedy", tokens, prompt=prompt(counter))
                samples[spec.label].append(await ask(servers[spec.label], "/v1/completions", payload))
    return {label: streamed_figures(rows) for label, rows in samples.items()}


def short_prompt(index: int) -> str:
    return SHORT_PROMPT


def long_prompt(index: int, words: int) -> str:
    """~800 tokens, its beginning unique to `index`: no prefix cache can answer it."""
    return f"Report number {index * 7919 % 100_000}. " + " ".join(" ".join([harness.PARAGRAPH] * 6).split()[:words])


def mixed_prompts(round_: int, count: int = 2000) -> list[str]:
    """Prompts of ~8 to ~180 tokens cut from different places of a paragraph, each beginning with its own number
    (of this round): no prompt cache can serve one from an earlier request, which would time the cache."""
    words, lengths = (harness.PARAGRAPH + " " + harness.PARAGRAPH).split(), (2, 4, 8, 16, 32, 64, 128)
    starts = [(i * 37) % (len(words) // 2) for i in range(count)]
    return [f"Note {round_}.{i}: " + " ".join(words[s : s + lengths[i % 7]]) for i, s in enumerate(starts)]


def load_routes(spec: Spec) -> list[load.Route]:
    return [
        load.Route(kind, "POST", lambda p, t, k=kind: ("/v1/completions", body(spec, k, t, prompt=p))) for kind in KINDS
    ]


def part_load(servers: dict[str, Service], specs: list[Spec], rounds: int, seconds: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {s.label: [] for s in specs}
    for spec in specs:  # warm-up
        server = servers[spec.label]
        run = load.run_load(
            server.base_url, server.pid, load_routes(spec), 1, NEW_TOKENS, requests=3, prompts=mixed_prompts(-1)
        )
        if (report := asyncio.run(run))["errors"]:
            raise RuntimeError(f"{spec.label}: {report['error_samples']}")
    for round_ in range(rounds):
        for spec in specs:  # new prompts every round
            server, noise = servers[spec.label], harness.OthersLoad([s.pid for s in servers.values()])
            run = load.run_load(
                server.base_url,
                server.pid,
                load_routes(spec),
                BATCH,
                NEW_TOKENS,
                seconds,
                prompts=mixed_prompts(round_),
            )
            report = asyncio.run(run)
            runs[spec.label].append(report | {"foreign_load_cores": noise.cores()})
            harness.log(
                f"load round {round_ + 1} {spec.label}: {report['tokens_per_s']} tokens/s, errors {report['errors']}"
            )

    def over(reports: list[dict[str, Any]], key: str, route: str = "overall") -> float:
        return round(median([r["latency"][route][key] for r in reports]), 1)

    return {
        label: {
            "runs": len(reports),
            "tokens_per_s": round(median([r["tokens_per_s"] for r in reports]), 1),
            "requests_per_s": round(median([r["throughput_rps"] for r in reports]), 2),
            "p50_ms": over(reports, "p50_ms"),
            "p95_ms": over(reports, "p95_ms"),
            "errors": sum(r["errors"] for r in reports),
            "error_samples": [e for r in reports for e in r["error_samples"]][:3],
            "by_kind_p95_ms": {kind: over(reports, "p95_ms", kind) for kind in KINDS},
            "rss_peak_mb": round(max(r["rss_peak_bytes"] for r in reports) / 2**20),
            "per_round_tokens_per_s": [r["tokens_per_s"] for r in reports],
            "foreign_load_cores": [r["foreign_load_cores"] for r in reports],
        }
        for label, reports in runs.items()
    }


async def chat_turns(server: Service, spec: Spec, users: list[str], replies: list[str] | None) -> list[dict[str, str]]:
    """Send turns 1-4 (each the whole history); the replies are the model's own unless `replies` are given."""
    messages: list[dict[str, str]] = []
    for turn, user in enumerate(users[:4]):
        messages.append({"role": "user", "content": user})
        answer = await ask(server, "/v1/chat/completions", body(spec, "greedy", 64, messages=messages), stream=False)
        messages.append({"role": "assistant", "content": replies[turn] if replies else answer.text})
    return messages + [{"role": "user", "content": users[4]}]


async def part_prefix(servers: dict[str, Service], specs: dict[str, Spec], rounds: int) -> dict[str, Any]:
    """specs: cached / uncached (ours), peer (llama-server -np 1, asked with cache_prompt on and off)."""
    rows: dict[str, list[load.Outcome]] = {
        f"{side} {c}": [] for side in ("ours", "peer") for c in ("cached", "uncached")
    }
    for index in range(rounds):
        users = [turn.format(topic=TOPICS[index % len(TOPICS)]) for turn in USER_TURNS]
        ours, plain, peer = (servers[specs[role].label] for role in ("cached", "uncached", "peer"))
        messages = await chat_turns(ours, specs["cached"], users, None)
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        turn5 = body(specs["cached"], "greedy", 16, messages=messages)
        rows["ours cached"].append(await ask(ours, "/v1/chat/completions", turn5))
        await chat_turns(plain, specs["uncached"], users, replies)  # the same history, no cache kept
        rows["ours uncached"].append(await ask(plain, "/v1/chat/completions", turn5))
        peer_turn5 = body(specs["peer"], "greedy", 16, messages=messages)
        await chat_turns(peer, specs["peer"], users, replies)
        rows["peer uncached"].append(await ask(peer, "/v1/chat/completions", peer_turn5 | {"cache_prompt": False}))
        await chat_turns(peer, specs["peer"], users, replies)
        rows["peer cached"].append(await ask(peer, "/v1/chat/completions", peer_turn5))
        ttfts = ", ".join(f"{k} {1000 * (v[-1].first_event_s or 0):.0f} ms" for k, v in rows.items())
        harness.log(f"prefix round {index + 1}: {ttfts}")
    out: dict[str, Any] = {
        key: {
            "turn5_prompt_tokens": median([r.usage.get("prompt_tokens", 0) for r in values]),
            "cached_tokens": [cached(r) for r in values],
            "ttft_ms": round(1000 * median([r.first_event_s or r.latency_s for r in values]), 1),
            "ttft_ms_each": [round(1000 * (r.first_event_s or r.latency_s), 1) for r in values],
        }
        for key, values in rows.items()
    }
    for side in ("ours", "peer"):
        uncached = out[f"{side} uncached"]["ttft_ms"]
        out[f"{side} ratio"] = round(out[f"{side} cached"]["ttft_ms"] / uncached, 3) if uncached else None
    return out


async def part_determinism(server: Service, spec: Spec, count: int = 100) -> dict[str, Any]:
    """`count` prompts (those of the batching study, BATCHING.md), greedy, each alone then BATCH at a time."""
    prompts = [f"{SUBJECTS[i % 5]} {OPENINGS[(i // 5) % 5]}" + " and then" * (i // 25) for i in range(count)]

    async def text(prompt: str) -> str:
        payload = body(spec, "greedy", NEW_TOKENS, prompt=prompt)
        return (await ask(server, "/v1/completions", payload, stream=False)).text

    alone = [await text(p) for p in prompts]
    together: list[str] = []
    for first in range(0, len(prompts), BATCH):
        together += await asyncio.gather(*(text(p) for p in prompts[first : first + BATCH]))
    differing = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b]
    first_diff = [len(os.path.commonprefix([alone[i], together[i]])) for i in differing]
    return {
        "prompts": len(prompts),
        "differing": len(differing),
        "examples": [
            {"prompt": prompts[i], "alone": alone[i], "concurrent": together[i], "first_diff_char": d}
            for i, d in list(zip(differing, first_diff, strict=True))[:3]
        ],
    }


def part_cold(specs: list[Spec], rounds: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {s.label: [] for s in specs}
    for _ in range(rounds):
        for spec in specs:
            server = start(spec, Path("-"))
            try:
                first = server.wait_ready()  # the readiness probe's answer carries the cold start
                ready, rss = time.perf_counter() - server.spawned, harness.proc_status_bytes(server.pid, "VmRSS")
                asyncio.run(ask(server, "/v1/completions", body(spec, "greedy", NEW_TOKENS, prompt=SHORT_PROMPT)))
                timing = next((p for p in first.headers.get("server-timing", "").split(",") if "cold-start" in p), "")
                rows[spec.label].append(
                    {
                        "spawn_to_ready_s": ready,
                        "cold_start_header_ms": float(timing.split("dur=")[1].split(";")[0])
                        if "dur=" in timing
                        else None,
                        "rss_after_load_mb": rss / 2**20,
                        "peak_rss_mb": harness.proc_status_bytes(server.pid, "VmHWM") / 2**20,
                    }
                )
            finally:
                server.stop()
    out = {}
    for label, values in rows.items():
        headers = [v["cold_start_header_ms"] for v in values if v["cold_start_header_ms"] is not None]
        out[label] = {
            "rounds": len(values),
            "spawn_to_ready_s": round(median([v["spawn_to_ready_s"] for v in values]), 2),
            "cold_start_header_ms": round(median(headers), 1) if headers else None,
            "rss_after_load_mb": round(median([v["rss_after_load_mb"] for v in values])),
            "peak_rss_mb": round(median([v["peak_rss_mb"] for v in values])),
        }
    return out


# --- driver ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", type=Path, required=True, help="llama-server binary (not in this repo)")
    parser.add_argument("--smollm2-dir", type=Path, required=True, help="prepare-model --source smollm2 output")
    parser.add_argument("--distil-dir", type=Path, help="distilgpt2-shape prepared with its GGUF")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    per_model = "models of the per-model parts (single, ttft, load, determinism); prefix is SmolLM2's, cold distil's"
    parser.add_argument("--models", default="smollm2,distil", help=per_model)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per part")
    parser.add_argument("--runs", type=int, default=3, help="requests per system and round (single, ttft)")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    threads_help = "THREADS for ours, -t/-tb for llama-server (default: ours' own defaults, llama-server's usable CPUs)"
    parser.add_argument("--threads", type=int, default=None, help=threads_help)
    parser.add_argument("--out", type=Path, default=harness.BENCH)
    parser.add_argument("--render", action="store_true", help="only rewrite STEP_LOOP.md from --out's JSON")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not args.render and not args.llama_server.is_file():
        parser.error(f"--llama-server {args.llama_server} is not a file")
    return args


def main(argv: list[str] | None = None) -> int:
    global THREADS
    args = parse_args(argv)
    THREADS = args.threads
    out_json = args.out / "step_loop.json"
    if args.render:
        (args.out / "STEP_LOOP.md").write_text(markdown(json.loads(out_json.read_text())))
        return 0
    started = time.time()
    results: dict[str, Any] = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results["machine"] = harness.machine_info(PACKAGES)
    version = subprocess.run([str(args.llama_server), "--version"], capture_output=True, text=True, timeout=30)
    results["machine"]["llama_server_version"] = " ".join((version.stdout + version.stderr).split())[:200]
    results["options"] = {"rounds": args.rounds, "runs": args.runs, "load_seconds": args.load_seconds}
    results["options"] |= {"threads": THREADS, "peer_threads": THREADS or usable_cpus().count}
    results["options"] |= {"max_batch_size": BATCH, "llama_server_ctx_per_slot": PEER_CTX_PER_SLOT}
    results["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    parts, noise = results.setdefault("parts", {}), results.setdefault("noise", {})
    models = {"smollm2": args.smollm2_dir} | ({"distil": args.distil_dir} if args.distil_dir else {})
    models = {name: path for name, path in models.items() if name in args.models.split(",")}
    invocation = {"started_at": results["started_at"], "parts": args.parts, "models": list(models)}
    results.setdefault("invocations", []).append(invocation)

    def record(part: str, name: str, gauge: harness.OthersLoad, figures: dict[str, Any]) -> None:
        parts.setdefault(part, {})[name] = figures
        noise[f"{part} {name}"] = gauge.figures()
        results["machine"]["loadavg_end"] = harness.loadavg()
        write(args.out, results)

    with tempfile.TemporaryDirectory(prefix="step-loop-") as tmp:
        for name, model_dir in models.items():
            wanted = [p for p in ("single", "ttft", "load", "determinism") if p in args.parts]
            wanted = [p for p in wanted if p != "load" or name == "smollm2"]
            specs = model_specs(name, model_dir, Path(tmp), (1, 8) if "load" in wanted else (1,))
            specs = specs[:1] if wanted == ["determinism"] else specs  # only our llama.cpp server takes part
            if not wanted:
                continue
            with running(specs, args.llama_server) as servers:
                one_client = [s for s in specs if not s.peer or s.parallel == 1]
                long = functools.partial(long_prompt, words=LONG_PROMPT_WORDS.get(name, 500))
                for part in wanted:
                    harness.log(f"[{name}] {part}")
                    gauge = harness.OthersLoad([s.pid for s in servers.values()])
                    if part == "load":
                        chosen = [s for s in specs if s.label.endswith(("ours-llamacpp", "ours-ctranslate2", "np8"))]
                        figures = part_load(servers, chosen, args.rounds, args.load_seconds)
                    elif part == "determinism":
                        figures = asyncio.run(part_determinism(servers[specs[0].label], specs[0]))
                    else:
                        prompt, tokens = (short_prompt, NEW_TOKENS) if part == "single" else (long, TTFT_TOKENS)
                        figures = asyncio.run(
                            part_streamed(servers, one_client, args.rounds, args.runs, prompt, tokens)
                        )
                    record(part, name, gauge, figures)
        if "prefix" in args.parts:
            smol, label = args.smollm2_dir, "smollm2 ours-llamacpp"
            roles = {
                "cached": Spec(label, smol, engine="llamacpp"),
                "uncached": Spec(
                    f"{label} PREFIX_CACHE_SLOTS=0", smol, engine="llamacpp", env={"PREFIX_CACHE_SLOTS": "0"}
                ),
                "peer": Spec("smollm2 llama-server-np1", smol, parallel=1),
            }
            with running(list(roles.values()), args.llama_server) as servers:
                gauge = harness.OthersLoad([s.pid for s in servers.values()])
                record("prefix", "smollm2", gauge, asyncio.run(part_prefix(servers, roles, args.rounds)))
        if "cold" in args.parts and args.distil_dir:
            specs = [s for s in model_specs("distil", args.distil_dir, Path(tmp), ()) if not s.peer]
            gauge = harness.OthersLoad()
            record("cold", "distil", gauge, part_cold(specs, args.rounds))
    invocation["duration_s"] = results["duration_s"] = round(time.time() - started)
    results["targets"] = targets(results)
    write(args.out, results)
    print(markdown(results))
    return 0


def write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_loop.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "STEP_LOOP.md").write_text(markdown(results))


# --- report ---------------------------------------------------------------------------------------------


def ratio_target(
    what: str, ours: float, theirs: float, threshold: float, higher: bool, unit: str = ""
) -> dict[str, Any]:
    passed = ours / theirs >= threshold if higher else ours / theirs <= threshold
    value = f"{ours / theirs:.2f}× ({ours} vs {theirs}{unit})"
    return {"target": what, "value": value, "threshold": f"{'≥' if higher else '≤'} {threshold:g}×", "passed": passed}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    parts, rows = results.get("parts", {}), []
    if single := parts.get("single", {}).get("smollm2"):
        ours, peer = (single[f"smollm2 {s}"]["decode_tokens_per_s"] for s in ("ours-llamacpp", "llama-server-np1"))
        what = "1 client, SmolLM2 decode tokens/s: ours-llamacpp ÷ llama-server"
        rows.append(ratio_target(what, ours, peer, SINGLE_RATIO_MIN, higher=True))
    if loaded := parts.get("load", {}).get("smollm2"):
        ours = loaded["smollm2 ours-llamacpp"]
        for other in ("ours-ctranslate2", "llama-server-np8"):
            theirs = loaded[f"smollm2 {other}"]
            what = f"8 clients, SmolLM2 tokens/s: ours-llamacpp ÷ {other}"
            rows.append(ratio_target(what, ours["tokens_per_s"], theirs["tokens_per_s"], 1, higher=True))
            what = f"8 clients, SmolLM2 p95 latency: ours-llamacpp ÷ {other}"
            rows.append(ratio_target(what, ours["p95_ms"], theirs["p95_ms"], 1, higher=False, unit=" ms"))
    prefix = parts.get("prefix", {}).get("smollm2")
    if prefix and prefix.get("ours ratio") is not None:
        ms = [prefix[f"ours {c}"]["ttft_ms"] for c in ("cached", "uncached")]
        value = f"{prefix['ours ratio']:.1%} ({ms[0]} vs {ms[1]} ms)"
        what = "chat turn 5 time to first token: prefix cache ÷ none"
        rows.append(
            {
                "target": what,
                "value": value,
                "threshold": f"≤ {PREFIX_RATIO_MAX:.0%}",
                "passed": prefix["ours ratio"] <= PREFIX_RATIO_MAX,
            }
        )
    for name, figures in parts.get("determinism", {}).items():
        what, value = (
            f"greedy answers alone vs 8 concurrent, {name}: differing",
            f"{figures['differing']} of {figures['prompts']}",
        )
        rows.append({"target": what, "value": value, "threshold": "0", "passed": figures["differing"] == 0})
    return rows


def markdown(results: dict[str, Any]) -> str:
    """STEP_LOOP.md: bench/STEP_LOOP.md.j2 over the results."""
    machine = results["machine"]
    context = {"new_tokens": NEW_TOKENS, "ttft_tokens": TTFT_TOKENS, "batch": BATCH, "short_prompt": SHORT_PROMPT}
    peer = [["llama-server", machine.get("llama_server_version", "")]]
    context["machine_section"] = harness.machine_section(machine, peer).rstrip()
    return harness.render("STEP_LOOP.md.j2", results | context)


if __name__ == "__main__":
    raise SystemExit(main())
