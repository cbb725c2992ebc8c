"""Prometheus metrics at `GET /metrics`, for servers outside Lambda (ECS, Kubernetes, one box); docs/METRICS.md.

Names and labels follow vLLM's (`vllm:time_to_first_token_seconds` is `distilgpt2_api:time_to_first_token_seconds`
here), so dashboards and autoscaling rules written for it need only the prefix changed. Under Lambda, EMF
(observability.py) stays the metrics path and this endpoint is off by default (Settings.metrics_enabled).

Nothing here runs on the generating thread. A request is observed once, on the event loop, when it is over:
its `Timings` already hold what the histograms need (the generating thread records them anyway, for
Server-Timing), and its tokens and finish reasons are what its response reports. Running and waiting requests
are read from the scheduler only when Prometheus scrapes. Each app has a registry of its own, so several apps
in one process (tests) never share counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict

from fastapi import FastAPI, params
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request

from distilgpt2_api.core.errors import DeadlineExceeded
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.core.stream import RequestStream
from distilgpt2_api.observability import GenerationRecord
from distilgpt2_api.settings import Settings

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PREFIX = "distilgpt2_api:"
MODEL = "model_name"
REASON = "finished_reason"

# A CPU model: a first token takes from milliseconds (a short prompt, distilgpt2) to seconds (a long prompt,
# a larger model, a queue); the next ones from a few ms to a few hundred.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
# Whole requests, and their time in the queue: up to the time budget (25 s by default) and well past it.
REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)

# How a choice ended (core/sequence.FinishReason, or no reason: its client left, or an error), as vLLM labels it.
FINISHED_REASONS = {
    "stop": "stop",  # a stop string
    "eos": "stop",  # the model's end of sequence
    "length": "length",  # max_new_tokens
    "time_limit": "time_limit",  # the time budget ran out (generating, or still waiting)
    "schema_violation": "schema_violation",  # a finished answer fails its JSON Schema's check
    "cancelled": "abort",  # the client left
    "error": "error",
}
UNFINISHED = ("cancelled", "error")


class SchedulerLoad(Collector):
    """`num_requests_running` and `num_requests_waiting`, read from the scheduler at scrape time."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterable[Metric]:
        model = self.scheduler.model_name
        running = GaugeMetricFamily(
            f"{PREFIX}num_requests_running",
            "Requests generating now.",
            labels=[MODEL],
        )
        running.add_metric([model], self.scheduler.running)
        waiting = GaugeMetricFamily(
            f"{PREFIX}num_requests_waiting", "Requests queued for the model, not started yet.", labels=[MODEL]
        )
        waiting.add_metric([model], self.scheduler.waiting)
        return [running, waiting]


class PrometheusMetrics:
    """One app's metrics, in a registry of their own."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        model = scheduler.model_name

        def histogram(name: str, documentation: str, buckets: Sequence[float]) -> Histogram:
            metric = Histogram(PREFIX + name, documentation, [MODEL], registry=self.registry, buckets=buckets)
            return metric.labels(model)

        def counter(name: str, documentation: str) -> Counter:
            return Counter(PREFIX + name, documentation, [MODEL], registry=self.registry).labels(model)

        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "From queueing a request to its first token.", TTFT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds", "Between consecutive tokens of a request, one per token.", ITL_BUCKETS
        )
        self.e2e_request_latency = histogram(
            "e2e_request_latency_seconds", "From queueing a request to its end.", REQUEST_BUCKETS
        )
        self.request_queue_time = histogram(
            "request_queue_time_seconds", "Time a request waited for the model.", REQUEST_BUCKETS
        )
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of the requests the model ran.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens, as responses report them in usage.")
        success = Counter(
            PREFIX + "request_success",
            "Finished choices (sequences), by why they ended.",
            [MODEL, REASON],
            registry=self.registry,
        )
        # Every reason from the start, so that rates begin at zero rather than at a reason's first request.
        self.request_success = {reason: success.labels(model, reason) for reason in set(FINISHED_REASONS.values())}
        self.registry.register(SchedulerLoad(scheduler))
        kernels = Info(
            PREFIX + "kernels", "What the engine computes with on this CPU, and why.", [MODEL], registry=self.registry
        )
        kernels.labels(model).info({key: str(value) for key, value in asdict(scheduler.kernels).items()})

    def observe(self, record: GenerationRecord) -> None:
        """A request that reached the scheduler is over; per choice, its tokens and why it ended.

        Inter-token latency: a request's tokens come one per engine step, so its gaps add up to the time from
        its first token to its end. Each gap is observed as their mean, once per gap: the histogram's sum and
        count are exact (rate(sum) / rate(count) is the true mean), only a request's own spread is smoothed.
        Per-delta readings on the event loop would measure how fast the client reads, not the model. Requests
        that did not finish (the client left, an error) have no reliable end and add no gaps.
        """
        timings, completion_tokens, finish_reasons = record.timings, record.completion_tokens, record.finish_reasons
        ended = timings.ended or time.perf_counter()  # a request whose client left may still be running
        self.request_queue_time.observe((timings.started or ended) - timings.submitted)
        self.e2e_request_latency.observe(ended - timings.submitted)
        if timings.started is not None:
            self.prompt_tokens.inc(record.prompt_tokens)
        self.generation_tokens.inc(sum(completion_tokens))
        for reason in finish_reasons:
            self.request_success[FINISHED_REASONS[reason]].inc()
        if timings.first_token is None:
            return
        self.time_to_first_token.observe(timings.first_token - timings.submitted)
        gaps = max(completion_tokens, default=0) - 1
        if timings.ended is not None and gaps > 0 and not set(finish_reasons) & set(UNFINISHED):
            gap = (timings.ended - timings.first_token) / gaps
            for _ in range(gaps):
                self.inter_token_latency.observe(gap)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (CONTENT_TYPE), whatever the scraper prefers.

        Every Prometheus reads it. prometheus-client's OpenMetrics output, which Prometheus 2 asks for first,
        names a metric with a colon differently in its HELP and TYPE lines and in its samples
        (prometheus/client_python#1177): strict parsers then reject it.
        """
        return generate_latest(self.registry)


def observe_request(request: Request, record: GenerationRecord) -> None:
    """Count a request that reached the scheduler, now over, in its app's metrics (if they are on)."""
    metrics: PrometheusMetrics | None = request.app.state.prometheus  # None when metrics are off
    if metrics is not None:
        metrics.observe(record)


def failure_record(stream: RequestStream, error: BaseException) -> GenerationRecord:
    """A request that ended with `error` before any completion came back: no tokens, and why, per choice."""
    if isinstance(error, asyncio.CancelledError):
        reason = "cancelled"
    elif isinstance(error, DeadlineExceeded):
        reason = "time_limit"
    else:
        reason = "error"
    request = stream.request
    return GenerationRecord(
        request.prompt, stream.timings, request.prompt_tokens, (0,) * request.choices, (reason,) * request.choices
    )


def install_metrics(app: FastAPI, settings: Settings, dependencies: Sequence[params.Depends]) -> None:
    """`GET /metrics`, with `dependencies` (the API key); include it before `/{prompt}`, which would take the path.

    Left out of the OpenAPI schema: it is for Prometheus, not for API clients.
    """
    if not settings.metrics_enabled:
        app.state.prometheus = None
        return
    metrics = app.state.prometheus = PrometheusMetrics(app.state.scheduler)

    @app.get(PATH, include_in_schema=False, dependencies=list(dependencies))
    def scrape() -> Response:
        """Synchronous: FastAPI runs it in a worker thread, so formatting never holds up streams on the event loop."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)
