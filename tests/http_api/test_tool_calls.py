"""Tool calls on the llama.cpp engine: `tools`, `tool_choice`, `parallel_tool_calls`, calls in the conversation,
streamed as OpenAI streams them. The suite's tiny chat model has random weights: only the grammar makes its calls
well-formed, so every call must validate against its function's parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine_apps import llamacpp_app
from tool_schemas import CLOCK, WEATHER

TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ONE_GREEDY_CALL: dict[str, Any] = {"tool_choice": "required", "parallel_tool_calls": False, "temperature": 0}


@pytest.fixture(scope="module")
def app(long_chat_model_dir: Path) -> FastAPI:
    """The default engine over the chat model with room for tool definitions (a 2048-token context)."""
    return llamacpp_app(long_chat_model_dir, max_batch_size=4, max_batch_tokens=4096)


def chat(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 120, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def valid_calls(message: dict[str, Any], names: tuple[str, ...] = tuple(SCHEMAS)) -> list[dict[str, Any]]:
    """The message's calls, each checked: a known function, an id, arguments valid against its parameters."""
    calls = message["tool_calls"] or []
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) == 29
        assert call["function"]["name"] in names
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
    assert len({call["id"] for call in calls}) == len(calls)
    return calls


def test_required_makes_a_call_whose_arguments_validate(client: TestClient) -> None:
    for fields in ({"temperature": 0}, {"temperature": 1, "n": 4, "seed": 2}):
        for choice in chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, **fields)["choices"]:
            if choice["finish_reason"] == "length":
                continue
            assert choice["finish_reason"] == "tool_calls"
            assert len(valid_calls(choice["message"])) == 1


def test_a_named_function_is_the_one_called(client: TestClient) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    body = chat(client, tools=TOOLS, tool_choice=named, temperature=1, n=3, seed=8)
    stopped = [c for c in body["choices"] if c["finish_reason"] != "length"]
    assert stopped
    for choice in stopped:
        assert [c["function"]["name"] for c in valid_calls(choice["message"], ("get_time",))] == ["get_time"]


def test_parallel_calls_and_auto_always_validate(client: TestClient) -> None:
    """(That auto can take either way is shown in tests/core/test_tools.py, and against SmolLM2, which does call:
    this model's random weights never begin with `<`.)"""
    parallel = chat(client, tools=TOOLS, tool_choice="required", temperature=1, n=4, seed=1, max_tokens=150)
    for choice in parallel["choices"]:
        if choice["finish_reason"] == "tool_calls":
            assert len(valid_calls(choice["message"])) >= 1
    for seed in range(3):
        for choice in chat(client, tools=TOOLS, temperature=1.5, n=4, seed=seed)["choices"]:
            message = choice["message"]
            if message["tool_calls"]:
                assert choice["finish_reason"] == "tool_calls" and valid_calls(message)
            else:
                assert not (message["content"] or "").startswith("<")


def test_none_answers_in_text_without_offering_the_tools(client: TestClient) -> None:
    (choice,) = chat(client, tools=TOOLS, tool_choice="none", max_tokens=8)["choices"]
    assert choice["message"]["tool_calls"] is None and choice["finish_reason"] in ("stop", "length")


def test_a_round_trip_a_call_its_result_and_the_answer(client: TestClient) -> None:
    first = chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    message = first["choices"][0]["message"]
    (call,) = valid_calls(message)
    conversation = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temperature": 18})},
    ]
    answer = chat(client, messages=conversation, tools=TOOLS, tool_choice="none", max_tokens=10)
    (choice,) = answer["choices"]
    assert choice["message"]["tool_calls"] is None  # an answer in text, as tool_choice none asks
    tokens = answer["usage"]["completion_tokens"]
    assert (choice["finish_reason"], tokens) == ("length", 10) or (choice["finish_reason"] == "stop" and tokens < 10)
    prompt = client.post("/tokenize", json={"messages": conversation})
    assert prompt.status_code == 200, prompt.text
    # The call and its result are in what the model read.
    text = client.post("/detokenize", json={"tokens": prompt.json()["tokens"]}).json()["prompt"]
    assert call["function"]["arguments"] in text and "<tool_response>" in text


def test_streamed_calls_arrive_as_openai_streams_them(client: TestClient, sdk: openai.OpenAI) -> None:
    fields: dict[str, Any] = {
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 200,
    }
    (whole,) = chat(client, **fields)["choices"]
    stream = sdk.chat.completions.create(model="tiny-chat-llama", messages=ASK, stream=True, **fields)  # type: ignore[call-overload]
    calls: dict[int, dict[str, Any]] = {}
    reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for piece in choice.delta.tool_calls or []:
                if piece.index not in calls:  # a call's first delta: its index, id and name
                    assert piece.id and piece.function and piece.function.name
                    calls[piece.index] = {"name": piece.function.name, "arguments": ""}
                else:
                    assert piece.id is None
                calls[piece.index]["arguments"] += (piece.function and piece.function.arguments) or ""
            assert not choice.delta.content  # the call's markup never shows as text
    expected = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in valid_calls(whole["message"])
    ]
    assert [calls[i] for i in sorted(calls)] == expected
    assert reasons[-1] == whole["finish_reason"] == "tool_calls"


def test_the_sdk_reads_calls(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="tiny-chat-llama", messages=ASK, max_tokens=200, tools=TOOLS, **ONE_GREEDY_CALL
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("fields", "code", "param", "words"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}]},
            "invalid_tools",
            "tools",
            ["'f'", "not"],
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "invalid_tools",
            "tool_choice",
            ["nope"],
        ),
        (
            {"tools": TOOLS, "response_format": {"type": "json_object"}},
            "invalid_request",
            None,
            ["response_format"],
        ),
    ],
    ids=["unsupported-schema", "unknown-function", "with-response-format"],
)
def test_tools_that_cannot_be_followed_are_a_400(
    client: TestClient, fields: dict[str, Any], code: str, param: str | None, words: list[str]
) -> None:
    response = client.post("/v1/chat/completions", json={"messages": ASK, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error.get("param") == param
    assert all(word in error["message"] for word in words), error["message"]
