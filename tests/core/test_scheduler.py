"""Generation runs off the event loop, one engine call at a time, without requests interfering (the default
engine's app)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    # Not asyncio.run: it clears the thread's current loop, which Mangum relies on in later tests.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)


def test_health_answers_while_a_generation_runs(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = app.state.scheduler
    entered, release = threading.Event(), threading.Event()
    original: Callable[..., Any] = generator.engine.forward

    def held_forward(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(timeout=30)
        return original(*args, **kwargs)

    monkeypatch.setattr(generator.engine, "forward", held_forward)

    async def scenario() -> None:
        async with _client(app) as client:
            generation = asyncio.create_task(client.post("/generate", json={"prompt": "hi", "max_new_tokens": 3}))
            assert await asyncio.to_thread(entered.wait, 10)
            # If generation blocked the event loop, this would never complete.
            health = await asyncio.wait_for(client.get("/"), timeout=5)
            assert health.status_code == 200
            assert not generation.done()
            release.set()
            assert (await generation).status_code == 200

    _run(scenario())


def test_concurrent_requests_run_one_at_a_time_and_do_not_interfere(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [
        {"prompt": f"Request {i}", "max_new_tokens": 8, "do_sample": True, "seed": i, "num_return_sequences": 2}
        for i in range(6)
    ]

    async def run_all() -> list[dict[str, Any]]:
        async with _client(app) as client:
            responses = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
            return [r.json() for r in responses]

    sequential = [_run(_one(app, body)) for body in bodies]

    generator = app.state.scheduler
    original: Callable[..., Any] = generator.engine.forward
    active, peak, calls, lock = 0, 0, 0, threading.Lock()

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal active, peak, calls
        with lock:
            active += 1
            calls += 1
            peak = max(peak, active)
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(generator.engine, "forward", counting_forward)
    concurrent = _run(run_all())
    # One engine call at a time, and the requests' steps shared: fewer calls than 6 requests x (1 read + 7 decodes).
    assert peak == 1 and calls < 6 * 8
    assert [r["generated_sequences"] for r in concurrent] == [r["generated_sequences"] for r in sequential]


async def _one(app: FastAPI, body: dict[str, Any]) -> dict[str, Any]:
    async with _client(app) as client:
        response = await client.post("/generate", json=body)
        return response.json()
