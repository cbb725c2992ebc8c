"""Every generation response says where its time went, in the standard Server-Timing header."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.settings import Settings


def _metrics(header: str) -> dict[str, str]:
    """name -> the rest of its entry (`dur=...`, `desc="..."`)."""
    entries = [entry.strip() for entry in re.split(r",(?=\s*[a-z-]+(?:;|$))", header)]
    return {entry.split(";", 1)[0]: entry.partition(";")[2] for entry in entries}


def test_a_generation_reports_queue_compute_batch_and_tokens(client: TestClient) -> None:
    response = client.post("/generate", json={"prompt": "Once upon a time", "max_new_tokens": 5})
    metrics = _metrics(response.headers["server-timing"])
    usage = response.json()["usage"]
    assert float(metrics["queue"].removeprefix("dur=")) >= 0
    assert float(metrics["generate"].removeprefix("dur=")) > 0
    assert metrics["batch"] == 'desc="1 seq"'
    cached = usage["prompt_tokens_details"]["cached_tokens"]  # the prefix cache's share, when there is one
    prompt = f"prompt={usage['prompt_tokens']}" + (f" cached={cached}" if cached else "")
    assert metrics["tokens"] == f'desc="{prompt} completion={usage["completion_tokens"]}"'


def test_a_stream_reports_its_time_to_the_first_token(client: TestClient) -> None:
    with client.stream("POST", "/generate_stream", json={"prompt": "Once", "max_new_tokens": 5}) as response:
        metrics = _metrics(response.headers["server-timing"])
    assert {"queue", "first-token", "tokens", "batch"} <= metrics.keys()
    assert float(metrics["first-token"].removeprefix("dur=")) >= float(metrics["queue"].removeprefix("dur="))


def test_the_first_response_of_an_instance_carries_the_cold_start(app: FastAPI) -> None:
    fresh = create_app(app.state.scheduler, Settings(model_dir=Path("unused")), cold_start_seconds=1.25)
    with TestClient(fresh) as client:
        first, second = client.get("/"), client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2})
    assert _metrics(first.headers["server-timing"])["cold-start"] == 'dur=1250.0;desc="loading the model"'
    assert "cold-start" not in _metrics(second.headers["server-timing"])
