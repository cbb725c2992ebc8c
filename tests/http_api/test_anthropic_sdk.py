"""The `anthropic` SDK against the app served on loopback with the real SmolLM2-135M-Instruct (smollm2_llamacpp_dir):
`messages.create`, `messages.stream` (its text and its final message), count_tokens, and a tool round trip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import pytest
from fastapi import FastAPI

from distilgpt2_api.model_store import smollm2

from engine_apps import llamacpp_app
from server_process import serving_in_thread

pytestmark = pytest.mark.real_weights

# Asked for a short answer, greedy (see test_smollm2_app.py: the Q4_1 weights drift on the bare question).
QUESTION: list[Any] = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}  # this SDK has no sampling arguments: sent as extra
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Get the current weather in a city", "input_schema": WEATHER}
]
WEATHER_QUESTION: list[Any] = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def app(smollm2_llamacpp_dir: Path) -> FastAPI:
    return llamacpp_app(smollm2_llamacpp_dir)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[anthropic.Anthropic]:
    with serving_in_thread(app) as url:
        yield anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=120)


def test_create_knows_the_capital_of_france(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=smollm2.MODEL_ID, max_tokens=48, messages=QUESTION, **GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.model == smollm2.MODEL_ID
    (block,) = message.content
    assert block.type == "text" and "Paris" in block.text and "<|im" not in block.text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None  # <|im_end|> ended the turn
    counted = client.messages.count_tokens(model=smollm2.MODEL_ID, messages=QUESTION)
    usage = message.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == counted.input_tokens
    assert 0 < usage.output_tokens < 48


def test_stream_gives_the_same_text_and_final_message(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model=smollm2.MODEL_ID, max_tokens=48, messages=QUESTION, **GREEDY)
    with client.messages.stream(model=smollm2.MODEL_ID, max_tokens=48, messages=QUESTION, **GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == whole.content[0].text  # type: ignore[union-attr]
    assert final.content[0].text == whole.content[0].text and final.id.startswith("msg_")  # type: ignore[union-attr]
    assert (final.stop_reason, final.usage.output_tokens) == (whole.stop_reason, whole.usage.output_tokens)


def test_a_stop_sequence_is_reported(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=smollm2.MODEL_ID, max_tokens=48, messages=QUESTION, stop_sequences=["aris"], **GREEDY
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "aris")
    assert message.content[0].text.endswith("P")  # type: ignore[union-attr]


def test_a_tool_round_trip(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model=smollm2.MODEL_ID,
        max_tokens=60,
        messages=WEATHER_QUESTION,
        tools=TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        **GREEDY,
    )
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER)
    assert use.input["city"] == "Paris"  # type: ignore[index]
    result = {"type": "tool_result", "tool_use_id": use.id, "content": json.dumps({"temperature_celsius": 18})}
    conversation = [
        *WEATHER_QUESTION,
        {"role": "assistant", "content": first.content},  # the SDK's own blocks, sent back as they came
        {"role": "user", "content": [result]},
    ]
    answer = client.messages.create(
        model=smollm2.MODEL_ID,
        max_tokens=60,
        messages=conversation,
        tools=TOOLS,
        tool_choice={"type": "none"},
        **GREEDY,
    )
    assert [block.type for block in answer.content] == ["text"] and answer.stop_reason in ("end_turn", "max_tokens")
    assert "18" in answer.content[0].text, answer.content  # type: ignore[union-attr]


def test_a_streamed_tool_use_is_parsed_by_the_sdk(client: anthropic.Anthropic) -> None:
    fields: dict[str, Any] = {"tools": TOOLS, "tool_choice": {"type": "tool", "name": "get_weather"}, **GREEDY}
    whole = client.messages.create(model=smollm2.MODEL_ID, max_tokens=60, messages=WEATHER_QUESTION, **fields)
    with client.messages.stream(model=smollm2.MODEL_ID, max_tokens=60, messages=WEATHER_QUESTION, **fields) as stream:
        final = stream.get_final_message()
    (streamed,), (expected,) = final.content, whole.content
    assert streamed.type == expected.type == "tool_use" and final.stop_reason == "tool_use"
    assert (streamed.name, streamed.input) == (expected.name, expected.input)  # type: ignore[union-attr]
