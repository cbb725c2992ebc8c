"""The llama.cpp engine on the step loop vs the CTranslate2 engine vs llama.cpp's own llama-server, in one run.

    python bench/step_loop.py --llama-server PATH/llama-server --smollm2-dir DIR --distil-dir DIR \
        [--parts single,load,ttft,prefix,determinism,cold] [--rounds 3] [--out bench]

Every server runs on 127.0.0.1 with one thread: ours (`uvicorn distilgpt2_api.api:app`, ENGINE=llamacpp or
ctranslate2, THREADS=1, MAX_BATCH_SIZE=8) and llama-server (`-t 1 -np 1` for one client, `-np 8` for eight) on
the same GGUF that our llama.cpp engine reads. Requests go through the OpenAI-compatible routes of both, tokens
are counted from `usage`. Systems are measured round by round, A/B/C/A/B/C, and medians reported, so that other
work on the machine weighs on every side alike; the CPU other processes used meanwhile is recorded per part.

Parts:
  single       one client, 50 greedy tokens after a short prompt, streamed: decode tokens/s (tokens after the
               first ÷ time after the first) and end-to-end tokens/s. SmolLM2 (shipped Q4_1) and distilgpt2-shape
               (float32 GGUF and its Q8_0).
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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "src")]

import bench_report  # noqa: E402 - table
import load  # noqa: E402 - Server, run_load, percentile, free_port, rss_bytes

import bench  # noqa: E402 - machine_info, cpu_busy_jiffies, PARAGRAPH

HOST = load.HOST  # loopback only
PARTS = ("single", "load", "ttft", "prefix", "determinism", "cold")
NEW_TOKENS = 50
TTFT_TOKENS = 100
BATCH = 8
THREADS = 1
PEER_CTX_PER_SLOT = 2048
REQUEST_TIMEOUT_S = 300.0
PACKAGES = ("llama-cpp-python", "ctranslate2", "tokenizers", "numpy", "fastapi", "uvicorn", "httpx")
SHORT_PROMPT = "Once upon a time"
# Targets from the issue.
SINGLE_RATIO_MIN = 0.9
PREFIX_RATIO_MAX = 0.15


# --- servers --------------------------------------------------------------------------------------------


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


class PeerServer(load.Server):
    """llama-server in a child process, on loopback."""

    def __init__(self, binary: Path, gguf: Path, parallel: int, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        command = [str(binary), "-m", str(gguf), "-t", str(THREADS), "-tb", str(THREADS)]
        command += ["-c", str(PEER_CTX_PER_SLOT * parallel), "-np", str(parallel)]
        command += ["--host", HOST, "--port", str(port), "--no-webui"]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"llama-server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        raise RuntimeError(f"llama-server not ready after {timeout_s:.0f}s:\n{self.log_tail()}")


def our_env(spec: Spec) -> dict[str, str]:
    env = {"ENGINE": str(spec.engine), "THREADS": str(THREADS), "MAX_BATCH_SIZE": str(BATCH)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LOG_LEVEL": "WARNING"}
    return env | spec.env


def start(spec: Spec, peer_binary: Path, workdir: Path) -> load.Server:
    log_path = workdir / f"{spec.label}-{time.monotonic_ns()}.log"
    if spec.peer:
        return PeerServer(peer_binary, spec.model_dir / spec.gguf, spec.parallel, load.free_port(), log_path)
    return load.Server(spec.model_dir, load.free_port(), log_path, our_env(spec))


@contextmanager
def running(specs: list[Spec], peer_binary: Path, workdir: Path) -> Iterator[dict[str, load.Server]]:
    """Every spec's server started and ready; all stopped on the way out."""
    servers: dict[str, load.Server] = {}
    try:
        for spec in specs:
            servers[spec.label] = start(spec, peer_binary, workdir)
        for server in servers.values():
            server.wait_ready(300)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def q8_0_dir(model_dir: Path, workdir: Path) -> Path | None:
    """A copy of `model_dir` (symlinks) whose model.gguf is its model.q8_0.gguf: our engine reads model.gguf."""
    source = model_dir / "model.q8_0.gguf"
    if not source.is_file():
        return None
    target = workdir / f"{model_dir.name}-q8_0"
    target.mkdir(exist_ok=True)
    for item in model_dir.iterdir():
        link = target / item.name
        if item.name != "model.gguf" and not link.exists():
            link.symlink_to(item.resolve())
    if not (target / "model.gguf").exists():
        (target / "model.gguf").symlink_to(source.resolve())
    return target


# --- requests -------------------------------------------------------------------------------------------


def body(spec: Spec, kind: str, tokens: int, **fields: Any) -> dict[str, Any]:
    """An OpenAI request body: greedy, sampled or seeded. For sampled requests llama-server's sampler chain is cut
    to temperature and top_p like ours (its defaults add top_k 40 and min_p 0.05); greedy ones carry temperature 0
    alone, its greedy path (top_k 0 there would have it sort the whole vocabulary every token)."""
    out: dict[str, Any] = {"max_tokens": tokens, **fields}
    if kind == "greedy":
        out["temperature"] = 0
    else:
        out |= {"temperature": 0.8, "top_p": 0.95}
        if kind == "seeded":
            out["seed"] = 1234
    if spec.peer and kind != "greedy":
        out |= {"top_k": 0, "min_p": 0.0}
    return out


@dataclass
class Streamed:
    ttft_s: float
    total_s: float
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int
    text: str

    @property
    def decode_tokens_per_s(self) -> float:
        after_first = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / after_first if after_first > 0 else 0.0


def stream(client: httpx.Client, path: str, payload: dict[str, Any]) -> Streamed:
    """One streamed request read to [DONE]: time to the first content, total time, usage."""
    payload = payload | {"stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    with client.stream("POST", path, json=payload) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            for choice in event.get("choices") or []:
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if piece:
                    first = first or time.perf_counter()
                    pieces.append(piece)
            if event.get("usage"):
                usage = event["usage"]
    total = time.perf_counter() - started
    details = usage.get("prompt_tokens_details") or {}
    return Streamed(
        ttft_s=(first or time.perf_counter()) - started,
        total_s=total,
        completion_tokens=int(usage.get("completion_tokens", len(pieces))),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        cached_tokens=int(details.get("cached_tokens", 0)),
        text="".join(pieces),
    )


def complete(client: httpx.Client, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=payload)
    if response.status_code != 200:
        raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
    result: dict[str, Any] = response.json()
    return result


def http(server: load.Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S, trust_env=False)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# --- machine noise --------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """CPU (in cores) that processes other than this one and its servers used over a stretch of time."""

    def __init__(self, servers: dict[str, load.Server]) -> None:
        self.pids = [os.getpid(), *(s.process.pid for s in servers.values())]
        self.started = time.monotonic()
        self.busy = bench.cpu_busy_jiffies()
        self.ours = sum(process_cpu_s(pid) for pid in self.pids)

    def cores(self) -> float:
        elapsed = time.monotonic() - self.started
        busy = (bench.cpu_busy_jiffies() - self.busy) / os.sysconf("SC_CLK_TCK")
        ours = sum(process_cpu_s(pid) for pid in self.pids) - self.ours
        return round(max(0.0, busy - ours) / elapsed, 2) if elapsed > 0 else 0.0


def top_processes(servers: dict[str, load.Server], limit: int = 6) -> list[str]:
    """The busiest processes right now (ps), this benchmark and its servers excluded: what else was running."""
    mine = {os.getpid(), *(s.process.pid for s in servers.values())}
    out = subprocess.run(
        ["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    rows = [line.split(None, 1) for line in out]
    rows = [rest.strip()[:140] for pid, rest in rows if int(pid) not in mine]
    return [row for row in rows if not row.startswith("0.0")][:limit]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- parts ----------------------------------------------------------------------------------------------


def model_specs(name: str, model_dir: Path, workdir: Path, peer_parallel: tuple[int, ...]) -> list[Spec]:
    """Ours on llama.cpp (each GGUF) and CTranslate2, llama-server on each GGUF."""
    specs = [Spec(f"{name} ours-llamacpp", model_dir, engine="llamacpp")]
    q8 = q8_0_dir(model_dir, workdir) if name != "smollm2" else None  # SmolLM2 serves its shipped Q4_1
    if q8 is not None:
        specs.append(Spec(f"{name} ours-llamacpp-q8_0", q8, engine="llamacpp"))
    specs.append(Spec(f"{name} ours-ctranslate2", model_dir, engine="ctranslate2"))
    ggufs = [("", "model.gguf")] + ([("-q8_0", "model.q8_0.gguf")] if q8 is not None else [])
    for np in peer_parallel:
        specs += [Spec(f"{name} llama-server-np{np}{tag}", model_dir, gguf=g, parallel=np) for tag, g in ggufs]
    return specs


def part_single(servers: dict[str, load.Server], specs: list[Spec], rounds: int, runs: int) -> dict[str, Any]:
    samples: dict[str, list[Streamed]] = {s.label: [] for s in specs}
    for spec in specs:  # warm-up
        with http(servers[spec.label]) as client:
            stream(client, "/v1/completions", body(spec, "greedy", NEW_TOKENS, prompt=SHORT_PROMPT))
    for _ in range(rounds):
        for spec in specs:
            with http(servers[spec.label]) as client:
                for _ in range(runs):
                    payload = body(spec, "greedy", NEW_TOKENS, prompt=SHORT_PROMPT)
                    samples[spec.label].append(stream(client, "/v1/completions", payload))
    out = {}
    for label, rows in samples.items():
        out[label] = {
            "requests": len(rows),
            "completion_tokens": median([r.completion_tokens for r in rows]),
            "prompt_tokens": median([r.prompt_tokens for r in rows]),
            "decode_tokens_per_s": round(median([r.decode_tokens_per_s for r in rows]), 1),
            "end_to_end_tokens_per_s": round(median([r.completion_tokens / r.total_s for r in rows]), 1),
            "ttft_ms": round(1000 * median([r.ttft_s for r in rows]), 1),
            "total_ms": round(1000 * median([r.total_s for r in rows]), 1),
            "text": rows[-1].text,
        }
    return out


def mixed_prompts(round_: int, count: int = 2000) -> list[str]:
    """Prompts of ~8 to ~180 tokens cut from different places of a paragraph, each beginning with its own number
    (of this round): a prompt cache (ours, or llama-server's slots and --cache-ram) cannot serve one from an
    earlier request, which would time the cache rather than batching."""
    words = (bench.PARAGRAPH + " " + bench.PARAGRAPH).split()
    lengths = (2, 4, 8, 16, 32, 64, 128)
    out = []
    for i in range(count):
        n = lengths[i % len(lengths)]
        start = (i * 37) % (len(words) // 2)
        out.append(f"Note {round_}.{i}: " + " ".join(words[start : start + n]))
    return out


def load_routes(spec: Spec) -> list[load.Route]:
    return [
        load.Route(kind, "POST", lambda p, t, k=kind: ("/v1/completions", body(spec, k, t, prompt=p)))
        for kind in ("greedy", "sampled", "seeded")
    ]


def part_load(servers: dict[str, load.Server], specs: list[Spec], rounds: int, seconds: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {s.label: [] for s in specs}
    for spec in specs:
        with http(servers[spec.label]) as client:
            for route in load_routes(spec):
                complete(client, *route.build(mixed_prompts(-1)[5], NEW_TOKENS))
    for round_ in range(rounds):
        load.PROMPTS = mixed_prompts(round_)  # client_loop draws its prompts from here: new ones every round
        for spec in specs:
            server = servers[spec.label]
            noise = ForeignLoad(servers)
            report = asyncio.run(
                load.run_load(server.base_url, server.process.pid, BATCH, seconds, NEW_TOKENS, load_routes(spec))
            )
            report["foreign_load_cores"] = noise.cores()
            runs[spec.label].append(report)
            log(
                f"load round {round_ + 1} {spec.label}: {report['tokens_per_s']} tokens/s, p95 "
                f"{report['latency']['overall']['p95_ms']} ms, errors {report['errors']}, "
                f"others {report['foreign_load_cores']} cores"
            )
    out = {}
    for label, reports in runs.items():
        out[label] = {
            "runs": len(reports),
            "tokens_per_s": round(median([r["tokens_per_s"] for r in reports]), 1),
            "requests_per_s": round(median([r["throughput_rps"] for r in reports]), 2),
            "p50_ms": round(median([r["latency"]["overall"]["p50_ms"] for r in reports]), 1),
            "p95_ms": round(median([r["latency"]["overall"]["p95_ms"] for r in reports]), 1),
            "errors": sum(r["errors"] for r in reports),
            "error_samples": [e for r in reports for e in r["error_samples"]][:3],
            "by_kind_p95_ms": {
                kind: round(median([r["latency"][kind]["p95_ms"] for r in reports]), 1)
                for kind in ("greedy", "sampled", "seeded")
            },
            "rss_peak_mb": round(max(r["rss_peak_bytes"] for r in reports) / 2**20),
            "per_round_tokens_per_s": [r["tokens_per_s"] for r in reports],
            "foreign_load_cores": [r["foreign_load_cores"] for r in reports],
        }
    return out


# Words of the repeated paragraph that make ~800 tokens with each model's tokenizer (SmolLM2: 824; the
# distilgpt2-shape's random-text BPE splits English finer, and its context is 1,024).
LONG_PROMPT_WORDS = {"smollm2": 750, "distil": 500}


def long_prompt(index: int, words: int) -> str:
    """~800 tokens, its beginning unique to `index`: no prefix cache can answer it."""
    text = " ".join(" ".join([bench.PARAGRAPH] * 6).split()[:words])
    return f"Report number {index * 7919 % 100_000}. " + text


def part_ttft(servers: dict[str, load.Server], specs: list[Spec], rounds: int, runs: int, words: int) -> dict[str, Any]:
    samples: dict[str, list[Streamed]] = {s.label: [] for s in specs}
    counter = 0
    for spec in specs:  # warm-up
        counter += 1
        with http(servers[spec.label]) as client:
            stream(client, "/v1/completions", body(spec, "greedy", 4, prompt=long_prompt(10_000 + counter, words)))
    for _ in range(rounds):
        for spec in specs:
            with http(servers[spec.label]) as client:
                for _ in range(runs):
                    counter += 1
                    payload = body(spec, "greedy", TTFT_TOKENS, prompt=long_prompt(counter, words))
                    samples[spec.label].append(stream(client, "/v1/completions", payload))
    return {
        label: {
            "requests": len(rows),
            "prompt_tokens": median([r.prompt_tokens for r in rows]),
            "cached_tokens_max": max(r.cached_tokens for r in rows),
            "ttft_ms": round(1000 * median([r.ttft_s for r in rows]), 1),
            "total_ms": round(1000 * median([r.total_s for r in rows]), 1),
            "completion_tokens": median([r.completion_tokens for r in rows]),
            "decode_tokens_per_s": round(median([r.decode_tokens_per_s for r in rows]), 1),
        }
        for label, rows in samples.items()
    }


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


def conversation(index: int) -> list[str]:
    topic = TOPICS[index % len(TOPICS)]
    return [turn.format(topic=topic) for turn in USER_TURNS]


def chat_turns(client: httpx.Client, spec: Spec, users: list[str], replies: list[str] | None) -> list[dict[str, str]]:
    """Send turns 1-4 (each the whole history); the replies are the model's own unless `replies` are given."""
    messages: list[dict[str, str]] = []
    for turn, user in enumerate(users[:4]):
        messages.append({"role": "user", "content": user})
        answer = complete(client, "/v1/chat/completions", body(spec, "greedy", 64, messages=messages))
        reply = replies[turn] if replies else answer["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": reply})
    return messages + [{"role": "user", "content": users[4]}]


def part_prefix(servers: dict[str, load.Server], specs: dict[str, Spec], rounds: int) -> dict[str, Any]:
    """specs: cached / uncached (ours), peer (llama-server -np 1, asked with cache_prompt on and off)."""
    rows: dict[str, list[Streamed]] = {"ours cached": [], "ours uncached": [], "peer cached": [], "peer uncached": []}
    for index in range(rounds):
        users = conversation(index)
        with http(servers[specs["cached"].label]) as client:
            messages = chat_turns(client, specs["cached"], users, None)
            replies = [m["content"] for m in messages if m["role"] == "assistant"]
            rows["ours cached"].append(
                stream(client, "/v1/chat/completions", body(specs["cached"], "greedy", 16, messages=messages))
            )
        with http(servers[specs["uncached"].label]) as client:
            chat_turns(client, specs["uncached"], users, replies)  # the same history, no cache kept
            rows["ours uncached"].append(
                stream(client, "/v1/chat/completions", body(specs["uncached"], "greedy", 16, messages=messages))
            )
        peer = specs["peer"]
        with http(servers[peer.label]) as client:
            chat_turns(client, peer, users, replies)
            rows["peer uncached"].append(
                stream(client, "/v1/chat/completions", body(peer, "greedy", 16, messages=messages, cache_prompt=False))
            )
            chat_turns(client, peer, users, replies)
            rows["peer cached"].append(
                stream(client, "/v1/chat/completions", body(peer, "greedy", 16, messages=messages))
            )
        log(
            "prefix round "
            + f"{index + 1}: "
            + ", ".join(f"{k} {1000 * v[-1].ttft_s:.0f} ms ({v[-1].cached_tokens} cached)" for k, v in rows.items())
        )
    out: dict[str, Any] = {
        key: {
            "turn5_prompt_tokens": median([r.prompt_tokens for r in values]),
            "cached_tokens": [r.cached_tokens for r in values],
            "ttft_ms": round(1000 * median([r.ttft_s for r in values]), 1),
            "ttft_ms_each": [round(1000 * r.ttft_s, 1) for r in values],
        }
        for key, values in rows.items()
    }
    for side in ("ours", "peer"):
        uncached = out[f"{side} uncached"]["ttft_ms"]
        out[f"{side} ratio"] = round(out[f"{side} cached"]["ttft_ms"] / uncached, 3) if uncached else None
    return out


SUBJECTS = ["The old lighthouse", "My favourite recipe", "The history of Rome", "A quiet morning", "Quantum physics"]
OPENINGS = ["is", "was never", "can teach us that", "reminds me of", "began when"]


def determinism_prompts(count: int = 100) -> list[str]:
    """`count` distinct prompts of a few different lengths (those of the batching study, BATCHING.md)."""
    return [f"{SUBJECTS[i % 5]} {OPENINGS[(i // 5) % 5]}" + " and then" * (i // 25) for i in range(count)]


def part_determinism(server: load.Server, spec: Spec) -> dict[str, Any]:
    prompts = determinism_prompts()

    def ask(client: httpx.Client, prompt: str) -> str:
        answer = complete(client, "/v1/completions", body(spec, "greedy", NEW_TOKENS, prompt=prompt))
        return str(answer["choices"][0]["text"])

    with http(server) as client:
        alone = [ask(client, p) for p in prompts]

    async def concurrently() -> list[str]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:

            async def one(prompt: str) -> str:
                response = await client.post("/v1/completions", json=body(spec, "greedy", NEW_TOKENS, prompt=prompt))
                response.raise_for_status()
                return str(response.json()["choices"][0]["text"])

            texts: list[str] = []
            for start in range(0, len(prompts), BATCH):
                texts += await asyncio.gather(*(one(p) for p in prompts[start : start + BATCH]))
            return texts

    together = asyncio.run(concurrently())
    differing = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b]
    return {
        "prompts": len(prompts),
        "differing": len(differing),
        "examples": [
            {
                "prompt": prompts[i],
                "alone": alone[i],
                "concurrent": together[i],
                "first_diff_char": first_diff(alone[i], together[i]),
            }
            for i in differing[:3]
        ],
    }


def first_diff(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def first_response(server: load.Server, timeout_s: float) -> httpx.Response:
    """Poll GET / until the server answers; that first response."""
    deadline = time.monotonic() + timeout_s
    with http(server) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_tail()}")
            try:
                return client.get("/")
            except httpx.TransportError:
                time.sleep(0.05)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{server.log_tail()}")


def part_cold(specs: list[Spec], rounds: int, workdir: Path) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {s.label: [] for s in specs}
    for _ in range(rounds):
        for spec in specs:
            spawned = time.perf_counter()
            server = start(spec, Path("-"), workdir)
            try:
                first = first_response(server, 300)  # the readiness probe: it carries the cold start
                ready = time.perf_counter() - spawned
                after_ready_rss = load.rss_bytes(server.process.pid)
                with http(server) as client:
                    complete(client, "/v1/completions", body(spec, "greedy", NEW_TOKENS, prompt=SHORT_PROMPT))
                timing = first.headers.get("server-timing", "")
                cold = next((p for p in timing.split(",") if p.strip().startswith("cold-start")), "")
                cold_ms = float(cold.split("dur=")[1].split(";")[0]) if "dur=" in cold else None
                rows[spec.label].append(
                    {
                        "spawn_to_ready_s": ready,
                        "cold_start_header_ms": cold_ms,
                        "rss_after_load_mb": after_ready_rss / 2**20,
                        "peak_rss_mb": vm_hwm_bytes(server.process.pid) / 2**20,
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


def machine(peer_binary: Path) -> dict[str, Any]:
    info = bench.machine_info(PACKAGES)
    try:
        peer = subprocess.run([str(peer_binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
        info["llama_server_version"] = " ".join((peer.stdout + peer.stderr).split())[:200]
    except OSError as exc:
        info["llama_server_version"] = f"unavailable: {exc}"
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", type=Path, required=True, help="llama-server binary (not in this repo)")
    parser.add_argument("--smollm2-dir", type=Path, required=True, help="prepare-model --source smollm2 output")
    parser.add_argument("--distil-dir", type=Path, help="distilgpt2-shape prepared with its GGUF")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument(
        "--models",
        default="smollm2,distil",
        help="models of the per-model parts (single, ttft, "
        "load, determinism); prefix is SmolLM2's, cold distilgpt2-shape's",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per part")
    parser.add_argument("--runs", type=int, default=3, help="requests per system and round (single, ttft)")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument("--render", action="store_true", help="only rewrite STEP_LOOP.md from --out's JSON")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not args.render and not args.llama_server.is_file():
        parser.error(f"--llama-server {args.llama_server} is not a file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_json = args.out / "step_loop.json"
    if args.render:
        (args.out / "STEP_LOOP.md").write_text(markdown(json.loads(out_json.read_text())))
        return 0
    started = time.time()
    results: dict[str, Any] = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results["machine"] = machine(args.llama_server)
    results["options"] = {
        "rounds": args.rounds,
        "runs": args.runs,
        "load_seconds": args.load_seconds,
        "threads": THREADS,
        "max_batch_size": BATCH,
        "llama_server_ctx_per_slot": PEER_CTX_PER_SLOT,
    }
    results["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results.setdefault("parts", {})
    noise: dict[str, Any] = results.setdefault("noise", {})
    models = {"smollm2": args.smollm2_dir} | ({"distil": args.distil_dir} if args.distil_dir else {})
    models = {name: path for name, path in models.items() if name in args.models.split(",")}
    invocation = {"started_at": results["started_at"], "parts": args.parts, "models": list(models)}
    results.setdefault("invocations", []).append(invocation)

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        out_json.write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "STEP_LOOP.md").write_text(markdown(results))

    with tempfile.TemporaryDirectory(prefix="step-loop-") as tmp:
        workdir = Path(tmp)
        for name, model_dir in models.items():
            wanted = [p for p in ("single", "ttft", "load", "determinism") if p in args.parts]
            if name != "smollm2":
                wanted = [p for p in wanted if p != "load"]
            if not wanted:
                continue
            peer_np = (1, 8) if "load" in wanted else (1,)
            specs = model_specs(name, model_dir, workdir, peer_np)
            if wanted == ["determinism"]:  # only our llama.cpp server takes part
                specs = specs[:1]
            log(f"[{name}] starting {', '.join(s.label for s in specs)}")
            with running(specs, args.llama_server, workdir) as servers:
                one_client = [s for s in specs if not s.peer or s.parallel == 1]
                for part in wanted:
                    log(f"[{name}] {part}")
                    gauge = ForeignLoad(servers)
                    busy = top_processes(servers)
                    if part == "single":
                        figures = part_single(servers, one_client, args.rounds, args.runs)
                    elif part == "ttft":
                        words = LONG_PROMPT_WORDS.get(name, 500)
                        figures = part_ttft(servers, one_client, args.rounds, args.runs, words)
                    elif part == "load":
                        chosen = [s for s in specs if s.label.endswith(("ours-llamacpp", "ours-ctranslate2", "np8"))]
                        figures = part_load(servers, chosen, args.rounds, args.load_seconds)
                    else:
                        figures = part_determinism(servers[specs[0].label], specs[0])
                    results["parts"].setdefault(part, {})[name] = figures
                    noise[f"{part} {name}"] = {"foreign_load_cores": gauge.cores(), "busiest_processes": busy}
                    log(f"[{name}] {part}: {json.dumps(figures)[:600]}")
                    save()
        if "prefix" in args.parts:
            smol = args.smollm2_dir
            specs_by_role = {
                "cached": Spec("smollm2 ours-llamacpp", smol, engine="llamacpp"),
                "uncached": Spec(
                    "smollm2 ours-llamacpp PREFIX_CACHE_SLOTS=0",
                    smol,
                    engine="llamacpp",
                    env={"PREFIX_CACHE_SLOTS": "0"},
                ),
                "peer": Spec("smollm2 llama-server-np1", smol, parallel=1),
            }
            log("[smollm2] prefix")
            with running(list(specs_by_role.values()), args.llama_server, workdir) as servers:
                gauge, busy = ForeignLoad(servers), top_processes(servers)
                results["parts"]["prefix"] = {"smollm2": part_prefix(servers, specs_by_role, args.rounds)}
                noise["prefix smollm2"] = {"foreign_load_cores": gauge.cores(), "busiest_processes": busy}
            save()
        if "cold" in args.parts and args.distil_dir:
            specs = [s for s in model_specs("distil", args.distil_dir, workdir, ()) if not s.peer]
            log("[distil] cold")
            gauge, busy = ForeignLoad({}), top_processes({})
            results["parts"]["cold"] = {"distil": part_cold(specs, args.rounds, workdir)}
            noise["cold distil"] = {"foreign_load_cores": gauge.cores(), "busiest_processes": busy}
            save()
    results["duration_s"] = round(time.time() - started)
    invocation["duration_s"] = results["duration_s"]
    results["targets"] = targets(results)
    save()
    print(markdown(results))
    return 0


# --- report ---------------------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    parts = results.get("parts", {})
    rows: list[dict[str, Any]] = []
    single = parts.get("single", {}).get("smollm2")
    if single:
        ours = single["smollm2 ours-llamacpp"]["decode_tokens_per_s"]
        peer = single["smollm2 llama-server-np1"]["decode_tokens_per_s"]
        rows.append(
            {
                "target": "1 client, SmolLM2 decode tokens/s: ours-llamacpp ÷ llama-server",
                "value": f"{ours / peer:.2f}× ({ours} vs {peer})",
                "threshold": f"≥ {SINGLE_RATIO_MIN}×",
                "passed": ours / peer >= SINGLE_RATIO_MIN,
            }
        )
    loaded = parts.get("load", {}).get("smollm2")
    if loaded:
        ours = loaded["smollm2 ours-llamacpp"]
        for other in ("smollm2 ours-ctranslate2", "smollm2 llama-server-np8"):
            theirs = loaded[other]
            short = other.split(" ", 1)[1]
            rows.append(
                {
                    "target": f"8 clients, SmolLM2 tokens/s: ours-llamacpp ÷ {short}",
                    "value": f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}× "
                    f"({ours['tokens_per_s']} vs {theirs['tokens_per_s']})",
                    "threshold": "≥ 1×",
                    "passed": ours["tokens_per_s"] >= theirs["tokens_per_s"],
                }
            )
            rows.append(
                {
                    "target": f"8 clients, SmolLM2 p95 latency: ours-llamacpp ÷ {short}",
                    "value": f"{ours['p95_ms'] / theirs['p95_ms']:.2f}× ({ours['p95_ms']} vs {theirs['p95_ms']} ms)",
                    "threshold": "≤ 1×",
                    "passed": ours["p95_ms"] <= theirs["p95_ms"],
                }
            )
    prefix = parts.get("prefix", {}).get("smollm2")
    if prefix and prefix.get("ours ratio") is not None:
        rows.append(
            {
                "target": "chat turn 5 time to first token: prefix cache ÷ none",
                "value": f"{prefix['ours ratio']:.1%} ({prefix['ours cached']['ttft_ms']} vs "
                f"{prefix['ours uncached']['ttft_ms']} ms)",
                "threshold": f"≤ {PREFIX_RATIO_MAX:.0%}",
                "passed": prefix["ours ratio"] <= PREFIX_RATIO_MAX,
            }
        )
    for name, figures in parts.get("determinism", {}).items():
        rows.append(
            {
                "target": f"greedy answers alone vs 8 concurrent, {name}: differing",
                "value": f"{figures['differing']} of {figures['prompts']}",
                "threshold": "0",
                "passed": figures["differing"] == 0,
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    m, o, parts = results["machine"], results["options"], results.get("parts", {})
    table = bench_report.table
    out = [
        "# The llama.cpp engine on the step loop vs CTranslate2 vs llama-server\n",
        "`python bench/step_loop.py`: "
        + "; ".join(
            f"{i['started_at']}, {i.get('duration_s', 0) / 60:.0f} min, parts {', '.join(i['parts'])}"
            + (f" (models {', '.join(i['models'])})" if i.get("models") else "")
            for i in results.get("invocations", [])
        )
        + ". "
        f"Every server on loopback with {o['threads']} thread; ours with MAX_BATCH_SIZE={o['max_batch_size']} "
        f"(and its defaults: PREFIX_CACHE_SLOTS=4, PREFILL_CHUNK_TOKENS=256), llama-server with `-t 1 -tb 1 -np N "
        f"-c {o['llama_server_ctx_per_slot']}×N` on the same GGUF file. {o['rounds']} interleaved rounds (A/B/C/A/B/C) "
        f"per part, {o['runs']} requests per system and round for the one-client parts; figures are medians. "
        "Tokens are counted from each response's `usage`. Ratios compare servers measured in this same run.\n",
        bench_report.machine_section(m, [["llama-server", m.get("llama_server_version", "")]]),
        bench_report.noise_section(results, "this benchmark and its servers"),
    ]
    out += bench_report.targets_section(results)
    for name, figures in parts.get("single", {}).items():
        ref = next((v for k, v in figures.items() if k.endswith("llama-server-np1")), None)
        out += [
            f"## One client, {name}: {NEW_TOKENS} greedy tokens after “{SHORT_PROMPT}”, streamed\n",
            "Decode tokens/s: the tokens after the first ÷ the time after the first. Ratio: ÷ llama-server -np 1 on "
            "model.gguf.\n",
            table(
                ["server", "decode tokens/s", "ratio", "end-to-end tokens/s", "TTFT ms", "total ms", "tokens"],
                [
                    [
                        label,
                        f"{v['decode_tokens_per_s']}",
                        f"{v['decode_tokens_per_s'] / ref['decode_tokens_per_s']:.2f}×" if ref else "",
                        f"{v['end_to_end_tokens_per_s']}",
                        f"{v['ttft_ms']}",
                        f"{v['total_ms']}",
                        f"{v['completion_tokens']:g}",
                    ]
                    for label, v in figures.items()
                ],
            ),
        ]
    for name, figures in parts.get("load", {}).items():
        out += [
            f"## 8 clients, {name}: {o['load_seconds']:g} s per run, mixed prompt lengths, greedy/sampled/seeded\n",
            table(
                [
                    "server",
                    "tokens/s",
                    "req/s",
                    "p50 ms",
                    "p95 ms",
                    "p95 greedy / sampled / seeded",
                    "errors",
                    "tokens/s per round",
                    "others' cores per round",
                    "peak RSS MB",
                ],
                [
                    [
                        label,
                        f"{v['tokens_per_s']}",
                        f"{v['requests_per_s']}",
                        f"{v['p50_ms']}",
                        f"{v['p95_ms']}",
                        " / ".join(str(x) for x in v["by_kind_p95_ms"].values()),
                        f"{v['errors']}",
                        ", ".join(str(x) for x in v["per_round_tokens_per_s"]),
                        ", ".join(str(x) for x in v["foreign_load_cores"]),
                        f"{v['rss_peak_mb']}",
                    ]
                    for label, v in figures.items()
                ],
            ),
        ]
    for name, figures in parts.get("ttft", {}).items():
        ref = next((v for k, v in figures.items() if k.endswith("llama-server-np1")), None)
        out += [
            f"## Time to first token, {name}: ~800-token prompt, {TTFT_TOKENS} tokens streamed\n",
            table(
                ["server", "prompt tokens", "TTFT ms", "÷ llama-server", "total ms", "decode tokens/s"],
                [
                    [
                        label,
                        f"{v['prompt_tokens']:g}",
                        f"{v['ttft_ms']}",
                        f"{v['ttft_ms'] / ref['ttft_ms']:.2f}×" if ref else "",
                        f"{v['total_ms']}",
                        f"{v['decode_tokens_per_s']}",
                    ]
                    for label, v in figures.items()
                ],
            ),
        ]
    prefix = parts.get("prefix", {}).get("smollm2")
    if prefix:
        out += [
            "## Prefix cache: a chat's 5th turn (SmolLM2, /v1/chat/completions)\n",
            "Turns 1–4 sent first, each with the whole history (greedy replies of 64 tokens); then turn 5, streamed. "
            "Ours: the default server vs one with PREFIX_CACHE_SLOTS=0; "
            "llama-server -np 1: `cache_prompt` on vs off.\n",
            table(
                ["server", "turn-5 prompt tokens", "cached_tokens", "TTFT ms (median)", "each"],
                [
                    [
                        k,
                        f"{v['turn5_prompt_tokens']:g}",
                        ", ".join(map(str, v["cached_tokens"])),
                        f"{v['ttft_ms']}",
                        ", ".join(map(str, v["ttft_ms_each"])),
                    ]
                    for k, v in prefix.items()
                    if isinstance(v, dict)
                ],
            ),
            f"Cached ÷ uncached: ours {prefix['ours ratio']:.1%}, llama-server {prefix['peer ratio']:.1%}.\n",
        ]
    if parts.get("determinism"):
        out += [
            "## Greedy determinism under batching (our llama.cpp server)\n",
            f"{BATCH} requests sent at once per group vs each alone; 50 greedy tokens.\n",
            table(
                ["model", "answers that differ", "first examples (prompt: character where they part)"],
                [
                    [
                        name,
                        f"{v['differing']} of {v['prompts']}",
                        "<br>".join(f"“{e['prompt']}”: {e['first_diff_char']}" for e in v["examples"]),
                    ]
                    for name, v in parts["determinism"].items()
                ],
            ),
        ]
    for name, figures in parts.get("cold", {}).items():
        out += [
            f"## Cold start and memory, {name}\n",
            "Spawn to the first answer of GET /, the `cold-start` entry of the first Server-Timing header (import and "
            "load, in the process), RSS after loading, peak RSS (VmHWM) after one 50-token request.\n",
            table(
                ["server", "spawn → ready s", "cold-start header ms", "RSS after load MB", "peak RSS MB"],
                [
                    [
                        label,
                        f"{v['spawn_to_ready_s']}",
                        f"{v['cold_start_header_ms']}",
                        f"{v['rss_after_load_mb']}",
                        f"{v['peak_rss_mb']}",
                    ]
                    for label, v in figures.items()
                ],
            ),
        ]
    if results.get("findings"):
        out += ["## Findings\n", results["findings"]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
