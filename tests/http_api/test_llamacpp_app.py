"""The app on its default engine, llama.cpp, and the step loop (conftest's `app`): every route and stream through
a real server and the `openai` SDK; requests of different sampling settings share steps; prefix caching."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from distilgpt2_api.core.loop import StepScheduler
from distilgpt2_api.engines.base import cpu_name
from distilgpt2_api.engines.cpus import usable_cpus
from distilgpt2_api.engines.llamacpp_engine import LlamaCppEngine, load_cpu_backend
from distilgpt2_api.settings import Settings

from engine_apps import llamacpp_app
from slowdown import slow_down, wait_until_idle

PROMPT = "Once upon a time"
NEVER = ["never in this text"]  # keeps generation going to max tokens


def test_the_default_app_is_the_step_loop_on_llamacpp(app: FastAPI) -> None:
    """No ENGINE set (conftest's `app`): llama.cpp, driven a step at a time, with the default settings' slots."""
    scheduler, defaults = app.state.scheduler, Settings(model_dir=Path("unused"))
    assert defaults.engine == "llamacpp"
    assert type(scheduler) is StepScheduler and type(scheduler.engine) is LlamaCppEngine
    assert scheduler.max_batch_size == defaults.max_batch_size
    assert scheduler.engine.slots == defaults.max_batch_size + defaults.prefix_cache_slots


def test_health_and_metrics_name_the_cpu_variant_and_why(client: TestClient) -> None:
    variant = load_cpu_backend()  # this process's: what the app's engine loaded
    kernels = client.get("/").json()["kernels"]
    threads = usable_cpus().count  # no THREADS set: the CPUs this process may use
    assert kernels == {
        "engine": "llamacpp", "cpu": cpu_name(), "variant": variant.name, "reason": variant.reason, "threads": threads
    }  # fmt: skip
    assert variant.name in variant.reason and variant.chosen_by in variant.reason
    (info,) = [
        family
        for family in text_string_to_metric_families(client.get("/metrics").text)
        if family.name == "distilgpt2_api:kernels_info"
    ]
    (sample,) = info.samples
    assert sample.labels == {"model_name": "tiny-gpt2", **kernels, "threads": str(threads)} and sample.value == 1


def test_threads_set_by_the_setting(model_dir: Path) -> None:
    with TestClient(llamacpp_app(model_dir, threads=3, max_batch_size=1)) as client:
        assert client.get("/").json()["kernels"]["threads"] == 3


def test_completions_greedy_seeded_and_streamed(sdk: openai.OpenAI) -> None:
    greedy = sdk.completions.create(model="tiny-gpt2", prompt=PROMPT, max_tokens=12, temperature=0, stop=NEVER)
    (choice,) = greedy.choices
    assert choice.finish_reason == "length" and choice.text
    assert greedy.usage is not None and greedy.usage.completion_tokens == 12
    seeded = [
        [c.text for c in sdk.completions.create(model="tiny-gpt2", prompt=PROMPT, max_tokens=8, n=2, seed=7).choices]
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1] and len(seeded[0]) == 2 and seeded[0][0] != seeded[0][1]
    streamed = "".join(
        chunk.choices[0].text
        for chunk in sdk.completions.create(
            model="tiny-gpt2", prompt=PROMPT, max_tokens=12, temperature=0, stop=NEVER, stream=True
        )
        if chunk.choices
    )
    assert streamed == choice.text


def test_logprobs_and_generate_details(sdk: openai.OpenAI, client: TestClient) -> None:
    completion = sdk.completions.create(model="tiny-gpt2", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=3)
    logprobs = completion.choices[0].logprobs
    assert completion.usage is not None and logprobs is not None and logprobs.top_logprobs is not None
    assert len(logprobs.tokens or []) == len(logprobs.token_logprobs or []) == completion.usage.completion_tokens
    assert "".join(logprobs.tokens or []) == completion.choices[0].text
    for token, logprob, top in zip(
        logprobs.tokens or [], logprobs.token_logprobs or [], logprobs.top_logprobs, strict=True
    ):
        assert logprob is not None and logprob <= 0
        assert len(top) == 3  # greedy: the chosen token is the likeliest, one of the three
        assert top[token] == pytest.approx(logprob) and logprob == pytest.approx(max(top.values()))
    body = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 3, "details": True}).json()
    (details,) = body["details"]
    assert len(details["tokens"]) == details["generated_tokens"] == body["usage"]["completion_tokens"]
    assert body["generated_sequences"] == [PROMPT + "".join(t["text"] for t in details["tokens"])]


def test_the_tutorial_route_and_tgi_stream(client: TestClient) -> None:
    (sequence,) = client.get("/Hello?max_new_tokens=3").json()["generated_sequences"]
    assert sequence.startswith("Hello") and len(sequence) > len("Hello")
    body = {"prompt": PROMPT, "max_new_tokens": 3, "stop": NEVER}
    with client.stream("POST", "/generate_stream", json=body) as response:
        events = [json.loads(line[len("data:") :]) for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) == 3 and [e["generated_text"] is None for e in events] == [True, True, False]
    plain = client.post("/generate", json=body).json()
    assert (
        events[-1]["generated_text"]
        == plain["generated_sequences"][0]
        == PROMPT + "".join(e["token"]["text"] for e in events)
    )


def test_a_repeated_prompt_reuses_its_prefix(client: TestClient) -> None:
    """The second request with the same long beginning computes only its new tokens (prefix caching)."""
    system = "You are a helpful assistant. " * 8
    first = client.post("/v1/completions", json={"prompt": system + "Hi", "max_tokens": 2, "temperature": 0})
    second = client.post("/v1/completions", json={"prompt": system + "Hello", "max_tokens": 2, "temperature": 0})
    assert first.status_code == second.status_code == 200
    cached = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= len(client.post("/tokenize", json={"prompt": system}).json()["tokens"]) - 1
    assert "cached=" in second.headers["server-timing"]


def test_requests_with_different_settings_share_steps(app: FastAPI, base_url: str) -> None:
    """Greedy, sampled and seeded requests run side by side; each greedy answer is its answer alone."""
    prompts = ["Once upon a time", "The weather today", "In the beginning"]

    def complete(prompt: str, **params: Any) -> str:
        body = {"prompt": prompt, "max_tokens": 10, "stop": NEVER, **params}
        response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["text"])

    alone = [complete(p, temperature=0) for p in prompts]
    seeded_alone = complete(PROMPT, temperature=0.9, seed=3)
    results: dict[str, str] = {}
    jobs = [(f"greedy-{i}", p, {"temperature": 0}) for i, p in enumerate(prompts)]
    jobs += [("seeded", PROMPT, {"temperature": 0.9, "seed": 3}), ("sampled", PROMPT, {"temperature": 1.2})]
    threads = [
        threading.Thread(target=lambda k=k, p=p, o=o: results.__setitem__(k, complete(p, **o))) for k, p, o in jobs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results[f"greedy-{i}"] for i in range(3)] == alone
    assert results["seeded"] == seeded_alone


def test_a_client_that_leaves_frees_its_slot(base_url: str, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_down(app.state.scheduler.engine, monkeypatch)
    long = {"prompt": PROMPT, "max_new_tokens": 200, "stop": NEVER}  # >= 10 s of steps
    with httpx.stream("POST", f"{base_url}/generate_stream", json=long, timeout=60) as response:
        for index, _ in enumerate(line for line in response.iter_lines() if line.startswith("data:")):
            if index == 2:
                break
    assert wait_until_idle(app.state.scheduler, timeout=10) < 5  # freed long before its 200 tokens
    assert app.state.scheduler.running == 0


def test_chat_on_the_chat_model(chat_client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "temperature": 0, "logprobs": True}
    response = chat_client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    (choice,) = answer["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    tokens = choice["logprobs"]["content"]
    assert answer["usage"]["completion_tokens"] == len(tokens)
    reason = choice["finish_reason"]
    assert (len(tokens), reason) == (5, "length") or (len(tokens) < 5 and reason == "stop")
    assert "".join(t["token"] for t in tokens if "<|im" not in t["token"]) == choice["message"]["content"]
