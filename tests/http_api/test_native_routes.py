"""The HTTP API: health, the tutorial route, POST /generate, errors and the schema."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api import __version__
from distilgpt2_api.core.request import GenerationRequest, SamplingParams
from distilgpt2_api.core.validation import ValidRequest
from distilgpt2_api.engines.base import cpu_name
from distilgpt2_api.engines.cpus import usable_cpus
from distilgpt2_api.engines.llamacpp_engine import load_cpu_backend

from slowdown import fail_after


def test_health_names_the_model(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("health", "model", "version")} == {
        "health": "ok", "model": "tiny-gpt2", "version": __version__
    }  # fmt: skip
    variant = load_cpu_backend()  # this process's: what the default engine loaded
    assert body["kernels"] == {
        "engine": "llamacpp",
        "cpu": cpu_name(),
        "variant": variant.name,
        "reason": variant.reason,
        "threads": usable_cpus().count,
    }
    assert str(uuid.UUID(response.headers["x-request-id"])) == response.headers["x-request-id"]


def test_prompt_route_returns_prompt_plus_continuation(client: TestClient) -> None:
    response = client.get("/Hello%20world,%20caf%C3%A9?max_new_tokens=5&num_return_sequences=3")
    assert response.status_code == 200
    sequences = response.json()["generated_sequences"]
    assert len(sequences) == 3
    assert all(s.startswith("Hello world, café") and len(s) > len("Hello world, café") for s in sequences)


def test_prompt_route_samples_as_the_tutorial_did(
    client: TestClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = app.state.scheduler
    seen: list[GenerationRequest] = []
    validate = generator.validate

    def spy(request: GenerationRequest) -> ValidRequest:
        seen.append(request)
        return validate(request)

    monkeypatch.setattr(generator, "validate", spy)
    (sequence,) = client.get("/Once upon a time").json()["generated_sequences"]
    assert sequence.startswith("Once upon a time") and len(sequence) > len("Once upon a time")
    (request,) = seen
    assert (request.max_new_tokens, request.n) == (50, 1)  # the tutorial's defaults
    assert request.sampling == SamplingParams(do_sample=True, top_k=50)  # its pipeline's sampling


def test_prompt_route_bounds(client: TestClient) -> None:
    for query in ("max_new_tokens=0", "max_new_tokens=513", "num_return_sequences=9", "max_new_tokens=abc"):
        response = client.get(f"/hello?{query}")
        assert response.status_code == 422, query
        body = response.json()
        assert body["error"]["code"] == "validation_error"
        assert body["error"]["param"] == query.split("=")[0]
        assert body["request_id"]


def _generate(client: TestClient, **body: object) -> dict:  # type: ignore[type-arg]
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _answer(body: dict) -> dict:  # type: ignore[type-arg]
    """A /generate answer without what the prefix cache changes (how many prompt tokens it reused)."""
    return {**body, "usage": {k: v for k, v in body["usage"].items() if k != "prompt_tokens_details"}}


def test_generate_greedy_is_deterministic_and_reports_usage(client: TestClient, app: FastAPI) -> None:
    tokenizer = app.state.scheduler.engine.tokenizer
    first = _generate(client, prompt="Once upon a time", max_new_tokens=12, details=True)
    second = _generate(client, prompt="Once upon a time", max_new_tokens=12, details=True)
    assert _answer(first) == _answer(second)
    assert first["model"] == "tiny-gpt2"
    assert first["seed"] is None
    usage = first["usage"]
    assert usage["prompt_tokens"] == len(tokenizer.encode("Once upon a time"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1  # all but the last
    (reason,) = first["finish_reasons"]
    (details,) = first["details"]
    ids = [token["id"] for token in details["tokens"]]
    assert usage["completion_tokens"] == details["generated_tokens"] == len(ids)
    if reason == "length":
        assert len(ids) == 12
    else:
        assert reason == "eos" and len(ids) < 12 and ids[-1] in app.state.scheduler.engine.info.eos_token_ids
    assert first["generated_sequences"] == ["Once upon a time" + tokenizer.decode(ids)]


def test_seeded_sampling_is_reproducible_and_seed_matters(client: TestClient) -> None:
    request = {"prompt": "The fox", "max_new_tokens": 16, "do_sample": True, "num_return_sequences": 3}
    a = _generate(client, **request, seed=7)
    b = _generate(client, **request, seed=7)
    c = _generate(client, **request, seed=8)
    assert _answer(a) == _answer(b)
    assert a["seed"] == 7
    assert len(a["generated_sequences"]) == 3 and len(set(a["generated_sequences"])) > 1  # each sampled on its own
    assert a["generated_sequences"] != c["generated_sequences"]
    assert _generate(client, **request)["seed"] is None


def test_greedy_with_several_sequences_repeats_the_greedy_answer(client: TestClient) -> None:
    result = _generate(client, prompt="The fox", max_new_tokens=6, num_return_sequences=3)
    single = _generate(client, prompt="The fox", max_new_tokens=6)
    assert result["generated_sequences"] == single["generated_sequences"] * 3
    assert result["finish_reasons"] == single["finish_reasons"] * 3
    assert result["usage"]["completion_tokens"] == 3 * single["usage"]["completion_tokens"]


def test_stop_string_cuts_each_output(client: TestClient) -> None:
    request = {"prompt": "The", "max_new_tokens": 40, "return_full_text": False, "do_sample": True, "seed": 3}
    free = _generate(client, **request)
    text = free["generated_sequences"][0]
    # A plain-text stop string the model is known to produce early at this seed.
    stop = next(text[i : i + 2] for i in range(1, len(text) // 2) if text[i : i + 2].isascii())
    stopped = _generate(client, **request, stop=[stop, "\u2603never"])
    cut = stopped["generated_sequences"][0]
    assert stopped["finish_reasons"] == ["stop"]
    assert cut == text[: text.find(stop)]
    # Generation itself stopped at the stop string, rather than running on and being trimmed.
    assert stopped["usage"]["completion_tokens"] < free["usage"]["completion_tokens"]


def test_return_full_text_false_omits_prompt(client: TestClient) -> None:
    full = _generate(client, prompt="Once upon", max_new_tokens=5)
    bare = _generate(client, prompt="Once upon", max_new_tokens=5, return_full_text=False)
    assert full["generated_sequences"][0] == "Once upon" + bare["generated_sequences"][0]


def test_sampling_parameters_are_accepted(client: TestClient) -> None:
    sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.2}
    request = {"prompt": "Hello", "max_new_tokens": 4, "return_full_text": False, "stop": ["never in this text"]}
    result = _generate(client, **request, **sampling, seed=1)
    assert result["seed"] == 1 and result["finish_reasons"] == ["length"]
    assert result["usage"]["completion_tokens"] == 4
    assert _answer(_generate(client, **request, **sampling, seed=1)) == _answer(result)  # the parameters, seeded
    # They take effect: sampling among the likeliest token only is the greedy answer.
    greedy = _generate(client, **request, repetition_penalty=1.2)
    only_the_likeliest = _generate(client, **request, **{**sampling, "top_k": 1}, seed=1)
    assert only_the_likeliest["generated_sequences"] == greedy["generated_sequences"]


def test_generate_rejects_bad_input_with_json_errors(client: TestClient) -> None:
    bad_bodies = [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 8001}, "prompt"),
        ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "hi", "max_new_tokens": 10_000}, "max_new_tokens"),
        ({"prompt": "hi", "num_return_sequences": 9}, "num_return_sequences"),
        ({"prompt": "hi", "temperature": 0}, "temperature"),
        ({"prompt": "hi", "temperature": 5e-324}, "temperature"),
        ({"prompt": "hi", "repetition_penalty": 5e-324}, "repetition_penalty"),
        ({"prompt": "hi", "top_p": 5e-324}, "top_p"),
        ({"prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"prompt": "hi", "top_k": -1}, "top_k"),
        ({"prompt": "hi", "seed": -1}, "seed"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "hi", "stop": [""]}, "stop.0"),
        ({"prompt": "hi", "max_tokens": 5}, "max_tokens"),
        ({"prompt": 5}, "prompt"),
    ]
    for body, param in bad_bodies:
        response = client.post("/generate", json=body)
        assert response.status_code == 422, body
        error = response.json()["error"]
        assert error["param"] == param, body
        assert error["message"].startswith(param)
        assert "Traceback" not in response.text


def test_context_overflow_is_a_400(client: TestClient, app: FastAPI) -> None:
    context = app.state.scheduler.engine.info.context_length
    response = client.post("/generate", json={"prompt": "hello there", "max_new_tokens": context})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert str(context) in error["message"]


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    missing = client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong_method = client.delete("/generate")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_internal_error_is_a_500_with_request_id_and_no_traceback(
    client: TestClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_after(app.state.scheduler.engine, monkeypatch, 0, "secret internal detail")  # the model fails at once
    response = client.post("/generate", json={"prompt": "hi"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["code"] == "internal_error"
    assert str(uuid.UUID(body["request_id"])) == body["request_id"] == response.headers["x-request-id"]
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text


def test_openapi_schema_shows_limits(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    generate = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["max_new_tokens"]["maximum"] == 512
    assert generate["num_return_sequences"]["maximum"] == 8
    assert generate["prompt"]["maxLength"] == 8000
    params = {p["name"]: p for p in schema["paths"]["/{prompt}"]["get"]["parameters"]}
    assert params["max_new_tokens"]["schema"]["maximum"] == 512
    assert params["max_new_tokens"]["schema"]["default"] == 50
    assert {"/", "/{prompt}", "/generate", "/v1/completions", "/v1/models"} <= set(schema["paths"])


def test_docs_pages_are_served(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        response = client.get(path)
        assert response.status_code == 200
        assert "/openapi.json" in response.text


def test_favicon_is_a_404_that_never_runs_the_model(
    client: TestClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran for /favicon.ico")

    monkeypatch.setattr(app.state.scheduler, "generate_blocking", must_not_run)
    response = client.get("/favicon.ico")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_unknown_path_is_a_404_for_every_method(client: TestClient, method: str) -> None:
    response = client.request(method, "/no-such-route")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_wrong_method_on_a_real_route_is_still_a_405(client: TestClient) -> None:
    assert client.delete("/v1/completions").status_code == 405
    assert client.put("/").status_code == 405


def test_a_body_that_is_not_json_says_so(client: TestClient) -> None:
    response = client.post("/generate", content=b'{"prompt": "x",,}', headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("the request body is not valid JSON") and "character 15" in error["message"]
    assert "param" not in error


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/generate", "POST"),
        ("GET", "/generate_stream", "POST"),
        ("GET", "/tokenize", "POST"),
        ("GET", "/detokenize", "POST"),
        ("GET", "/v1/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/generate", "POST"),
    ],
)
def test_a_fixed_route_owns_its_path_for_every_method(
    client: TestClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch, method: str, path: str, allow: str
) -> None:
    """`GET /generate` is the route's 405, never the tutorial route taking "generate" as a prompt."""

    def must_not_run(request: object) -> None:
        raise AssertionError(f"the model ran for {method} {path}")

    monkeypatch.setattr(app.state.scheduler, "validate", must_not_run)
    response = client.request(method, path)
    assert response.status_code == 405, response.text
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == allow


def test_other_single_segments_still_reach_the_tutorial_route(client: TestClient) -> None:
    response = client.get("/generated?max_new_tokens=2")  # shares a prefix with /generate, owns nothing
    assert response.status_code == 200
    (sequence,) = response.json()["generated_sequences"]
    assert sequence.startswith("generated") and len(sequence) > len("generated")


@pytest.mark.parametrize(("path", "prompt"), [("/%0A", "\n"), ("/generate%0A", "generate\n")])
def test_a_prompt_ending_in_a_newline_is_the_tutorial_route_not_a_fixed_one(
    client: TestClient, path: str, prompt: str
) -> None:
    """A path pattern's `$` would also match before a final newline (`/\\n` as `/`): paths end at their end."""
    response = client.get(f"{path}?max_new_tokens=2")
    assert response.status_code == 200, response.text
    assert response.json()["generated_sequences"][0].startswith(prompt)


def test_head_on_health_answers_without_a_body(client: TestClient) -> None:
    response = client.head("/")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_body_sent_without_json_content_type_is_told_to_send_json(
    client: TestClient, content_type: str | None
) -> None:
    """`curl -d '{...}'` sends a form content type: the error says what to send instead. (Refused rather than
    guessed: a browser sends text/plain and form bodies cross-site without asking the server first.)"""
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/generate", content=b'{"prompt": "hi"}', headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in error["message"] and (content_type or "none") in error["message"]


def test_a_body_that_is_not_utf8_is_invalid_json(client: TestClient) -> None:
    body = b'{"prompt": "caf\xe9"}'  # Latin-1, not UTF-8
    response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert "UTF-8" in error["message"]
    assert response.json()["request_id"]
