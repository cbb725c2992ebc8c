"""Anthropic's Messages API on the wire, on the tiny chat model: the message and its usage, stop sequences, the
named events of a stream, count_tokens, errors in Anthropic's shape, `x-api-key`, and tools (on the chat model
with room for tool definitions: its random weights call well only under the grammar)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.http_api.anthropic.protocol import stop_reason
from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.settings import Settings

from engine_apps import llamacpp_app
from server_process import serving_in_thread
from slowdown import fail_after
from tool_schemas import CLOCK, WEATHER

MODEL = "tiny-chat-llama"
HI = [{"role": "user", "content": "Hi there"}]
GREEDY: dict[str, Any] = {"model": MODEL, "temperature": 0}


def create(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/messages", json={**GREEDY, "messages": HI, "max_tokens": 8, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def text_of(message: dict[str, Any]) -> str:
    return "".join(block["text"] for block in message["content"] if block["type"] == "text")


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) of each event of an event stream (comment lines, such as pings, skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def assert_anthropic_error(response: Any, status: int, kind: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body) == {"type", "error", "request_id"}
    assert body["error"]["type"] == kind and set(body["error"]) == {"type", "message"}
    assert body["request_id"] == response.headers["x-request-id"]
    for word in words:
        assert word in body["error"]["message"], body


def test_a_message_in_anthropics_shape(chat_client: TestClient) -> None:
    message = create(chat_client, max_tokens=5)
    assert message["id"].startswith("msg_") and message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == MODEL
    assert [block["type"] for block in message["content"]] == ["text"] and text_of(message)
    assert (message["stop_reason"], message["stop_sequence"]) == ("max_tokens", None)  # random weights: no EOS
    usage = message["usage"]
    counted = chat_client.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": HI}).json()
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == counted["input_tokens"]
    assert usage["output_tokens"] == 5 and usage["cache_creation_input_tokens"] == 0


def test_the_same_prompt_again_reads_the_prefix_cache(chat_client: TestClient) -> None:
    system = "You answer in one word, always, whatever the question."
    first = create(chat_client, system=system)["usage"]
    again = create(chat_client, system=system)["usage"]
    total = first["input_tokens"] + first["cache_read_input_tokens"]
    assert again["input_tokens"] + again["cache_read_input_tokens"] == total
    assert again["cache_read_input_tokens"] > first["cache_read_input_tokens"] and again["input_tokens"] >= 1


def test_a_stop_sequence_ends_the_answer_and_is_named(chat_client: TestClient) -> None:
    text = text_of(create(chat_client, max_tokens=16))
    # A stop string whose first occurrence is inside the answer: the greedy answer stops just before it.
    start = next(i for i in range(1, len(text) - 2) if text.find(text[i : i + 2]) == i and text[i : i + 2].strip())
    stop = text[start : start + 2]
    message = create(chat_client, max_tokens=16, stop_sequences=["never-in-it", stop])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", stop)
    assert text_of(message) == text[:start]


def test_stop_reasons() -> None:
    assert stop_reason("eos", None, called=False) == "end_turn"
    assert stop_reason("stop", None, called=False) == "end_turn"  # a grammar completed
    assert stop_reason("stop", "###", called=False) == "stop_sequence"
    assert stop_reason("stop", None, called=True) == "tool_use"
    assert stop_reason("length", None, called=True) == "max_tokens"
    assert stop_reason("time_limit", None, called=False) == "max_tokens"


def test_system_as_text_or_blocks_and_a_prefill(chat_client: TestClient) -> None:
    def count(**fields: Any) -> int:
        response = chat_client.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": HI, **fields})
        assert response.status_code == 200, response.text
        return int(response.json()["input_tokens"])

    as_text = count(system="Be brief.\n\nBe kind.")
    blocks = [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}},
    ]
    assert count(system=blocks) == as_text != count()
    # The chat template's own rendering: what /tokenize counts for the same conversation in OpenAI's words.
    openai_words = [{"role": "system", "content": "Be brief.\n\nBe kind."}, *HI]
    assert chat_client.post("/tokenize", json={"messages": openai_words}).json()["count"] == as_text
    # A last assistant turn is a prefill: its text follows the prompt, and the answer continues it.
    prefill = [*HI, {"role": "assistant", "content": "Well"}]
    assert count(messages=prefill) > count()
    assert create(chat_client, messages=prefill)["content"][0]["text"] != "Well"


def test_a_stream_has_anthropics_named_events_in_order(chat_client: TestClient) -> None:
    whole = create(chat_client, max_tokens=8)
    response = chat_client.post("/v1/messages", json={**GREEDY, "messages": HI, "max_tokens": 8, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = named_events(response.text)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert names[2] == "content_block_start" and names[-3] == "content_block_stop"
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
    assert start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"] == (
        whole["usage"]["input_tokens"] + whole["usage"]["cache_read_input_tokens"]
    )
    assert "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta") == text_of(whole)
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == whole["usage"]["output_tokens"] == 8


def test_an_error_after_the_first_token_is_an_error_event(
    chat_app: FastAPI, chat_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_after(chat_app.state.scheduler.engine, monkeypatch, 2, "secret engine detail")
    response = chat_client.post("/v1/messages", json={**GREEDY, "messages": HI, "max_tokens": 20, "stream": True})
    assert response.status_code == 200  # sent before the error
    events = named_events(response.text)
    assert events[0][0] == "message_start" and "message_stop" not in [name for name, _ in events]
    name, error = events[-1]
    assert name == "error" and error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "secret" not in response.text and error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("fields", "status", "kind", "words"),
    [
        ({"max_tokens": None}, 400, "invalid_request_error", ["max_tokens", "required"]),
        ({"max_tokens": 10**6}, 400, "invalid_request_error", ["max_tokens"]),
        ({"temperature": 1.5}, 400, "invalid_request_error", ["temperature", "1"]),
        ({"thinking": {"type": "enabled"}}, 400, "invalid_request_error", ["thinking", "not supported"]),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]}]},
            400,
            "invalid_request_error",
            ["'image'", "not supported"],
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
            400,
            "invalid_request_error",
            ["tool_use blocks belong in assistant turns"],
        ),
        ({"tool_choice": {"type": "any"}}, 400, "invalid_request_error", ["tool_choice needs tools"]),
        ({"messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request_error", ["role"]),
        ({"max_tokens": 250}, 400, "invalid_request_error", ["context"]),  # the prompt and 250 > 256 tokens
    ],
    ids=[
        "no-max-tokens",
        "max-tokens-over-limit",
        "temperature",
        "unknown-field",
        "image",
        "misplaced-block",
        "tool-choice-without-tools",
        "role",
        "context",
    ],
)
def test_bad_requests_are_400s_in_anthropics_shape(
    chat_client: TestClient, fields: dict[str, Any], status: int, kind: str, words: list[str]
) -> None:
    body = {**GREEDY, "messages": HI, "max_tokens": 8, **fields}
    response = chat_client.post("/v1/messages", json={k: v for k, v in body.items() if v is not None})
    assert_anthropic_error(response, status, kind, *words)


def test_other_errors_on_its_paths_keep_their_status_in_anthropics_shape(chat_client: TestClient) -> None:
    not_json = chat_client.post("/v1/messages", content=b"{", headers={"content-type": "application/json"})
    assert_anthropic_error(not_json, 400, "invalid_request_error", "not valid JSON")
    assert_anthropic_error(
        chat_client.post("/v1/messages", content=b"x", headers={"content-type": "text/plain"}),
        415,
        "invalid_request_error",
        "Content-Type: application/json",
    )
    assert_anthropic_error(chat_client.post("/v1/messages/nothing", json={}), 404, "not_found_error")
    assert_anthropic_error(chat_client.get("/v1/messages"), 405, "invalid_request_error")
    # The other APIs keep theirs.
    assert chat_client.post("/v1/chat/completions", json={"messages": []}).json()["error"]["code"] == "validation_error"


def test_a_body_over_the_limit_is_request_too_large(chat_app: FastAPI) -> None:
    small = create_app(chat_app.state.scheduler, Settings(model_dir=Path("unused"), max_body_bytes=1024))
    with TestClient(small, raise_server_exceptions=False) as client:
        body = {**GREEDY, "messages": [{"role": "user", "content": "x" * 2000}], "max_tokens": 4}
        assert_anthropic_error(client.post("/v1/messages", json=body), 413, "request_too_large", "1024")


def test_an_unknown_model_is_a_not_found_error_when_names_must_match(chat_model_dir: Path) -> None:
    strict = llamacpp_app(chat_model_dir, model_name_policy="served")
    with TestClient(strict, raise_server_exceptions=False) as client:
        for path, body in [
            ("/v1/messages", {"model": "claude-x", "messages": HI, "max_tokens": 4}),
            ("/v1/messages/count_tokens", {"model": "claude-x", "messages": HI}),
        ]:
            assert_anthropic_error(client.post(path, json=body), 404, "not_found_error", "claude-x", MODEL)


def test_openapi_documents_the_routes_and_their_errors(chat_client: TestClient) -> None:
    schema = chat_client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/messages"]["post"]
    assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/AnthropicErrorResponse"
    )
    assert "422" not in operation["responses"]
    stream = json.dumps(operation["responses"]["200"]["content"]["text/event-stream"])
    assert "#/components/schemas/MessageStreamEvent" in stream and "MessageDelta" in schema["components"]["schemas"]
    body = schema["components"]["schemas"]["MessagesRequest"]["properties"]
    assert body["temperature"]["maximum"] == 1 and body["max_tokens"]["maximum"] >= 1
    assert "/v1/messages/count_tokens" in schema["paths"]


# ---- keys ----

KEY = "anthropic-key-1"


@pytest.fixture(scope="module")
def keyed(chat_app: FastAPI) -> Iterator[TestClient]:
    app = create_app(chat_app.state.scheduler, Settings(model_dir=Path("unused"), api_key=KEY))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    "headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": KEY[:-1]}, {"authorization": "Bearer x"}]
)
def test_without_a_valid_key_is_an_authentication_error(keyed: TestClient, headers: dict[str, str]) -> None:
    body = {**GREEDY, "messages": HI, "max_tokens": 2}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = keyed.post(path, json=body, headers=headers)
        assert_anthropic_error(response, 401, "authentication_error", "key")


@pytest.mark.parametrize("headers", [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}])
def test_the_key_in_x_api_key_or_as_a_bearer_token(keyed: TestClient, headers: dict[str, str]) -> None:
    anthropic_headers = {**headers, "anthropic-version": "2023-06-01"}
    response = keyed.post("/v1/messages", json={**GREEDY, "messages": HI, "max_tokens": 2}, headers=anthropic_headers)
    assert response.status_code == 200 and response.json()["usage"]["output_tokens"] == 2
    assert keyed.get("/v1/models", headers=headers).status_code == 200  # every keyed route takes either header


def test_the_sdk_sends_its_key_and_reads_errors(chat_app: FastAPI) -> None:
    app = create_app(chat_app.state.scheduler, Settings(model_dir=Path("unused"), api_key=KEY))
    with serving_in_thread(app) as url:
        good = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=60)
        # This SDK has no sampling arguments any more; older ones and raw clients send them, as extra_body does.
        message = good.messages.create(model=MODEL, max_tokens=3, messages=HI, extra_body={"temperature": 0})  # type: ignore[arg-type]
        assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
        with pytest.raises(anthropic.BadRequestError, match="temperature"):
            good.messages.create(model=MODEL, max_tokens=3, messages=HI, extra_body={"temperature": 2})  # type: ignore[arg-type]
        bad = anthropic.Anthropic(base_url=url, api_key="nope", max_retries=0, timeout=60)
        with pytest.raises(anthropic.AuthenticationError) as error:
            bad.messages.create(model=MODEL, max_tokens=3, messages=HI)  # type: ignore[arg-type]
        assert error.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        with pytest.raises(anthropic.APIStatusError) as error:
            list(good.messages.create(model=MODEL, max_tokens=300, messages=HI, stream=True))  # type: ignore[arg-type]
        assert error.value.status_code == 400  # before the first token: a status, not an event


# ---- tools ----

TOOLS = [
    {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER},
    {"name": "get_time", "input_schema": CLOCK, "cache_control": {"type": "ephemeral"}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_client(long_chat_model_dir: Path) -> Iterator[TestClient]:
    app = llamacpp_app(long_chat_model_dir, max_batch_size=4, max_batch_tokens=4096)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def call(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {**GREEDY, "messages": ASK, "max_tokens": 120, "tools": TOOLS, **fields}
    response = client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def tool_uses(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's tool_use blocks, each checked: an Anthropic id, a known tool, its input valid."""
    uses = [block for block in message["content"] if block["type"] == "tool_use"]
    for use in uses:
        assert use["id"].startswith("toolu_") and len(use["id"]) == 30
        jsonschema.validate(use["input"], SCHEMAS[use["name"]])
    return uses


def test_any_makes_a_tool_use_block_whose_input_validates(tools_client: TestClient) -> None:
    message = call(tools_client, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert len(tool_uses(message)) == 1 and message["content"][-1]["type"] == "tool_use"


def test_a_named_tool_is_the_one_used_and_none_answers_in_text(tools_client: TestClient) -> None:
    (use,) = tool_uses(call(tools_client, tool_choice={"type": "tool", "name": "get_time"}))
    assert use["name"] == "get_time"
    text = call(tools_client, tool_choice={"type": "none"}, max_tokens=10)
    assert [block["type"] for block in text["content"]] == ["text"] and text["stop_reason"] == "max_tokens"
    unknown = tools_client.post(
        "/v1/messages",
        json={
            **GREEDY,
            "messages": ASK,
            "max_tokens": 10,
            "tools": TOOLS,
            "tool_choice": {"type": "tool", "name": "f"},
        },
    )
    assert_anthropic_error(unknown, 400, "invalid_request_error", "'f'")


def test_a_streamed_tool_use_is_the_whole_one(tools_client: TestClient) -> None:
    fields: dict[str, Any] = {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
    whole = call(tools_client, **fields)
    assert whole["stop_reason"] == "tool_use"
    body = {**GREEDY, "messages": ASK, "max_tokens": 120, "tools": TOOLS, "stream": True, **fields}
    events = named_events(tools_client.post("/v1/messages", json=body).text)
    blocks: dict[int, dict[str, Any]] = {}
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] == len(blocks) and data["content_block"]["type"] == "tool_use"
            blocks[data["index"]] = {**data["content_block"], "json": ""}
        elif name == "content_block_delta":
            assert data["delta"]["type"] == "input_json_delta"
            blocks[data["index"]]["json"] += data["delta"]["partial_json"]
    streamed = [(b["name"], json.loads(b["json"])) for b in blocks.values()]
    assert streamed == [(use["name"], use["input"]) for use in tool_uses(whole)]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_a_round_trip_a_tool_use_its_result_and_the_answer(tools_client: TestClient) -> None:
    first = call(tools_client, tool_choice={"type": "tool", "name": "get_weather"})
    (use,) = tool_uses(first)
    result = {"type": "tool_result", "tool_use_id": use["id"], "content": [{"type": "text", "text": "18 C, sunny"}]}
    conversation = [
        *ASK,
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [result, {"type": "text", "text": "Thanks. Summarise."}]},
    ]
    answer = call(tools_client, messages=conversation, max_tokens=6, tool_choice={"type": "none"})
    assert answer["content"][0]["type"] == "text" and answer["stop_reason"] == "max_tokens"
    counted = tools_client.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": conversation})
    without_result = [*conversation[:2], {"role": "user", "content": "Thanks. Summarise."}]
    fewer = tools_client.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": without_result})
    assert counted.json()["input_tokens"] > fewer.json()["input_tokens"]  # the result is in the prompt
    image_result = {**result, "content": [{"type": "image", "source": {}}]}
    bad = [*conversation[:2], {"role": "user", "content": [image_result]}]
    response = tools_client.post("/v1/messages", json={**GREEDY, "messages": bad, "max_tokens": 4})
    assert_anthropic_error(response, 400, "invalid_request_error", "'image'")
