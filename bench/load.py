"""The HTTP load client every benchmark here uses, and a bounded load test on loopback (`make load`).

    python bench/load.py --model-dir models/default --clients 8 --duration 60 --json load.json

As a test: starts `uvicorn distilgpt2_api.api:app` on 127.0.0.1 (a free port), warms it up with one request per
route, then N clients send a mix of GET /, GET /{prompt}, POST /generate, POST /v1/completions and the streamed
POST /v1/completions and POST /generate_stream (read to their last event) for D seconds. Reports per-route latency
percentiles, time to the first streamed event, tokens/s (from each response's usage) and the server's RSS; prints
a markdown table, writes the same figures as JSON, and exits non-zero if any request failed or the server's RSS grew
by 10 % or more. As a module: `send` (one request, timed) and `run_load` (N clients for D seconds or K requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Service, proc_status_bytes, table  # noqa: E402

MAX_CLIENTS = 64
MAX_DURATION_S = 900.0
REQUEST_TIMEOUT_S = 300.0  # a request queued behind every other client's generation still fits
PROMPTS = ["Once upon a time", "The weather today is", "In a distant galaxy", "Hello, my name is"]
Build = Callable[[str, int], tuple[str, dict[str, Any] | None]]  # (prompt, tokens) -> (path, JSON body)


@dataclass(frozen=True)
class Route:
    label: str
    method: str
    build: Build
    last_event: str | None = None  # a streamed route: what its last event's data holds


def post(label: str, path: str, last_event: str | None = None, **fields: Any) -> Route:
    """A POST route whose body is `fields` plus the prompt and the token budget (`max_new_tokens` or `max_tokens`)."""
    budget = "max_tokens" if path.startswith("/v1/") else "max_new_tokens"
    return Route(label, "POST", lambda prompt, tokens: (path, {"prompt": prompt, budget: tokens, **fields}), last_event)


ROUTES = [
    Route("GET /", "GET", lambda prompt, tokens: ("/", None)),
    Route("GET /{prompt}", "GET", lambda prompt, tokens: (f"/{quote(prompt)}?max_new_tokens={tokens}", None)),
    post("POST /generate", "/generate"),
    post("POST /v1/completions", "/v1/completions"),
    post("POST /generate sampled", "/generate", do_sample=True),
    post(
        "POST /v1/completions stream", "/v1/completions", "[DONE]", stream=True, stream_options={"include_usage": True}
    ),
    post("POST /generate_stream", "/generate_stream", '"generated_text":"'),
]


@dataclass
class Outcome:
    """One request read to its end."""

    latency_s: float = 0.0
    first_event_s: float | None = None  # streamed: time to the first event that carries text
    usage: dict[str, Any] = field(default_factory=dict)  # `usage`, or a stream's last `details`
    text: str = ""
    error: str | None = None

    @property
    def completion_tokens(self) -> int:
        return int(self.usage.get("completion_tokens", self.usage.get("generated_tokens", 0)))

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first ÷ the time after the first (streamed requests)."""
        after_first = self.latency_s - (self.first_event_s or self.latency_s)
        return (self.completion_tokens - 1) / after_first if after_first > 0 else 0.0


def absorb(outcome: Outcome, event: dict[str, Any]) -> None:
    """Text and usage from a response or a streamed event (OpenAI's or TGI's)."""
    for choice in event.get("choices") or []:
        outcome.text += choice.get("text") or (choice.get("message") or choice.get("delta") or {}).get("content") or ""
    token = event.get("token") or {}
    outcome.text += "" if token.get("special") else token.get("text", "")
    if isinstance(event.get("usage"), dict):
        outcome.usage = event["usage"]
    elif isinstance(event.get("details"), dict):
        outcome.usage = event["details"]


async def send(client: httpx.AsyncClient, route: Route, prompt: str, tokens: int) -> Outcome:
    """One request: latency, time to the first streamed text, usage, text, error (never raises on HTTP)."""
    path, body = route.build(prompt, tokens)
    outcome, started = Outcome(), time.perf_counter()
    try:
        if route.last_event is None:
            response = await client.request(route.method, path, json=body)
            if response.status_code != 200:
                outcome.error = f"{route.label}: HTTP {response.status_code}: {response.text[:200]}"
            elif body is not None:
                absorb(outcome, response.json())
        else:
            last = ""
            async with client.stream(route.method, path, json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        last = line[5:].strip()
                        before = len(outcome.text)
                        if last.startswith("{"):
                            absorb(outcome, json.loads(last))
                        if outcome.first_event_s is None and (len(outcome.text) > before or last == route.last_event):
                            outcome.first_event_s = time.perf_counter() - started
            if response.status_code != 200 or route.last_event not in last:
                outcome.error = f"{route.label}: HTTP {response.status_code}, ended {last[:200]!r}"
    except httpx.HTTPError as exc:
        outcome.error = f"{route.label}: {type(exc).__name__}: {exc}"
    outcome.latency_s = time.perf_counter() - started
    return outcome


def client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, trust_env=False)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1] if ordered else 0.0


def summarize(outcomes: list[Outcome]) -> dict[str, float | int]:
    """Requests, errors, latency percentiles (ms) and the median time to the first streamed event."""
    ms = [1000 * o.latency_s for o in outcomes]
    summary: dict[str, float | int] = {"requests": len(ms), "errors": sum(o.error is not None for o in outcomes)}
    summary["tokens"] = sum(o.completion_tokens for o in outcomes)
    summary |= {f"p{p}_ms": round(percentile(ms, p), 1) for p in (50, 95, 99)} | {
        "max_ms": round(max(ms, default=0), 1)
    }
    if firsts := [1000 * o.first_event_s for o in outcomes if o.first_event_s is not None]:
        summary["first_event_p50_ms"] = round(percentile(firsts, 50), 1)
    return summary


async def run_load(
    base_url: str,
    pid: int,
    routes: list[Route],
    clients: int,
    tokens: int,
    duration_s: float = math.inf,
    requests: int | None = None,
    prompts: Sequence[str] = PROMPTS,
) -> dict[str, Any]:
    """`clients` concurrent clients, each cycling through `routes` from its own offset, until `duration_s` passes
    or `requests` have been sent: throughput, tokens/s, per-route latency, error samples, the server's peak RSS."""
    outcomes: dict[str, list[Outcome]] = {route.label: [] for route in routes}
    sent, started = 0, time.monotonic()
    until, peak = started + duration_s, [proc_status_bytes(pid, "VmRSS")]

    async def one_client(index: int) -> None:
        nonlocal sent
        rng = random.Random(index)
        async with client(base_url) as http:
            for turn in range(index, sys.maxsize):
                if time.monotonic() >= until or (requests is not None and sent >= requests):
                    return
                route, sent = routes[turn % len(routes)], sent + 1
                outcomes[route.label].append(await send(http, route, rng.choice(prompts), tokens))

    async def sample_rss() -> None:
        while not all(task.done() for task in tasks):
            peak[0] = max(peak[0], proc_status_bytes(pid, "VmRSS"))
            await asyncio.sleep(0.5)

    tasks = [asyncio.ensure_future(one_client(i)) for i in range(clients)]
    await asyncio.gather(sample_rss(), *tasks)
    elapsed = time.monotonic() - started
    everything = [o for values in outcomes.values() for o in values]
    return {
        "elapsed_s": round(elapsed, 2),
        "requests": len(everything),
        "errors": sum(o.error is not None for o in everything),
        "throughput_rps": round(len(everything) / elapsed, 2),
        "tokens_per_s": round(sum(o.completion_tokens for o in everything) / elapsed, 1),
        "latency": {"overall": summarize(everything)} | {label: summarize(v) for label, v in outcomes.items()},
        "error_samples": [o.error for o in everything if o.error][:5],
        "rss_peak_bytes": peak[0],
    }


# --- the load test --------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    keys = ["requests", "errors", "p50_ms", "p95_ms", "p99_ms", "max_ms", "first_event_p50_ms"]
    rows = [[label, *(s.get(key, "") for key in keys)] for label, s in report["latency"].items()]
    header = ["route", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms", "first event p50 ms"]
    config, rss, mb = report["config"], report["rss"], 2**20
    lines = [
        table(header, rows),
        f"{config['clients']} clients × {config['duration_s']:g} s, max_new_tokens {config['max_new_tokens']}, "
        f"MAX_BATCH_SIZE {config['max_batch_size']}: {report['requests']} requests in {report['elapsed_s']} s, "
        f"{report['throughput_rps']} req/s, {report['tokens_per_s']} tokens/s, {report['errors']} errors",
        f"server RSS: {rss['after_startup_bytes'] / mb:.0f} MB after startup, {rss['start_bytes'] / mb:.0f} MB after "
        f"warm-up, {rss['end_bytes'] / mb:.0f} MB at the end (peak {rss['peak_bytes'] / mb:.0f} MB), "
        f"growth {rss['growth_pct']:+.1f} %",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("MODEL_DIR", "models/default")))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="fail at this RSS growth, in percent")
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


async def warm_up(base_url: str, routes: list[Route], tokens: int) -> None:
    """One request per route: first-call allocations (caches, arenas) are not growth under load."""
    async with client(base_url) as http:
        for route in routes:
            if (outcome := await send(http, route, PROMPTS[0], tokens)).error:
                raise RuntimeError(f"warm-up: {outcome.error}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One load run as `args` say: the server started, loaded, stopped; the report (RuntimeError on failure)."""
    routes = [route for route in ROUTES if not args.routes or route.label in args.routes]
    env = {} if args.max_batch_size is None else {"MAX_BATCH_SIZE": str(args.max_batch_size)}
    with Service.ours(args.model_dir, env) as server:
        after_startup = proc_status_bytes(server.pid, "VmRSS")
        asyncio.run(warm_up(server.base_url, routes, args.max_new_tokens))
        start = proc_status_bytes(server.pid, "VmRSS")
        load = asyncio.run(
            run_load(server.base_url, server.pid, routes, args.clients, args.max_new_tokens, args.duration)
        )
        end = proc_status_bytes(server.pid, "VmRSS")
    growth_pct = (end - start) / start * 100
    config = {"model_dir": str(args.model_dir), "clients": args.clients, "duration_s": args.duration}
    config |= {"max_new_tokens": args.max_new_tokens, "max_batch_size": args.max_batch_size or "default"}
    rss = {"after_startup_bytes": after_startup, "start_bytes": start, "end_bytes": end}
    rss |= {"peak_bytes": max(load.pop("rss_peak_bytes"), end), "growth_pct": round(growth_pct, 2)}
    report = {"config": config, **load, "rss": rss}
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
