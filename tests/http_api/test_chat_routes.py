"""`POST /v1/chat/completions`: OpenAI's shapes, the model's own chat template, clear 4xx for what is not served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from server_process import serving_in_thread

HELLO = [{"role": "user", "content": "Once upon a time"}]


@pytest.fixture
def chat(chat_client: TestClient) -> TestClient:
    """The chat model on the default engine (conftest's chat_app)."""
    return chat_client


def _chat(client: TestClient, **body: Any) -> Any:
    response = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 8, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_answer_has_openai_shape_and_usage(chat: TestClient, chat_model_dir: Path) -> None:
    body = _chat(chat, temperature=0)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-chat-llama"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    # The prompt is the template's rendering, tokenized without adding special tokens again.
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    prompt = tokenizer.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_is_deterministic_and_text_parts_equal_a_string(chat: TestClient) -> None:
    first = _chat(chat, temperature=0)["choices"]
    assert first == _chat(chat, temperature=0)["choices"]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Once upon "}, {"type": "text", "text": "a time"}]}]
    assert _chat(chat, temperature=0, messages=parts)["choices"] == first


def test_max_completion_tokens_and_n(chat: TestClient) -> None:
    body = _chat(chat, max_tokens=None, max_completion_tokens=3, n=2, seed=3, logprobs=True)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    tokens = [len(c["logprobs"]["content"]) for c in body["choices"]]  # one entry per generated token
    for choice, count in zip(body["choices"], tokens, strict=True):
        reason = choice["finish_reason"]
        assert (count, reason) == (3, "length") or (count < 3 and reason == "stop")
    assert body["usage"]["completion_tokens"] == sum(tokens)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"messages": []}, 422, "validation_error", "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "validation_error", "messages.0.role"),
        ({"messages": [{"role": "user"}]}, 422, "validation_error", "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
            422,
            "validation_error",
            None,
        ),
        ({"messages": HELLO, "tools": [{"type": "function"}]}, 422, "validation_error", "tools.0.function"),
        ({"messages": HELLO, "tool_choice": "required"}, 422, "validation_error", None),
        ({"messages": [{"role": "tool", "content": "1"}]}, 422, "validation_error", None),
        ({"messages": [{"role": "user", "content": None}]}, 422, "validation_error", "messages.0.content"),
        (
            {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 1}}},
            422,
            "validation_error",
            None,
        ),
        ({"messages": HELLO, "max_tokens": 5, "max_completion_tokens": 5}, 422, "validation_error", None),
        ({"messages": HELLO, "max_tokens": 513}, 422, "validation_error", "max_tokens"),
        ({"messages": HELLO, "top_logprobs": 2}, 422, "validation_error", None),
        ({"messages": HELLO, "logprobs": True, "top_logprobs": 6}, 422, "validation_error", "top_logprobs"),
        ({"messages": HELLO, "stream_options": {"include_usage": True}}, 422, "validation_error", None),
        ({"messages": [{"role": "user", "content": "word " * 300}]}, 400, "context_length_exceeded", "max_new_tokens"),
    ],
    ids=[
        "empty",
        "unknown-role",
        "no-content",
        "image-part",
        "tool-without-function",
        "tool-choice-without-tools",
        "tool-turn-without-call-id",
        "null-user-content",
        "schema-not-an-object",
        "two-limits",
        "over-limit",
        "top-logprobs-alone",
        "too-many-top-logprobs",
        "stream-options-without-stream",
        "too-long",
    ],
)
def test_what_is_not_served_gets_a_clear_error(
    chat: TestClient, body: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    response = chat.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_a_model_without_a_chat_template_says_so(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "chat_template_missing" and "no chat template" in error["message"]


def test_openai_sdk_chat(chat_app: FastAPI, chat: TestClient) -> None:
    with serving_in_thread(chat_app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        completion = client.chat.completions.create(
            model="tiny-chat-llama",
            messages=HELLO,
            max_completion_tokens=6,
            temperature=0,  # type: ignore[arg-type]
        )
    greedy = _chat(chat, max_tokens=None, max_completion_tokens=6, temperature=0)  # the same answer, as JSON
    (expected,) = greedy["choices"]
    assert completion.object == "chat.completion"
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == expected["message"]["content"]
    assert choice.finish_reason == expected["finish_reason"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == greedy["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == greedy["usage"]["completion_tokens"]
    if choice.finish_reason == "length":
        assert completion.usage.completion_tokens == 6


def test_the_developer_role_is_the_system_role(chat: TestClient) -> None:
    """OpenAI's `developer` (the successor of `system`) renders as the template's system turn."""

    def tokens(role: str) -> list[int]:
        messages = [{"role": role, "content": "Answer briefly."}, *HELLO]
        response = chat.post("/tokenize", json={"messages": messages})
        assert response.status_code == 200, response.text
        return response.json()["tokens"]

    assert tokens("developer") == tokens("system") != tokens("user")
    answers = [
        _chat(chat, temperature=0, messages=[{"role": role, "content": "Answer briefly."}, *HELLO])
        for role in ("developer", "system")
    ]
    assert answers[0]["choices"] == answers[1]["choices"]
    assert answers[0]["usage"]["prompt_tokens"] == len(tokens("developer"))
