"""Structured output through every route: OpenAI's `response_format` and text-generation-inference's `grammar`,
on the default engine, llama.cpp (the tiny models the suite builds, random weights: only the constraint makes their
answers JSON). Every answer that ends with finish_reason `stop` must parse and validate. An engine without grammars
(CTranslate2) refuses them, naming the one that follows them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from engine_apps import engine_app, openai_sdk
from server_process import serving_in_thread

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}  # not strict: tags optional
CHAT = [{"role": "user", "content": "Who is the admin? Answer in JSON."}]


@pytest.fixture(scope="module")
def client_of_ctranslate2(chat_model_dir: Path) -> Iterator[TestClient]:
    """The chat model on CTranslate2, a whole-job engine without grammars: what it refuses is the point."""
    with TestClient(engine_app(chat_model_dir, "ctranslate2"), raise_server_exceptions=False) as test_client:
        yield test_client


def valid_when_stopped(texts_and_reasons: list[tuple[str, str]], schema: dict[str, Any]) -> int:
    """Check every answer that stopped; how many did."""
    stopped = [text for text, reason in texts_and_reasons if reason == "stop"]
    for text in stopped:
        jsonschema.validate(json.loads(text), schema)
    return len(stopped)


def sse_data(response: httpx.Response) -> list[dict[str, Any]]:
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    return [json.loads(event) for event in events if event != "[DONE]"]


def test_completions_answer_json_valid_against_the_schema_greedy_sampled_and_streamed(client: TestClient) -> None:
    body = {"prompt": "A person:", "max_tokens": 80, "response_format": JSON_SCHEMA}
    greedy = client.post("/v1/completions", json={**body, "temperature": 0})
    assert greedy.status_code == 200, greedy.text
    (choice,) = greedy.json()["choices"]
    assert valid_when_stopped([(choice["text"], choice["finish_reason"])], PERSON) == 1
    sampled = client.post("/v1/completions", json={**body, "temperature": 1, "n": 4, "seed": 3}).json()["choices"]
    assert valid_when_stopped([(c["text"], c["finish_reason"]) for c in sampled], PERSON) >= 1
    assert len({c["text"] for c in sampled}) > 1  # sampled within the schema, not one answer repeated
    streamed = client.post("/v1/completions", json={**body, "temperature": 0, "stream": True})
    chunks = sse_data(streamed)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_a_length_cut_is_the_only_way_to_an_unfinished_answer(client: TestClient) -> None:
    body = {"prompt": "A person:", "max_tokens": 3, "temperature": 0, "response_format": JSON_SCHEMA}
    (choice,) = client.post("/v1/completions", json=body).json()["choices"]
    assert choice["finish_reason"] == "length" and choice["text"].startswith("{")


def test_chat_json_schema_and_json_object(chat_client: TestClient) -> None:
    for response_format, schema in ((JSON_SCHEMA, PERSON), ({"type": "json_object"}, {"type": "object"})):
        body = {"messages": CHAT, "max_tokens": 150, "n": 3, "seed": 5, "response_format": response_format}
        response = chat_client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        answers = [(c["message"]["content"], c["finish_reason"]) for c in response.json()["choices"]]
        assert valid_when_stopped(answers, schema) >= 1, answers
    plain = {"messages": CHAT, "max_tokens": 8, "temperature": 0}
    text = chat_client.post("/v1/chat/completions", json={**plain, "response_format": {"type": "text"}})
    assert text.status_code == 200, text.text
    unconstrained = chat_client.post("/v1/chat/completions", json=plain).json()
    assert text.json()["choices"] == unconstrained["choices"]  # plain text, as without response_format


def test_stop_strings_do_not_cut_a_constrained_answer(client: TestClient) -> None:
    body = {"prompt": "A person:", "max_tokens": 80, "temperature": 0, "response_format": JSON_SCHEMA}
    (choice,) = client.post("/v1/completions", json={**body, "stop": ['"', ","]}).json()["choices"]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["text"]), PERSON)


def test_generate_with_a_json_or_regex_grammar(client: TestClient) -> None:
    grammar = {"type": "json", "value": PERSON}
    body = {"prompt": "A person:", "max_new_tokens": 80, "return_full_text": False, "details": True}
    response = client.post("/generate", json={**body, "grammar": grammar, "num_return_sequences": 2, "do_sample": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["generated_sequences"]) == 2
    reasons = ["stop" if reason == "eos" else reason for reason in answer["finish_reasons"]]
    assert set(reasons) <= {"stop", "length"}
    valid_when_stopped(list(zip(answer["generated_sequences"], reasons, strict=True)), PERSON)
    pattern = r"[A-Z][a-z]{2,5} \d{2}"
    regex = client.post("/generate", json={**body, "grammar": {"type": "regex", "value": pattern}})
    (word,) = regex.json()["generated_sequences"]
    assert re.fullmatch(pattern, word), word
    assert regex.json()["finish_reasons"] == ["stop"]  # the grammar, complete, ended it
    stream = client.post("/generate_stream", json={**body, "grammar": {"type": "regex", "value": pattern}})
    events = sse_data(stream)
    assert "".join(e["token"]["text"] for e in events if not e["token"]["special"]) == word


@pytest.mark.parametrize(
    ("route", "body", "param", "words"),
    [
        (
            "/v1/completions",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}},
            "response_format",
            ["nowhere"],
        ),
        (
            "/v1/completions",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
            "response_format",
            ["strin"],
        ),
        ("/generate", {"grammar": {"type": "regex", "value": "(a"}}, "grammar", ["regular expression"]),
        ("/generate", {"grammar": {"type": "json", "value": {"type": "string", "pattern": "(a"}}}, "grammar", ["(a"]),
    ],
    ids=["dangling-ref", "bad-type", "bad-regex", "bad-pattern"],
)
def test_what_cannot_be_followed_is_a_400_naming_it(
    client: TestClient, route: str, body: dict[str, Any], param: str, words: list[str]
) -> None:
    response = client.post(route, json={"prompt": "A person:", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_grammar" and error["param"] == param
    assert all(word in error["message"] for word in words), error["message"]


@pytest.mark.parametrize(
    "response_format",
    [{"type": "json_schema"}, {"type": "xml"}, {"type": "json_schema", "json_schema": {"name": "bad name!"}}],
)
def test_a_malformed_response_format_is_a_422(client: TestClient, response_format: dict[str, Any]) -> None:
    response = client.post("/v1/completions", json={"prompt": "x", "response_format": response_format})
    assert response.status_code == 422 and response.json()["error"]["param"].startswith("response_format")


def test_an_engine_that_cannot_constrain_says_which_can(client_of_ctranslate2: TestClient) -> None:
    hello = [{"role": "user", "content": "Hi"}]
    for route, body, param in (
        ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),
        ("/generate", {"prompt": "x", "grammar": {"type": "regex", "value": "a+"}}, "grammar"),
        ("/v1/chat/completions", {"messages": hello, "response_format": {"type": "json_object"}}, "response_format"),
        (
            "/v1/chat/completions",
            {"messages": hello, "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
        ),
    ):
        response = client_of_ctranslate2.post(route, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "unsupported_by_engine" and "ENGINE=llamacpp" in error["message"]
        assert error["param"] == param


class Person(BaseModel):
    name: str = Field(max_length=6)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user"]


def test_the_sdk_parse_gets_its_model_back(chat_app: FastAPI) -> None:
    with serving_in_thread(chat_app) as url:
        sdk = openai_sdk(url)
        completion = sdk.chat.completions.parse(
            model="tiny-chat-llama", messages=CHAT, response_format=Person, max_tokens=150, temperature=0
        )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Person) and message.parsed == Person.model_validate_json(message.content or "")


TWICE = {"type": "array", "items": {"const": 7}, "minItems": 2, "maxItems": 2, "uniqueItems": True}


def test_a_complete_answer_its_schema_refuses_is_flagged_on_every_route(chat_client: TestClient) -> None:
    """The mask cannot hold uniqueItems; the one answer this schema's grammar allows repeats its item."""
    response_format = {"type": "json_schema", "json_schema": {"name": "twice", "schema": TWICE}}
    body = {"messages": CHAT, "response_format": response_format, "max_tokens": 20}
    whole = chat_client.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    (choice,) = whole.json()["choices"]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("[7, 7]", "schema_violation")
    streamed = sse_data(chat_client.post("/v1/chat/completions", json=body | {"stream": True}))
    assert [c["choices"][0]["finish_reason"] for c in streamed if c["choices"]][-1] == "schema_violation"
    grammar = {"type": "json", "value": TWICE}
    native = chat_client.post("/generate", json={"prompt": "x", "grammar": grammar, "max_new_tokens": 20})
    assert native.json()["finish_reasons"] == ["schema_violation"], native.text
    tgi = chat_client.post("/", json={"inputs": "x", "parameters": {"grammar": grammar, "details": True}})
    assert tgi.json()[0]["details"]["finish_reason"] == "schema_violation", tgi.text
    text_format = {"format": {"type": "json_schema", "name": "twice", "schema": TWICE}}
    responses_body = {"input": "x", "text": text_format, "max_output_tokens": 20}
    response = chat_client.post("/v1/responses", json=responses_body).json()
    assert (response["status"], response["incomplete_details"]["reason"]) == ("incomplete", "schema_violation")
    events = chat_client.post("/v1/responses", json=responses_body | {"stream": True}).text
    assert "event: response.incomplete" in events and "event: response.completed" not in events


def test_strict_mode_refuses_what_openai_refuses(client: TestClient) -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}  # a is optional, other keys allowed
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": loose, "strict": True}}
    response = client.post("/v1/completions", json={"prompt": "x", "response_format": response_format})
    assert response.status_code == 422
    assert "additionalProperties" in response.json()["error"]["message"]
    response_format["json_schema"]["strict"] = False
    assert client.post("/v1/completions", json={"prompt": "x", "response_format": response_format}).status_code == 200
