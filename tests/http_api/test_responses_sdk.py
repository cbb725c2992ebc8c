"""The `openai` SDK's `client.responses` against uvicorn serving the real SmolLM2-135M-Instruct on the llama.cpp
engine (smollm2_llamacpp_dir): an answer, the same answer streamed, a function call round trip, `text_format`
structured output, and a conversation continued by `previous_response_id`."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import openai
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from distilgpt2_api.model_store import smollm2

from engine_apps import llamacpp_app
from tool_schemas import CITY_WEATHER

pytestmark = pytest.mark.real_weights

MODEL = smollm2.MODEL_ID
QUESTION = "What is the capital of France? Answer in one word."  # short: the Q4_1 weights drift on the bare question
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": CITY_WEATHER,
        "strict": True,
    }
]


@pytest.fixture(scope="module")
def app(smollm2_llamacpp_dir: Path) -> FastAPI:
    return llamacpp_app(smollm2_llamacpp_dir)


def test_create_answers_with_output_text(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model=MODEL, input=QUESTION, max_output_tokens=48, temperature=0)
    assert response.status == "completed" and response.id.startswith("resp_")
    assert "Paris" in response.output_text and "<|im" not in response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0


def test_the_streamed_deltas_make_the_whole_answer(sdk: openai.OpenAI) -> None:
    whole = sdk.responses.create(model=MODEL, input=QUESTION, max_output_tokens=48, temperature=0)
    deltas, kinds = [], []
    with sdk.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=48, temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "".join(deltas) == final.output_text == whole.output_text
    raw = [
        event.type
        for event in sdk.responses.create(model=MODEL, input=QUESTION, max_output_tokens=48, temperature=0, stream=True)
    ]
    assert raw[0] == "response.created" and raw[-1] == "response.completed"


def test_a_function_call_round_trip(sdk: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    first = sdk.responses.create(
        model=MODEL,
        input=ask,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=60,
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, CITY_WEATHER)
    assert arguments["city"] == "Paris"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_celsius": 18}'}
    answer = sdk.responses.create(
        model=MODEL,
        input=[*ask, *first.output, result],  # type: ignore[list-item]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        temperature=0,
        max_output_tokens=60,
        store=False,
    )
    assert [item.type for item in answer.output] == ["message"] and "18" in answer.output_text, answer.output_text


class Capital(BaseModel):
    country: str
    capital: str
    population_millions: float = Field(ge=0, le=100)  # bounded: digits cannot run on


def test_text_format_json_schema_is_followed(sdk: openai.OpenAI) -> None:
    ask = "Describe the capital of France in JSON."
    parsed = sdk.responses.parse(model=MODEL, input=ask, text_format=Capital, temperature=0, max_output_tokens=100)
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Capital) and parsed.output_parsed.capital == "Paris"
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 24}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    text = {"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}}
    raw = sdk.responses.create(model=MODEL, input=ask, text=text, temperature=0, max_output_tokens=100)  # type: ignore[arg-type]
    assert raw.status == "completed"
    jsonschema.validate(json.loads(raw.output_text), schema)
    assert "Paris" in json.loads(raw.output_text)["capital"]


def test_a_conversation_continues_and_is_deleted(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=24)
    follow_up = "And of Italy?"
    second = sdk.responses.create(
        model=MODEL, input=follow_up, previous_response_id=first.id, temperature=0, max_output_tokens=24
    )
    # What the stored conversation stands for: the whole of it resent, stored nowhere.
    whole = [{"role": "user", "content": QUESTION}, *first.output, {"role": "user", "content": follow_up}]
    resent = sdk.responses.create(model=MODEL, input=whole, temperature=0, max_output_tokens=24, store=False)  # type: ignore[arg-type]
    assert second.output_text == resent.output_text and "Rome" in second.output_text, second.output_text
    assert second.usage is not None and resent.usage is not None
    assert second.usage.input_tokens == resent.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0  # the conversation so far, from the prefix cache
    assert sdk.responses.retrieve(second.id).output_text == second.output_text
    sdk.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError, match="whole conversation"):
        sdk.responses.retrieve(second.id)
