"""What a reader of the original tutorial types: `uvicorn distilgpt2_api.api:app --reload`, and TextGenerator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.core.loop import StepScheduler
from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.text_generation import TextGenerator

from server_process import server_process


def test_the_tutorial_command_serves(model_dir: Path, tmp_path: Path) -> None:
    command = ["-m", "uvicorn", "distilgpt2_api.api:app", "--reload", "--port", "{port}"]
    with server_process(command, {"MODEL_DIR": str(model_dir)}, tmp_path / "server.log") as server:
        response = httpx.get(f"{server.base_url}/Once upon a time?max_new_tokens=3&num_return_sequences=2", timeout=30)
    assert response.status_code == 200
    sequences = response.json()["generated_sequences"]
    assert len(sequences) == 2 and all(s.startswith("Once upon a time") for s in sequences)


def test_one_app_module(app: FastAPI) -> None:
    import distilgpt2_api.api
    import distilgpt2_api.app

    assert distilgpt2_api.app.app is distilgpt2_api.api.app is app


def test_text_generator_returns_prompt_plus_continuations(app: FastAPI) -> None:
    sequences = TextGenerator().generate("Once upon a time", max_new_tokens=5, num_return_sequences=3)
    assert isinstance(sequences, list) and len(sequences) == 3
    assert all(isinstance(s, str) and s.startswith("Once upon a time") and len(s) > 16 for s in sequences)
    assert TextGenerator().scheduler is TextGenerator().scheduler  # the model is loaded once per process


def test_text_generator_samples_as_the_tutorial_route(
    app: FastAPI, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler: StepScheduler = app.state.scheduler
    seen: list[GenerationRequest] = []
    validate = scheduler.validate

    def record(request: GenerationRequest) -> Any:  # every request, served or not, is validated here
        seen.append(request)
        return validate(request)

    monkeypatch.setattr(scheduler, "validate", record)
    TextGenerator(scheduler).generate("Hello there", max_new_tokens=7, num_return_sequences=2)
    client.get("/Hello there?max_new_tokens=7&num_return_sequences=2")
    from_python, from_route = seen
    assert from_route.deadline is not None and from_python.deadline is None  # only served requests have a budget
    assert (from_python.prompt, from_python.max_new_tokens, from_python.n, from_python.sampling) == (
        from_route.prompt,
        from_route.max_new_tokens,
        from_route.n,
        from_route.sampling,
    )
