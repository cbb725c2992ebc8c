"""OpenAI's Responses API on the wire, on the llama.cpp engine over the tiny chat model: the response object as the
SDK's own types read it, the translation (the same prompt as chat completions), bounds and 400s, the stored
conversation (`previous_response_id`, GET, DELETE, the per-instance 404), named events in order, tool calls and
`text.format`. The tiny model has random weights: only greedy decoding and grammars make answers checkable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseStreamEvent as SdkStreamEvent
from pydantic import TypeAdapter

from distilgpt2_api.core.chat import ChatMessage
from distilgpt2_api.http_api.responses.protocol import OutputMessage, OutputTextPart, ResponseDraft
from distilgpt2_api.http_api.responses.store import ResponseStore

from engine_apps import llamacpp_app
from slowdown import fail_after

REPO = Path(__file__).resolve().parents[2]
GREEDY: dict[str, Any] = {"temperature": 0}
SDK_EVENT = TypeAdapter(SdkStreamEvent)


def create(client: TestClient, status: int = 200, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/responses", json={"max_output_tokens": 8, **body})
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def sdk_response(body: dict[str, Any]) -> SdkResponse:
    """The body as the SDK's `Response` type, validated strictly: every field it requires, each of its type."""
    return SdkResponse.model_validate(body)


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """A stream's events: (the SSE `event:` field, the JSON data)."""
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def stream(client: TestClient, **body: Any) -> list[dict[str, Any]]:
    """A streamed response's events, each checked: named by its type, numbered in order, of an SDK event type."""
    response = client.post("/v1/responses", json={"max_output_tokens": 8, **body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = named_events(response.text)
    assert [name for name, data in events] == [data["type"] for name, data in events]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for _, data in events:
        SDK_EVENT.validate_python(data)
    return [data for _, data in events]


# ---- the response object ----


def test_a_string_input_answers_as_the_sdks_response_type(chat_client: TestClient) -> None:
    body = create(chat_client, input="Hello", metadata={"topic": "greeting"}, user="u-1", **GREEDY)
    response = sdk_response(body)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == "tiny-chat-llama"
    (message,) = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.role == "assistant"
    (part,) = message.content
    assert part.type == "output_text" and part.annotations == [] and part.logprobs == []
    assert response.output_text == part.text
    usage = response.usage
    assert usage is not None and usage.output_tokens > 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert (response.metadata, response.user, response.temperature, response.top_p) == (
        {"topic": "greeting"},
        "u-1",
        0,
        1,
    )
    assert (response.tools, response.tool_choice, response.parallel_tool_calls) == ([], "auto", True)
    assert response.truncation == "disabled" and response.error is None and response.store is True
    assert response.reasoning is not None and response.reasoning.effort is None


def test_the_input_is_the_conversation_chat_completions_renders(chat_client: TestClient) -> None:
    """Instructions first as a system turn, then every item: the same prompt, so the same greedy answer."""
    items = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "Who "}, {"type": "input_text", "text": "are you?"}],
        },
    ]
    messages = [
        {"role": "system", "content": "You are a parrot."},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Who are you?"},
    ]
    body = create(chat_client, instructions="You are a parrot.", input=items, max_output_tokens=6, **GREEDY)
    chat = chat_client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, **GREEDY}).json()
    assert body["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]
    assert sdk_response(body).output_text == chat["choices"][0]["message"]["content"]
    assert body["instructions"] == "You are a parrot."


def test_a_cut_answer_is_incomplete(chat_client: TestClient) -> None:
    chat = chat_client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, **GREEDY}
    ).json()
    assert chat["choices"][0]["finish_reason"] == "length"  # the greedy answer is longer than 3 tokens
    body = create(chat_client, input="Hello", max_output_tokens=3, **GREEDY)
    assert body["status"] == "incomplete" and body["completed_at"] is None
    assert body["incomplete_details"] == {"reason": "max_output_tokens", "time_limit_reached": False}
    assert body["output"][0]["status"] == "incomplete" and body["usage"]["output_tokens"] == 3
    assert sdk_response(body).output_text == chat["choices"][0]["message"]["content"]


def test_a_repeated_prompt_reports_its_cached_tokens(chat_client: TestClient) -> None:
    ask = {"input": "Tell me about prefix caches, please.", "max_output_tokens": 2, **GREEDY}
    create(chat_client, **ask)
    usage = create(chat_client, **ask)["usage"]
    assert 0 < usage["input_tokens_details"]["cached_tokens"] < usage["input_tokens"]


def test_the_sample_lambda_event_is_served(chat_client: TestClient) -> None:
    event = json.loads((REPO / "events" / "post-responses.json").read_text())
    assert event["routeKey"] == "POST /v1/responses"
    sdk_response(create(chat_client, **json.loads(event["body"])))


# ---- bounds and what is not served ----


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metadata", {f"k{i}": "v" for i in range(17)}),
        ("metadata", {"k" * 65: "v"}),
        ("metadata", {"k": "v" * 513}),
        ("max_output_tokens", 0),
        ("max_output_tokens", 10_000),
        ("temperature", 2.5),
        ("top_p", 0),
        ("input", ""),
        ("input", "x" * 8001),
        ("input", []),
        ("input", [{"role": "user", "content": "x"}] * 257),
        ("input", [{"role": "tool", "content": "x"}]),
        ("input", [{"type": "function_call_output", "output": "no call_id"}]),
        ("instructions", "x" * 8001),
        ("tool_choice", "sometimes"),
        ("text", {"format": {"type": "json_schema", "name": "bad name!", "schema": {}}}),
        ("top_logprobs", 2),  # OpenAI's, not served: named rather than ignored
        ("background", True),
    ],
)
def test_out_of_bounds_fields_are_422s(chat_client: TestClient, field: str, value: Any) -> None:
    body = {"input": "Hello", field: value}
    error = create(chat_client, 422, **body)["error"]
    assert error["code"] == "validation_error" and error["param"].startswith(field)


@pytest.mark.parametrize(
    ("fields", "param", "named"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", "web_search"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools.0.type", "file_search"),
        ({"tools": [{"type": "computer_use_preview", "display_width": 8}]}, "tools.0.type", "computer_use_preview"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools.0.type", "code_interpreter"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools.0.type", "mcp"),
        ({"reasoning": {"effort": "low"}}, "reasoning", "does not reason"),
        ({"reasoning": {"summary": "auto"}}, "reasoning", "does not reason"),
        ({"truncation": "auto"}, "truncation", "auto"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            "input.0.content.0.type",
            "input_image",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            "input.0.content.0.type",
            "input_file",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type", "item_reference"),
        ({"tool_choice": "required"}, "tool_choice", "no function tools"),
    ],
)
def test_what_a_local_text_model_cannot_do_is_a_400_naming_it(
    chat_client: TestClient, fields: dict[str, Any], param: str | None, named: str
) -> None:
    error = create(chat_client, 400, **{"input": "Hello", **fields})["error"]
    assert error["param"] == param and named in error["message"]


def test_null_reasoning_and_disabled_truncation_are_served(chat_client: TestClient) -> None:
    body = create(chat_client, input="Hello", reasoning=None, truncation="disabled", max_output_tokens=2)
    assert body["reasoning"] == {"effort": None, "summary": None}
    create(chat_client, input="Hello", reasoning={"effort": None}, max_output_tokens=2)


# ---- stored responses ----


def test_previous_response_id_continues_the_stored_conversation(chat_client: TestClient) -> None:
    first = create(chat_client, instructions="Be a parrot.", input="Hello", **GREEDY)
    follow_up = create(chat_client, input="And then?", previous_response_id=first["id"], **GREEDY)
    assert follow_up["previous_response_id"] == first["id"] and follow_up["instructions"] is None
    # The same as sending the whole conversation (instructions are not carried over), stored nowhere.
    whole = [
        {"role": "user", "content": "Hello"},
        *first["output"],  # the output items sent back as input, as SDK users do
        {"role": "user", "content": "And then?"},
    ]
    resent = create(chat_client, input=whole, store=False, **GREEDY)
    assert resent["usage"]["input_tokens"] == follow_up["usage"]["input_tokens"]
    assert sdk_response(resent).output_text == sdk_response(follow_up).output_text
    assert chat_client.get(f"/v1/responses/{resent['id']}").status_code == 404  # store: false


def test_a_stored_response_is_read_and_deleted(chat_client: TestClient) -> None:
    body = create(chat_client, input="Hello")
    assert chat_client.get(f"/v1/responses/{body['id']}").json() == body
    deleted = chat_client.delete(f"/v1/responses/{body['id']}")
    assert deleted.json() == {"id": body["id"], "object": "response", "deleted": True}
    for response in (chat_client.get(f"/v1/responses/{body['id']}"), chat_client.delete(f"/v1/responses/{body['id']}")):
        assert response.status_code == 404 and response.json()["error"]["code"] == "response_not_found"


def test_an_unknown_previous_response_is_a_404_that_says_what_to_do(chat_client: TestClient) -> None:
    response = chat_client.post("/v1/responses", json={"input": "Hello", "previous_response_id": "resp_elsewhere"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "response_not_found" and error["param"] == "previous_response_id"
    for words in ("instance", "Lambda", "whole conversation", "store: false"):
        assert words in error["message"]


@pytest.fixture(scope="module")
def one_response_client(chat_model_dir: Path) -> Iterator[TestClient]:
    with TestClient(llamacpp_app(chat_model_dir, response_store_size=1), raise_server_exceptions=False) as client:
        yield client


def test_the_store_keeps_the_last_responses_only(one_response_client: TestClient) -> None:
    first, second = (create(one_response_client, input="Hello", max_output_tokens=2) for _ in range(2))
    assert one_response_client.get(f"/v1/responses/{first['id']}").status_code == 404  # pushed out by the second
    assert one_response_client.get(f"/v1/responses/{second['id']}").status_code == 200


def test_a_store_of_size_zero_keeps_nothing() -> None:
    response = finished_response()
    empty, sized = ResponseStore(0), ResponseStore(1)
    for store in (empty, sized):
        store.keeper(True, [ChatMessage(role="user", content="Hi")])(response)
    assert len(empty) == 0
    assert sized.history(response.id) == (
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content="Hi there"),
    )


def finished_response() -> Any:
    echo = {
        "instructions": None,
        "max_output_tokens": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "text": {"format": {"type": "text"}},
        "metadata": {},
        "previous_response_id": None,
        "store": True,
        "user": None,
    }
    output = [OutputMessage(status="completed", content=[OutputTextPart(text="Hi there")])]
    return ResponseDraft("m", echo).response(output, finish_reason="stop")


# ---- streaming ----


def test_a_stream_sends_openais_events_in_order(chat_client: TestClient) -> None:
    whole = create(chat_client, input="Hello", max_output_tokens=6, **GREEDY)
    events = stream(chat_client, input="Hello", max_output_tokens=6, **GREEDY)
    kinds = [event["type"] for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 0
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # cut at 6 tokens, as the whole answer was
    ]
    created, last = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["id"] == last["id"]
    text = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    item_id = events[2]["item"]["id"]
    assert all(event.get("item_id", item_id) == item_id for event in events)
    assert text == events[-4]["text"] == sdk_response(last).output_text == sdk_response(whole).output_text
    assert last["status"] == whole["status"] == "incomplete" and last["usage"]["output_tokens"] == 6
    assert chat_client.get(f"/v1/responses/{last['id']}").json() == last  # stored when it ended


def test_a_stream_that_completes_ends_with_response_completed(chat_client: TestClient) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    text = {"format": {"type": "json_schema", "name": "flag", "schema": schema, "strict": True}}
    events = stream(chat_client, input="Hello", text=text, max_output_tokens=40, **GREEDY)
    last = events[-1]
    assert last["type"] == "response.completed" and last["response"]["status"] == "completed"
    assert last["response"]["text"]["format"]["schema"] == schema  # echoed under OpenAI's name
    jsonschema.validate(json.loads(sdk_response(last["response"]).output_text), schema)


def test_an_error_after_the_first_token_ends_the_stream_with_an_error_event(
    chat_app: FastAPI, chat_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_after(chat_app.state.scheduler.engine, monkeypatch, 2, "secret engine detail")
    events = stream(chat_client, input="Hello", max_output_tokens=20, **GREEDY)
    assert events[0]["type"] == "response.created"
    error = events[-1]
    assert error["type"] == "error" and error["code"] == "internal_error" and "secret" not in json.dumps(events)
    assert not any(event["type"] in ("response.completed", "response.incomplete") for event in events)


# ---- structured output and tool calls ----


def test_text_format_json_object_and_schema_are_followed(chat_client: TestClient) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    body = create(
        chat_client,
        input="A digit?",
        text={"format": {"type": "json_schema", "name": "digit", "schema": schema}},
        max_output_tokens=40,
        **GREEDY,
    )
    assert body["status"] == "completed"
    jsonschema.validate(json.loads(sdk_response(body).output_text), schema)
    body = create(chat_client, input="Hi", text={"format": {"type": "json_object"}}, max_output_tokens=60, **GREEDY)
    assert body["status"] != "completed" or isinstance(json.loads(sdk_response(body).output_text), dict)


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}},
]


@pytest.fixture(scope="module")
def tool_client(long_chat_model_dir: Path) -> Iterator[TestClient]:
    """The chat model with room for tool definitions (a 2048-token context)."""
    app = llamacpp_app(long_chat_model_dir, max_batch_tokens=4096)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_required_call_is_a_function_call_item(tool_client: TestClient) -> None:
    choice = {"type": "function", "name": "get_weather"}
    body = create(tool_client, input="Weather?", tools=TOOLS, tool_choice=choice, max_output_tokens=80, **GREEDY)
    response = sdk_response(body)
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.id is not None and call.id.startswith("fc_") and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert body["tool_choice"] == choice and [tool["name"] for tool in body["tools"]] == ["get_weather", "get_time"]
    assert response.output_text == ""


def test_a_function_call_round_trip(tool_client: TestClient) -> None:
    first = create(
        tool_client,
        input="Weather?",
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=80,
        **GREEDY,
    )
    (call,) = first["output"]
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": json.dumps({"sky": "sunny"})}
    # Continued from the stored response, and resent whole: the same conversation.
    continued = create(
        tool_client, input=[result], previous_response_id=first["id"], tools=TOOLS, tool_choice="none", **GREEDY
    )
    resent = create(
        tool_client,
        input=[{"role": "user", "content": "Weather?"}, call, result],
        tools=TOOLS,
        tool_choice="none",
        **GREEDY,
    )
    for body in (continued, resent):
        assert [item["type"] for item in body["output"]] == ["message"]
    assert continued["usage"]["input_tokens"] == resent["usage"]["input_tokens"]
    assert sdk_response(continued).output_text == sdk_response(resent).output_text


def test_a_call_with_arguments_not_an_object_is_a_400(tool_client: TestClient) -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "[1]"}
    create(tool_client, 400, input=[call, {"type": "function_call_output", "call_id": "call_1", "output": "x"}])


def test_streamed_calls_add_up_to_the_whole_answers(tool_client: TestClient) -> None:
    ask: dict[str, Any] = {"input": "Weather?", "tools": TOOLS, "tool_choice": "required", "max_output_tokens": 120}
    ask["parallel_tool_calls"] = False  # one call, which ends the answer: a cut one would be text when whole
    whole = create(tool_client, **ask, **GREEDY)
    assert whole["status"] == "completed" and whole["output"][0]["type"] == "function_call"
    events = stream(tool_client, **ask, **GREEDY)
    done = [event["item"] for event in events if event["type"] == "response.output_item.done"]
    assert [(i["type"], i.get("name"), i.get("arguments")) for i in done] == [
        (i["type"], i.get("name"), i.get("arguments")) for i in whole["output"]
    ]
    for index, item in enumerate(done):
        pieces = [
            e for e in events if e.get("output_index") == index and e["type"].startswith("response.function_call")
        ]
        assert "".join(e["delta"] for e in pieces[:-1]) == pieces[-1]["arguments"] == item["arguments"]
        assert pieces[-1]["type"] == "response.function_call_arguments.done" and item["id"].startswith("fc_")
    assert events[-1]["response"]["output"] == done


def test_openapi_documents_the_routes_and_the_stream(chat_client: TestClient) -> None:
    schema = chat_client.get("/openapi.json").json()
    assert {"post"} <= set(schema["paths"]["/v1/responses"]) and {"get", "delete"} <= set(
        schema["paths"]["/v1/responses/{response_id}"]
    )
    stream = schema["paths"]["/v1/responses"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    data = stream["itemSchema"]["properties"]["data"]["contentSchema"]["anyOf"]
    assert {"$ref": "#/components/schemas/ResponseStreamEvent"} in data
    assert "ResponseStreamEvent" in schema["components"]["schemas"]
    request = schema["components"]["schemas"]["ResponseRequest"]["properties"]
    assert request["metadata"]["anyOf"][0]["maxProperties"] == 16
