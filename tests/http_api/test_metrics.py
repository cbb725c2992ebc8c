"""Prometheus metrics at GET /metrics: read back with prometheus-client's own parsers, moved by requests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.settings import Settings

from engine_apps import llamacpp_app
from route_table import app_routes
from server_process import serving_in_thread
from slowdown import STEP_SECONDS, fail_after, hold, slow_down

P = "distilgpt2_api:"
MODEL = "tiny-gpt2"
HISTOGRAMS = ["time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds"]
HISTOGRAMS += ["request_queue_time_seconds"]
COUNTERS = ["prompt_tokens", "generation_tokens", "request_success"]
GAUGES = ["num_requests_running", "num_requests_waiting"]
REASONS = {"stop", "length", "time_limit", "abort", "error", "schema_violation"}
PROMPT = "Once upon a time"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient | httpx.Client, **headers: str) -> Samples:
    """Every sample of /metrics, as prometheus-client parses the text format: (name, labels) -> value."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(P + name, frozenset({"model_name": MODEL, **labels}.items()))]


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def counts_moved(before: Samples, after: Samples) -> dict[str, float]:
    """How many observations each histogram gained."""
    return {name: moved(before, after, f"{name}_count") for name in HISTOGRAMS}


def reasons_moved(before: Samples, after: Samples) -> dict[str, float]:
    """request_success_total's change by finished_reason, the reasons that did not move left out."""
    changes = {reason: moved(before, after, "request_success_total", finished_reason=reason) for reason in REASONS}
    return {reason: change for reason, change in changes.items() if change}


def sse_data(text: str) -> list[str]:
    return [line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")]


def test_every_metric_is_served_with_the_model_name(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    expected = {
        **{P + name: "histogram" for name in HISTOGRAMS},
        **{P + name: "counter" for name in COUNTERS},
        **{P + name: "gauge" for name in GAUGES},
    }
    assert {name: families[name].type for name in expected if name in families} == expected
    for name in expected:
        assert families[name].samples, name
        assert all(sample.labels["model_name"] == MODEL for sample in families[name].samples), name
    reasons = {s.labels["finished_reason"] for s in families[P + "request_success"].samples if s.name.endswith("total")}
    assert reasons == REASONS  # every reason from the start, at zero or more


def test_the_text_format_even_for_a_scraper_that_prefers_openmetrics(client: TestClient) -> None:
    prometheus_2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    response = client.get("/metrics", headers={"accept": prometheus_2 + "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
    assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    declared = {line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE")}
    sampled = {line.split("{")[0].split()[0] for line in response.text.splitlines() if not line.startswith("#")}
    assert P + "prompt_tokens_total" in declared & sampled  # a sample's name is the one its TYPE line declares


def test_a_generation_moves_every_request_metric(client: TestClient) -> None:
    before = scrape(client)
    response = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 6})
    after = scrape(client)
    body = response.json()
    usage, (reason,) = body["usage"], body["finish_reasons"]
    assert moved(before, after, "prompt_tokens_total") == usage["prompt_tokens"]
    assert moved(before, after, "generation_tokens_total") == usage["completion_tokens"]
    assert counts_moved(before, after) == {
        "time_to_first_token_seconds": 1,
        "inter_token_latency_seconds": usage["completion_tokens"] - 1,  # one per gap between tokens
        "e2e_request_latency_seconds": 1,
        "request_queue_time_seconds": 1,
    }
    assert reasons_moved(before, after) == {"stop" if reason == "eos" else reason: 1}
    assert moved(before, after, "e2e_request_latency_seconds_sum") > 0
    ttft = moved(before, after, "time_to_first_token_seconds_sum")
    assert 0 < ttft <= moved(before, after, "e2e_request_latency_seconds_sum")


def test_a_stream_is_counted_when_it_ends(client: TestClient) -> None:
    before = scrape(client)
    body = {"prompt": PROMPT, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    response = client.post("/v1/completions", json=body)
    after = scrape(client)
    *chunks, done = sse_data(response.text)
    assert done == "[DONE]"
    usage = json.loads(chunks[-1])["usage"]
    (reason,) = [c["finish_reason"] for chunk in chunks for c in json.loads(chunk)["choices"] if c["finish_reason"]]
    assert moved(before, after, "prompt_tokens_total") == usage["prompt_tokens"]
    assert moved(before, after, "generation_tokens_total") == usage["completion_tokens"]
    assert counts_moved(before, after)["time_to_first_token_seconds"] == 1
    assert counts_moved(before, after)["e2e_request_latency_seconds"] == 1
    assert reasons_moved(before, after) == {reason: 1}


def test_each_choice_is_counted(client: TestClient) -> None:
    before = scrape(client)
    response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "n": 3, "temperature": 0})
    after = scrape(client)
    body = response.json()
    assert moved(before, after, "generation_tokens_total") == body["usage"]["completion_tokens"]
    assert sum(reasons_moved(before, after).values()) == 3
    assert counts_moved(before, after)["e2e_request_latency_seconds"] == 1  # one request


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"prompt": PROMPT, "max_new_tokens": 4}),
        ("/generate_stream", {"prompt": PROMPT, "max_new_tokens": 4}),
    ],
)
def test_a_failed_request_counts_as_an_error(
    client: TestClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch, path: str, body: dict[str, Any]
) -> None:
    before = scrape(client)
    fail_after(app.state.scheduler.engine, monkeypatch, 0, "boom")  # the prompt's read fails: no token comes
    response = client.post(path, json=body)
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    after = scrape(client)
    assert reasons_moved(before, after) == {"error": 1}
    assert counts_moved(before, after) == {
        "time_to_first_token_seconds": 0,  # no token came
        "inter_token_latency_seconds": 0,
        "e2e_request_latency_seconds": 1,
        "request_queue_time_seconds": 1,
    }
    assert moved(before, after, "generation_tokens_total") == 0


def test_a_client_that_leaves_counts_as_an_abort(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_down(app.state.scheduler.engine, monkeypatch)
    long = {"prompt": PROMPT, "max_new_tokens": 200, "stop": ["never in this text"]}
    with serving_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        before = scrape(http)
        started = time.monotonic()
        with http.stream("POST", "/generate_stream", json=long) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break  # and the connection closes
        after = _eventually(lambda: scrape(http), lambda samples: bool(reasons_moved(before, samples)))
        elapsed = time.monotonic() - started
    assert reasons_moved(before, after) == {"abort": 1}
    assert counts_moved(before, after)["inter_token_latency_seconds"] == 0  # no reliable end
    assert counts_moved(before, after)["time_to_first_token_seconds"] == 1
    # The tokens it made before it ended: at least the one read, at most one a slowed step until it was counted.
    assert 1 <= moved(before, after, "generation_tokens_total") <= elapsed / STEP_SECONDS + 1


def _eventually(read: Callable[[], Samples], done: Callable[[Samples], bool], timeout: float = 20) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = read()
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.fixture(scope="module")
def one_at_a_time(model_dir: Path) -> FastAPI:
    """The default engine's app running one sequence at a time (MAX_BATCH_SIZE=1): a second request waits."""
    return llamacpp_app(model_dir, max_batch_size=1)


@pytest.fixture
def gate(one_at_a_time: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The engine holds every call until the gate opens: requests stay running, and the next ones waiting."""
    opened = threading.Event()
    hold(one_at_a_time.state.scheduler.engine, monkeypatch, opened)
    yield opened
    opened.set()


def test_running_and_waiting_requests_are_read_at_scrape_time(one_at_a_time: FastAPI, gate: threading.Event) -> None:
    load = ("num_requests_running", "num_requests_waiting")
    with TestClient(one_at_a_time) as client, ThreadPoolExecutor(max_workers=2) as pool:
        assert [value(scrape(client), name) for name in load] == [0, 0]
        answers = [
            pool.submit(client.post, "/generate", json={"prompt": prompt, "max_new_tokens": 3})
            for prompt in ("Once", "Twice")
        ]
        # One held in the engine, the other queued behind it (until both are submitted, one may be waiting alone).
        busy = _eventually(lambda: scrape(client), lambda samples: [value(samples, name) for name in load] == [1, 1])
        assert [value(busy, name) for name in load] == [1, 1]
        gate.set()
        assert [answer.result(timeout=30).status_code for answer in answers] == [200, 200]
        assert [value(scrape(client), name) for name in load] == [0, 0]


def test_each_app_counts_its_own_requests(app: FastAPI, client: TestClient) -> None:
    with TestClient(create_app(app.state.scheduler, Settings(model_dir=Path("x")))) as fresh:
        before = scrape(fresh)
        client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2})
        assert scrape(fresh) == before
        assert value(before, "e2e_request_latency_seconds_count") == 0


def test_off_by_default_under_lambda_where_emf_serves(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "distilgpt2-api")
    assert Settings(model_dir=Path("x")).metrics_enabled is False
    assert ("GET", "/metrics") not in app_routes(create_app(app.state.scheduler, Settings(model_dir=Path("x"))))
    assert Settings(model_dir=Path("x"), metrics_enabled=True).metrics_enabled is True
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    assert Settings(model_dir=Path("x")).metrics_enabled is True


def test_metrics_are_left_out_of_the_openapi_schema(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
