"""The app on the llama.cpp engine with the real SmolLM2-135M-Instruct (smollm2_llamacpp_dir): it answers a
question with a well-known answer, through the routes and through the `openai` SDK against a served app; the SDK's
`parse()`, a tool round trip and streamed tool calls work with it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from huggingface_hub import InferenceClient
from pydantic import BaseModel, Field

from distilgpt2_api.model_store import smollm2

from engine_apps import llamacpp_app
from tool_schemas import CITY_WEATHER

pytestmark = pytest.mark.real_weights

# Asked for a short answer: the shipped Q4_1 weights, greedy, drift into French word lists on the bare question (as
# llama.cpp's own chat completion does with them; the float32 dequantization of the same weights answers it).
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def app(smollm2_llamacpp_dir: Path) -> FastAPI:
    return llamacpp_app(smollm2_llamacpp_dir)


def test_it_serves_the_real_smollm2(client: TestClient) -> None:
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [smollm2.MODEL_ID]


def test_greedy_chat_knows_the_capital_of_france(client: TestClient) -> None:
    body = {"messages": QUESTION, "max_tokens": 48, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "stop"  # <|im_end|> ended the turn
    assert "Paris" in choice["message"]["content"] and "<|im" not in choice["message"]["content"]


def test_the_sdk_gets_the_same_answer_whole_and_streamed(sdk: openai.OpenAI) -> None:
    whole = sdk.chat.completions.create(model=smollm2.MODEL_ID, messages=QUESTION, max_tokens=48, temperature=0)
    (choice,) = whole.choices
    assert choice.finish_reason == "stop" and choice.message.content and "Paris" in choice.message.content
    streamed = sdk.chat.completions.create(
        model=smollm2.MODEL_ID, messages=QUESTION, max_tokens=48, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == choice.message.content


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": CITY_WEATHER,
        },
    }
]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]
ONE_GREEDY_CALL: dict[str, Any] = {"tool_choice": "required", "parallel_tool_calls": False, "temperature": 0}


class Capital(BaseModel):
    country: str
    capital: str
    population_millions: float = Field(ge=0, le=100)  # bounded, as a schema should be: digits cannot run on


def test_the_sdk_parse_gets_its_pydantic_model(sdk: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Describe the capital of France in JSON."}]
    completion = sdk.chat.completions.parse(
        model=smollm2.MODEL_ID, messages=ask, response_format=Capital, temperature=0, max_tokens=100
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Capital) and choice.message.parsed.capital == "Paris"


class UnboundedCapital(BaseModel):
    country: str
    capital: str
    population_millions: float  # no bounds: the grammar bounds a number's digits itself


def test_the_sdk_parse_gets_its_model_with_an_unbounded_number(sdk: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Describe the capital of France in JSON."}]
    completion = sdk.chat.completions.parse(
        model=smollm2.MODEL_ID, messages=ask, response_format=UnboundedCapital, temperature=0, max_tokens=100
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, UnboundedCapital)
    assert abs(choice.message.parsed.population_millions) < 10**15


def test_an_object_open_to_other_keys_gets_its_own_and_finishes(client: TestClient) -> None:
    schema = UnboundedCapital.model_json_schema()  # no additionalProperties: other keys are allowed, not written
    ask = [{"role": "user", "content": "Describe the capital of France in JSON."}]
    response_format = {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}}
    body = {"messages": ask, "response_format": response_format, "temperature": 0, "max_tokens": 100}
    response = client.post("/v1/chat/completions", json=body)
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "stop", choice
    answer = json.loads(choice["message"]["content"])
    jsonschema.validate(answer, schema)
    assert list(answer) == ["country", "capital", "population_millions"]


def test_a_tool_round_trip(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(
        model=smollm2.MODEL_ID, messages=WEATHER_QUESTION, max_tokens=60, tools=TOOLS, **ONE_GREEDY_CALL
    )
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    jsonschema.validate(arguments, CITY_WEATHER)
    assert arguments["city"] == "Paris"
    conversation = [
        *WEATHER_QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_celsius": 18, "sky": "sunny"})},
    ]
    answer = sdk.chat.completions.create(
        model=smollm2.MODEL_ID,
        messages=conversation,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        temperature=0,
        max_tokens=60,
    )
    text = answer.choices[0].message.content or ""
    assert answer.choices[0].message.tool_calls is None and ("18" in text or "sunny" in text), text


def test_streamed_tool_calls_concatenate_to_the_whole_answer(sdk: openai.OpenAI) -> None:
    fields: dict[str, Any] = {"tools": TOOLS, "tool_choice": "required", "temperature": 0, "max_tokens": 120}
    whole = sdk.chat.completions.create(model=smollm2.MODEL_ID, messages=WEATHER_QUESTION, **fields)
    expected = [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls or []]  # type: ignore[union-attr]
    assert expected and whole.choices[0].finish_reason == "tool_calls"
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in sdk.chat.completions.create(model=smollm2.MODEL_ID, messages=WEATHER_QUESTION, stream=True, **fields):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            assert not choice.delta.content
            for piece in choice.delta.tool_calls or []:
                assert piece.function is not None
                if piece.index not in calls:
                    assert piece.id and piece.id.startswith("call_") and piece.function.name
                    calls[piece.index] = [piece.function.name, ""]
                calls[piece.index][1] += piece.function.arguments or ""
    assert [tuple(calls[i]) for i in sorted(calls)] == expected and finish == "tool_calls"


def test_auto_lets_the_model_choose_and_any_call_validates(client: TestClient) -> None:
    body = {"messages": WEATHER_QUESTION, "tools": TOOLS, "temperature": 1, "n": 4, "seed": 3, "max_tokens": 40}
    for choice in client.post("/v1/chat/completions", json=body).json()["choices"]:
        for call in choice["message"]["tool_calls"] or []:
            jsonschema.validate(json.loads(call["function"]["arguments"]), CITY_WEATHER)
        assert choice["message"]["tool_calls"] or not choice["message"]["content"].startswith("<tool_call>")


STORIES = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle on a stormy winter night.",
    "Write a long story about two old friends who meet again at a train station after forty years apart.",
    "Write a long story about a young baker who enters a national competition with her grandmother's recipe.",
]


def test_seeded_answers_do_not_depend_on_the_cache_or_other_requests(client: TestClient) -> None:
    """Each seeded answer read cold, again with its prompt from the prefix cache, and beside the others at once."""

    def ask(story: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": 8 * "You are a careful, vivid storyteller. "}]
        body = {"messages": [*messages, {"role": "user", "content": story}], "max_tokens": 40, "seed": 7}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    cold = [ask(story) for story in STORIES]
    cached = [ask(story) for story in STORIES]
    assert all(answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 64 for answer in cached)
    with ThreadPoolExecutor(len(STORIES)) as pool:
        beside = list(pool.map(ask, STORIES))
    texts = [[answer["choices"][0]["message"]["content"] for answer in run] for run in (cold, cached, beside)]
    assert texts[0] == texts[1] == texts[2]
    assert len(set(texts[0])) == len(STORIES)  # sampled, and each its own


def test_huggingface_hubs_client_against_the_real_model(base_url: str) -> None:
    """text-generation-inference's own client: text generation, plain and streamed, and chat, unchanged."""
    hf = InferenceClient(base_url=base_url, timeout=120)
    plain = hf.text_generation("The capital of France is", max_new_tokens=12, details=True)
    streamed = list(hf.text_generation("The capital of France is", max_new_tokens=12, stream=True, details=True))
    texts = list(hf.text_generation("The capital of France is", max_new_tokens=12, stream=True))  # text only
    assert "".join(texts) == plain.generated_text
    assert "".join(event.token.text for event in streamed) == plain.generated_text
    assert plain.details is not None and [t.id for t in plain.details.tokens] == [e.token.id for e in streamed]
    assert "Paris" in plain.generated_text
    answer = hf.chat_completion(QUESTION, max_tokens=48, temperature=0)
    assert answer.model == smollm2.MODEL_ID and "Paris" in (answer.choices[0].message.content or "")
