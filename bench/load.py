"""Bounded load test on loopback: the app under uvicorn, N concurrent clients for D seconds.

    python bench/load.py --model-dir models/default --clients 8 --duration 60 --json load.json

Starts `uvicorn distilgpt2_api.api:app` on 127.0.0.1 (a free port) in a subprocess, warms it up,
then runs a mix of GET /, GET /{prompt}, POST /generate, POST /v1/completions and the streamed
POST /v1/completions and POST /generate_stream (read to their last event; time to first event
reported too) until the duration is over, and stops the server. Prints a markdown table, writes the
same figures as JSON, and exits non-zero if any request failed or the server's RSS grew by 10 % or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

HOST = "127.0.0.1"  # loopback only: this tool never sends load anywhere else
MAX_CLIENTS = 64
MAX_DURATION_S = 900.0
REQUEST_TIMEOUT_S = 120.0  # a request queued behind every other client's generation still fits
PROMPTS = ["Once upon a time", "The weather today is", "In a distant galaxy", "Hello, my name is"]


@dataclass(frozen=True)
class Route:
    label: str
    method: str
    build: Callable[[str, int], tuple[str, dict[str, Any] | None]]  # (prompt, tokens) -> (url, json body)
    last_event: str | None = None  # a streamed route: what its last event's data holds


ROUTES = [
    Route("GET /", "GET", lambda prompt, tokens: ("/", None)),
    Route("GET /{prompt}", "GET", lambda prompt, tokens: (f"/{quote(prompt)}?max_new_tokens={tokens}", None)),
    Route("POST /generate", "POST", lambda prompt, tokens: ("/generate", {"prompt": prompt, "max_new_tokens": tokens})),
    Route(
        "POST /v1/completions",
        "POST",
        lambda prompt, tokens: ("/v1/completions", {"prompt": prompt, "max_tokens": tokens}),
    ),
    Route(
        "POST /generate sampled",
        "POST",
        lambda prompt, tokens: ("/generate", {"prompt": prompt, "max_new_tokens": tokens, "do_sample": True}),
    ),
    Route(
        "POST /v1/completions stream",
        "POST",
        lambda prompt, tokens: (
            "/v1/completions",
            {"prompt": prompt, "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}},
        ),
        last_event="[DONE]",
    ),
    Route(
        "POST /generate_stream",
        "POST",
        lambda prompt, tokens: ("/generate_stream", {"prompt": prompt, "max_new_tokens": tokens}),
        last_event='"generated_text":"',
    ),
]


@dataclass
class Samples:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_event_ms: list[float] = field(default_factory=list)  # streamed routes: time to the first event
    completion_tokens: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (psutil when installed, else /proc)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {pid}") from None


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for no values)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(samples: Samples) -> dict[str, float | int]:
    values = sorted(samples.latencies_ms)
    summary: dict[str, float | int] = {
        "requests": len(values),
        "errors": samples.errors,
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(values[-1], 1) if values else 0.0,
    }
    if samples.first_event_ms:
        summary["first_event_p50_ms"] = round(percentile(sorted(samples.first_event_ms), 50), 1)
    return summary


class Server:
    """The app under uvicorn in a child process, on loopback."""

    def __init__(self, model_dir: Path, port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log_path = log_path
        env = {**os.environ, "MODEL_DIR": str(model_dir), **(env or {})}
        command = [sys.executable, "-m", "uvicorn", "distilgpt2_api.api:app", "--host", HOST, "--port", str(port)]
        command += ["--log-level", "warning", "--no-access-log"]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()


@dataclass
class Outcome:
    latency_ms: float
    first_event_ms: float | None = None  # streamed routes
    completion_tokens: int = 0  # what the response reports (usage, or the last event's details)
    error: str | None = None


def completion_tokens(payloads: list[Any]) -> int:
    """Generated tokens as a response reports them: `usage`, or a stream's last `details`."""
    for payload in reversed(payloads):
        if isinstance(payload, dict):
            if isinstance(payload.get("usage"), dict):
                return int(payload["usage"]["completion_tokens"])
            if isinstance(payload.get("details"), dict):
                return int(payload["details"]["generated_tokens"])
    return 0


async def one_request(client: httpx.AsyncClient, route: Route, prompt: str, tokens: int) -> Outcome:
    """One request, read to its end: latency, time to the first event (streamed routes), tokens, error."""
    url, body = route.build(prompt, tokens)
    started = time.perf_counter()
    outcome = Outcome(0.0)
    try:
        if route.last_event is None:
            response = await client.request(route.method, url, json=body)
            ok = response.status_code == 200
            outcome.error = None if ok else f"{route.label}: HTTP {response.status_code}"
            outcome.completion_tokens = completion_tokens([response.json()]) if ok and body else 0
        else:
            async with client.stream(route.method, url, json=body) as response:
                events = []
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        outcome.first_event_ms = outcome.first_event_ms or (time.perf_counter() - started) * 1000
                        events.append(line[len("data:") :].strip())
            complete = response.status_code == 200 and bool(events) and route.last_event in events[-1]
            outcome.error = None if complete else f"{route.label}: HTTP {response.status_code}, ended {events[-1:]}"
            outcome.completion_tokens = completion_tokens([json.loads(e) for e in events if e.startswith("{")])
    except httpx.HTTPError as exc:
        outcome.error = f"{route.label}: {type(exc).__name__}: {exc}"
    outcome.latency_ms = (time.perf_counter() - started) * 1000
    return outcome


async def client_loop(
    index: int,
    base_url: str,
    until: float,
    tokens: int,
    routes: list[Route],
    samples: dict[str, Samples],
    error_log: list[str],
) -> None:
    # Each client cycles through the routes from its own offset, so the mix stays even.
    rng = random.Random(index)
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        turn = index
        while time.monotonic() < until:
            route = routes[turn % len(routes)]
            turn += 1
            outcome = await one_request(client, route, rng.choice(PROMPTS), tokens)
            sample = samples[route.label]
            sample.latencies_ms.append(outcome.latency_ms)
            sample.completion_tokens += outcome.completion_tokens
            if outcome.first_event_ms is not None:
                sample.first_event_ms.append(outcome.first_event_ms)
            if outcome.error is not None:
                sample.errors += 1
                error_log.append(outcome.error)


async def sample_rss(pid: int, until: float, peak: list[int]) -> None:
    while time.monotonic() < until:
        peak[0] = max(peak[0], rss_bytes(pid))
        await asyncio.sleep(0.5)


async def run_load(
    base_url: str, pid: int, clients: int, duration_s: float, tokens: int, routes: list[Route]
) -> dict[str, Any]:
    samples = {route.label: Samples() for route in routes}
    error_log: list[str] = []
    peak = [rss_bytes(pid)]
    started = time.monotonic()
    until = started + duration_s
    loops = [client_loop(i, base_url, until, tokens, routes, samples, error_log) for i in range(clients)]
    await asyncio.gather(sample_rss(pid, until, peak), *loops)
    elapsed = time.monotonic() - started
    overall = Samples([v for s in samples.values() for v in s.latencies_ms], sum(s.errors for s in samples.values()))
    generated = sum(s.completion_tokens for s in samples.values())
    return {
        "elapsed_s": round(elapsed, 2),
        "requests": len(overall.latencies_ms),
        "errors": overall.errors,
        "throughput_rps": round(len(overall.latencies_ms) / elapsed, 2),
        "tokens_per_s": round(generated / elapsed, 1),
        "latency": {"overall": summarize(overall)} | {label: summarize(s) for label, s in samples.items()},
        "error_samples": error_log[:5],
        "rss_peak_bytes": peak[0],
    }


def warm_up(base_url: str, tokens: int, routes: list[Route]) -> None:
    """One request per route: first-call allocations (caches, arenas) are not growth under load."""
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        for route in routes:
            url, body = route.build(PROMPTS[0], tokens)
            client.request(route.method, url, json=body).raise_for_status()  # a stream, read whole


def markdown(report: dict[str, Any]) -> str:
    rows = [
        "| route | requests | errors | p50 ms | p95 ms | p99 ms | max ms | first event p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, s in report["latency"].items():
        first = s.get("first_event_p50_ms", "")
        cells = [label, s["requests"], s["errors"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"], first]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    mb = 1024 * 1024
    rss = report["rss"]
    rows += [
        "",
        f"{report['config']['clients']} clients × {report['config']['duration_s']:g} s, "
        f"max_new_tokens {report['config']['max_new_tokens']}, MAX_BATCH_SIZE {report['config']['max_batch_size']}: "
        f"{report['requests']} requests in {report['elapsed_s']} s, {report['throughput_rps']} req/s, "
        f"{report['tokens_per_s']} tokens/s, {report['errors']} errors",
        f"server RSS: {rss['after_startup_bytes'] / mb:.0f} MB after startup, {rss['start_bytes'] / mb:.0f} MB after "
        f"warm-up, {rss['end_bytes'] / mb:.0f} MB at the end (peak {rss['peak_bytes'] / mb:.0f} MB), "
        f"growth {rss['growth_pct']:+.1f} %",
    ]
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("MODEL_DIR", "models/default")))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="fail at this RSS growth, in percent")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the server")
    parser.add_argument("--routes", nargs="+", choices=[r.label for r in ROUTES], help="only these (default: all)")
    parser.add_argument("--max-batch-size", type=int, help="the server's MAX_BATCH_SIZE (default: its own)")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be 1 to {MAX_CLIENTS}")
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be more than 0 and at most {MAX_DURATION_S:g} seconds")
    if not args.model_dir.is_dir():
        parser.error(f"--model-dir {args.model_dir} is not a directory (prepare one with `make model`)")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One load run as `args` say: the server started, loaded, stopped; the report (RuntimeError on failure)."""
    routes = [route for route in ROUTES if not args.routes or route.label in args.routes]
    env = {} if args.max_batch_size is None else {"MAX_BATCH_SIZE": str(args.max_batch_size)}
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        server = Server(args.model_dir.resolve(), free_port(), Path(tmp) / "server.log", env)
        try:
            server.wait_ready(args.startup_timeout)
            after_startup = rss_bytes(server.process.pid)
            warm_up(server.base_url, args.max_new_tokens, routes)
            start = rss_bytes(server.process.pid)
            load = asyncio.run(
                run_load(server.base_url, server.process.pid, args.clients, args.duration, args.max_new_tokens, routes)
            )
            end = rss_bytes(server.process.pid)
        except httpx.HTTPError as exc:
            raise RuntimeError(str(exc)) from exc
        finally:
            server.stop()
    growth_pct = (end - start) / start * 100
    report: dict[str, Any] = {
        "config": {
            "model_dir": str(args.model_dir),
            "clients": args.clients,
            "duration_s": args.duration,
            "max_new_tokens": args.max_new_tokens,
            "max_batch_size": args.max_batch_size or "default",
        },
        **{key: value for key, value in load.items() if key != "rss_peak_bytes"},
        "rss": {
            "after_startup_bytes": after_startup,
            "start_bytes": start,
            "end_bytes": end,
            "peak_bytes": max(load["rss_peak_bytes"], end),
            "growth_pct": round(growth_pct, 2),
        },
    }
    report["passed"] = report["errors"] == 0 and growth_pct < args.max_rss_growth
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    for sample in report["error_samples"]:
        print(f"error: {sample}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
