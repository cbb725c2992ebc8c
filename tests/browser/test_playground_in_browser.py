"""/playground in headless Chromium, every other origin blocked: typed by keyboard, streamed, stopped, in error,
in chat, with JSON output, with an API key, on a phone-sized screen, and behind the Lambda handler's /Prod stage.

Servers: `live_server` (the service as `make serve` runs it), and in this process under uvicorn: the tiny
model slowed to 50 ms a token (to see text arrive, and to stop it), the tiny chat model, the tiny chat model on
the llama.cpp engine (which constrains answers to a schema), and the tiny model with an API key. Every test
saves a screenshot in tests/browser/screenshots/.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI

from distilgpt2_api.engines.base import Chunk
from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.http_api.openai.protocol import CompletionChunk, CompletionChunkChoice
from distilgpt2_api.http_api.protocol import ErrorBody, ErrorResponse
from distilgpt2_api.settings import Settings

from browser_harness import STAGE, NetworkLog, PageFactory
from engine_apps import engine_app, llamacpp_app
from server_process import serving_in_thread
from slowdown import STEP_SECONDS, slow_down

Screenshot = Callable[[Any, str], Path]
TIMEOUT_MS = 30_000
PROMPT = "Once upon a time"
API_KEY = "playground-key-123"
PHONE = {"width": 390, "height": 844}
# The API's answer to a failed fetch, as Chromium reports it on the console: expected in the error tests.
FAILED_RESOURCE = re.compile(r"^Failed to load resource: the server responded with a status of \d+")
# Chromium now and then reports a streamed response that a reader consumed to its very end as aborted
# (net::ERR_ABORTED, a race between the body's end and the load's; `response.text()` never sees it). The
# page had every event, `[DONE]` included, and the server logged a complete answer: not a failure.
STREAM_ENDED = re.compile(r"/v1/(chat/)?completions: net::ERR_ABORTED$")


# --- servers and pages --------------------------------------------------------------------------


class Steps:
    """When the slowed engine generated each token: to see that a stopped generation stopped on the server."""

    def __init__(self) -> None:
        self.times: list[float] = []


@pytest.fixture(scope="module")
def steps() -> Steps:
    return Steps()


@pytest.fixture(scope="module")
def slow_server(model_dir: Path, steps: Steps) -> Iterator[str]:
    """The tiny model on the default engine slowed to 50 ms a step, under uvicorn in this process: its base URL."""
    app = llamacpp_app(model_dir)
    engine = app.state.scheduler.engine
    with pytest.MonkeyPatch.context() as patch:
        slow_down(engine, patch)
        slow_forward = engine.forward

        def counted(chunks: Sequence[Chunk]) -> Any:
            steps.times.append(time.monotonic())
            return slow_forward(chunks)

        patch.setattr(engine, "forward", counted)
        with serving_in_thread(app) as url:
            yield url


@pytest.fixture(scope="module")
def chat_server(chat_model_dir: Path) -> Iterator[str]:
    """The tiny chat Llama (a ChatML template) on the default engine, which constrains answers to a schema, under
    uvicorn in this process."""
    with serving_in_thread(llamacpp_app(chat_model_dir, max_batch_size=2)) as url:
        yield url


@pytest.fixture(scope="module")
def ctranslate2_server(model_dir: Path) -> Iterator[str]:
    """The tiny model on CTranslate2 (ENGINE=ctranslate2), an engine that cannot hold answers to a grammar."""
    with serving_in_thread(engine_app(model_dir, "ctranslate2")) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(app: FastAPI) -> Iterator[str]:
    """The session's model behind an API key, under uvicorn in this process."""
    locked = create_app(app.state.scheduler, Settings(model_dir=Path("unused"), api_key=API_KEY))
    with serving_in_thread(locked) as url:
        yield url


def assert_refusal_shown(page: Any, url: str, body: dict[str, Any], code: str) -> dict[str, Any]:
    """What `url` answers `body` (the request the page sent) is a 400 `code`, and the page shows it: its error."""
    refused = httpx.post(url, json=body, timeout=30)
    assert refused.status_code == 400
    error: dict[str, Any] = refused.json()["error"]
    assert error["code"] == code
    assert page.inner_text("#error .error-message") == error["message"]
    assert page.inner_text("#error .error-details").startswith(f"HTTP 400 · {code}")
    return error


def open_playground(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/playground")
    page.locator("html.ready").wait_for(timeout=TIMEOUT_MS)  # the script ran


def settings(page: Any, **values: object) -> None:
    """Fill settings fields by id (max_tokens -> #max-tokens)."""
    for name, value in values.items():
        page.fill(f"#{name.replace('_', '-')}", str(value))


def send_by_keyboard(page: Any, text: str) -> None:
    """Type `text` into the prompt box (a newline as Shift+Enter) and press Enter."""
    page.focus("#prompt")
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    for number, line in enumerate(text.split("\n")):
        if number:
            page.keyboard.press("Shift+Enter")
        page.keyboard.type(line)
    page.keyboard.press("Enter")


def wait_until_idle(page: Any, timeout_ms: int = TIMEOUT_MS) -> None:
    page.wait_for_function("() => !document.body.classList.contains('busy')", timeout=timeout_ms)


def generated(page: Any) -> list[str]:
    """The text of each completion choice on the page, without the echoed prompt."""
    texts: list[str] = page.eval_on_selector_all("#completion-output .generated", "els => els.map(e => e.textContent)")
    return texts


def stat(page: Any, name: str) -> str:
    text: str = page.inner_text(f"#stat-{name}")
    return text


def complete(base_url: str, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    """The API's own (non-streamed) answer to a completion request."""
    response = httpx.post(f"{base_url}/v1/completions", json=body, headers=headers, timeout=60)
    answer: dict[str, Any] = response.json()
    return answer


def assert_stayed_home(network: NetworkLog, *, prefix: str = "", failures: int = 0) -> None:
    """Nothing left the origin or its prefix; `failures` API errors expected (and their console lines)."""
    assert network.blocked == [], f"requests to other origins: {network.blocked}"
    assert all(network.same_origin(url) for url in network.requests), network.requests
    outside = [path for path in network.paths() if not path.startswith(prefix + "/")]
    assert outside == [], f"requests outside {prefix or '/'}: {outside}"
    failed = [line for line in network.failed if not STREAM_ENDED.search(line)]
    assert len(failed) == failures, network.failed
    unexpected = [line for line in network.console_errors if not FAILED_RESOURCE.match(line)]
    assert unexpected == [], unexpected


# --- completion: keyboard, streaming, the API's answer --------------------------------------------


def test_enter_sends_and_the_text_is_the_apis_answer(
    open_page: PageFactory, live_server: str, screenshot: Screenshot
) -> None:
    page, network = open_page(live_server)
    open_playground(page, live_server)
    assert page.is_checked("input[value=completion]")
    assert page.is_disabled("#mode-chat")  # the tiny GPT-2 has no chat template
    assert page.is_visible("#chat-note")
    assert page.is_hidden("#key-field")  # no key configured
    prompt = f"{PROMPT}\nthere was"
    settings(page, max_tokens=24, temperature=0)
    send_by_keyboard(page, prompt)
    assert page.input_value("#prompt") == prompt  # Shift+Enter made a new line, and did not send
    wait_until_idle(page)
    screenshot(page, "playground")

    answer = complete(live_server, prompt=prompt, max_tokens=24, temperature=0)
    assert generated(page) == [answer["choices"][0]["text"]]
    assert page.inner_text("#status") == "Done."
    assert page.is_hidden("#error")
    assert stat(page, "finish") == answer["choices"][0]["finish_reason"]
    usage = answer["usage"]
    assert stat(page, "tokens") == f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} generated"
    assert re.fullmatch(r"\d+ ms|\d+\.\d+ s", stat(page, "ttft")), stat(page, "ttft")
    assert re.fullmatch(r"\d+\.\d tokens/s( \(whole request\))?", stat(page, "speed")), stat(page, "speed")
    assert network.paths().count("/v1/completions") == 1
    assert_stayed_home(network)


def test_text_streams_in_as_it_is_generated(open_page: PageFactory, slow_server: str, screenshot: Screenshot) -> None:
    """On a model slowed to 50 ms a token, the text grows on the page while the request runs."""
    page, network = open_page(slow_server)
    open_playground(page, slow_server)
    page.evaluate(
        """() => {
            window.seenLengths = [];
            const box = document.getElementById('completion-output');
            new MutationObserver(() => {
                const text = box.querySelector('.generated');
                if (text && document.body.classList.contains('busy')) window.seenLengths.push(text.textContent.length);
            }).observe(box, {childList: true, subtree: true, characterData: true});
        }"""
    )
    settings(page, max_tokens=30, temperature=0, n=2)
    send_by_keyboard(page, PROMPT)
    page.wait_for_function(
        "() => document.querySelector('#completion-output .generated').textContent.length > 0", timeout=TIMEOUT_MS
    )
    assert page.evaluate("() => document.body.classList.contains('busy')")  # text is there, still generating
    screenshot(page, "playground-streaming")
    wait_until_idle(page)

    seen = page.evaluate("() => window.seenLengths")
    assert len(set(seen)) >= 5, f"the text arrived in too few pieces: {seen}"
    assert seen == sorted(seen)
    answer = complete(slow_server, prompt=PROMPT, max_tokens=30, temperature=0, n=2)
    assert generated(page) == [choice["text"] for choice in answer["choices"]]  # greedy: two equal choices
    assert page.locator("#completion-output .choice h3").all_inner_texts() == ["CHOICE 1", "CHOICE 2"]
    assert_stayed_home(network)


def test_stop_frees_the_model(open_page: PageFactory, slow_server: str, steps: Steps, screenshot: Screenshot) -> None:
    """240 tokens would take 12 s; Stop ends it at once, on the page and on the server, and the next request
    is served promptly. Esc stops too."""
    full_seconds = 240 * STEP_SECONDS
    page, network = open_page(slow_server)
    open_playground(page, slow_server)
    settings(page, max_tokens=240, temperature=0)
    for how in ("button", "escape"):
        started = time.monotonic()
        send_by_keyboard(page, PROMPT)
        page.wait_for_function(
            "() => document.querySelector('#completion-output .generated').textContent.length > 0",
            timeout=TIMEOUT_MS,
        )
        clicked = time.monotonic()
        if how == "button":
            page.click("#stop")
        else:
            page.keyboard.press("Escape")
        wait_until_idle(page, timeout_ms=5_000)
        stopped = time.monotonic()
        if how == "button":
            screenshot(page, "playground-stopped")
        assert page.inner_text("#status").startswith("Stopped after")
        assert stat(page, "finish") == "stopped"
        assert stopped - clicked < 2, f"Stop took {stopped - clicked:.1f} s"
        assert stopped - started < full_seconds / 2
        assert len(generated(page)[0].split()) < 120  # far from 240 tokens
        time.sleep(5 * STEP_SECONDS)
        last_step = steps.times[-1]
        time.sleep(10 * STEP_SECONDS)
        assert steps.times[-1] == last_step, "the server kept generating after Stop"
        assert last_step < stopped + 4 * STEP_SECONDS

        # The model is free: a short request is served at once, not after the stopped one's 12 s.
        settings(page, max_tokens=3)
        began = time.monotonic()
        send_by_keyboard(page, PROMPT)
        wait_until_idle(page)
        assert time.monotonic() - began < 3
        assert page.inner_text("#status") == "Done."
        settings(page, max_tokens=240)
    assert_stayed_home(network)


# --- errors: the API's words, never a blank page -----------------------------------------------------


def test_a_bad_parameter_shows_the_apis_message(
    open_page: PageFactory, live_server: str, screenshot: Screenshot
) -> None:
    page, network = open_page(live_server)
    open_playground(page, live_server)
    limit = int(page.get_attribute("#max-tokens", "max"))
    settings(page, max_tokens=limit + 1, temperature=0)
    send_by_keyboard(page, PROMPT)
    wait_until_idle(page)
    page.locator("#error").wait_for(state="visible")
    screenshot(page, "playground-error")

    refused = httpx.post(
        f"{live_server}/v1/completions",
        json={"prompt": PROMPT, "max_tokens": limit + 1, "temperature": 0, "stream": True},
        timeout=30,
    )
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert page.inner_text("#error .error-message") == error["message"]
    assert f"HTTP 422 · {error['code']}" in page.inner_text("#error .error-details")
    assert page.inner_text("#status") == "Failed."
    assert page.input_value("#prompt") == PROMPT  # nothing lost: fix the setting and send again

    settings(page, max_tokens=4)
    send_by_keyboard(page, PROMPT)
    wait_until_idle(page)
    assert page.is_hidden("#error")
    assert page.inner_text("#status") == "Done."
    assert_stayed_home(network, failures=1)


def _events(*events: str) -> str:
    return "".join(f"data: {event}\r\n\r\n" for event in events)


def _chunk(text: str) -> str:
    choice = CompletionChunkChoice(index=0, text=text)
    return CompletionChunk(id="cmpl-1", created=1, model="tiny-gpt2", choices=[choice]).model_dump_json()


STREAM_ERROR = ErrorResponse(
    error=ErrorBody(
        message="internal error while generating; quote the request_id",
        type="server_error",
        code="internal_error",
    ),
    request_id="req-after-start",
)

# What the page may meet instead of a good stream: (route's answer, the text that stays, the message shown).
BAD_ANSWERS = {
    "error event after the first token": (
        {
            "status": 200,
            "content_type": "text/event-stream",
            "body": _events(_chunk("Once more")) + _events(STREAM_ERROR.model_dump_json(), "[DONE]"),
        },
        "Once more",
        STREAM_ERROR.error.message,
    ),
    "stream cut off": (
        {"status": 200, "content_type": "text/event-stream", "body": _events(_chunk("Half a"))},
        "Half a",
        "The connection closed before the answer was complete.",
    ),
    "gateway error": (
        {"status": 504, "content_type": "application/json", "body": '{"message":"Endpoint request timed out"}'},
        "",
        "Endpoint request timed out",
    ),
    "not JSON at all": (
        {"status": 502, "content_type": "text/html", "body": "<html><body>Bad Gateway</body></html>"},
        "",
        "HTTP 502 Bad Gateway: <html><body>Bad Gateway</body></html>",
    ),
}


@pytest.mark.parametrize("case", BAD_ANSWERS)
def test_errors_are_shown_never_a_blank_page(
    open_page: PageFactory, live_server: str, screenshot: Screenshot, case: str
) -> None:
    answer, kept, message = BAD_ANSWERS[case]
    page, _ = open_page(live_server)
    page.route("**/v1/completions", lambda route: route.fulfill(**answer))
    open_playground(page, live_server)
    send_by_keyboard(page, PROMPT)
    wait_until_idle(page)
    page.locator("#error").wait_for(state="visible")
    screenshot(page, f"playground-error-{case.replace(' ', '-')}")
    assert page.inner_text("#error .error-message") == message
    if kept:
        assert generated(page) == [kept]
        assert page.inner_text("#status").endswith("the text so far stays.")
    else:
        assert page.inner_text("#completion-output") == "Nothing was generated."
    assert page.is_visible("#prompt") and page.is_enabled("#send")


def test_an_unreachable_service_is_said_so(open_page: PageFactory, live_server: str) -> None:
    page, _ = open_page(live_server)
    page.route("**/v1/completions", lambda route: route.abort("connectionrefused"))
    open_playground(page, live_server)
    send_by_keyboard(page, PROMPT)
    wait_until_idle(page)
    assert page.inner_text("#error .error-message").startswith("Could not reach the service:")


# --- the event-stream parser ------------------------------------------------------------------------

# Every line ending SSE allows, a comment (the server's ping), an event name, a multi-line data field,
# a field without its space, and an event never finished (dropped, as the standard says).
STREAM = (
    ': ping - 2026-01-01\r\ndata: {"a": 1}\r\n\r\nevent: note\ndata: line one\ndata: line two\n\n'
    "data:tight\r\rid: 7\ndata\n\ndata: [DONE]\r\n\r\ndata: unfinished"
)
EVENTS = [
    {"event": "message", "data": '{"a": 1}'},
    {"event": "note", "data": "line one\nline two"},
    {"event": "message", "data": "tight"},
    {"event": "message", "data": ""},
    {"event": "message", "data": "[DONE]"},
]


def test_the_parser_reads_events_however_the_network_splits_them(open_page: PageFactory, live_server: str) -> None:
    page, _ = open_page(live_server)
    open_playground(page, live_server)
    outcomes = page.evaluate(
        """(stream) => {
            const outcomes = new Set();
            for (let i = 0; i <= stream.length; i++) {
                for (let j = i; j <= stream.length; j++) {
                    const events = [];
                    const parser = new SseParser((event) => events.push(event));
                    for (const piece of [stream.slice(0, i), stream.slice(i, j), stream.slice(j)]) parser.push(piece);
                    outcomes.add(JSON.stringify(events));
                }
            }
            return [...outcomes].map((outcome) => JSON.parse(outcome));
        }""",
        STREAM,
    )
    assert outcomes == [EVENTS]


def test_characters_split_between_chunks_arrive_whole(open_page: PageFactory, live_server: str) -> None:
    page, _ = open_page(live_server)
    open_playground(page, live_server)
    received = page.evaluate(
        """async () => {
            const bytes = new TextEncoder().encode('data: {"t": "Olá ✓ 🙂"}\\r\\n\\r\\ndata: [DONE]\\r\\n\\r\\n');
            const body = new ReadableStream({
                start(controller) {
                    for (const byte of bytes) controller.enqueue(new Uint8Array([byte]));  // one byte a chunk
                    controller.close();
                },
            });
            const received = [];
            await readEventStream(new Response(body), (data) => received.push(data));
            return received;
        }"""
    )
    assert received == ['{"t": "Olá ✓ 🙂"}', "[DONE]"]


# --- chat --------------------------------------------------------------------------------------------


def test_chat_keeps_a_history(open_page: PageFactory, chat_server: str, screenshot: Screenshot) -> None:
    page, network = open_page(chat_server)
    sent: list[Any] = []
    page.on("request", lambda request: sent.append(request.post_data_json) if "/chat/" in request.url else None)
    open_playground(page, chat_server)
    assert page.is_checked("#mode-chat")  # the model has a chat template: chat first
    assert page.is_disabled("#n")  # one answer per turn
    settings(page, max_tokens=6, temperature=0)

    messages: list[dict[str, str]] = []
    for turn in ("Hi", "Tell me more\nplease"):
        send_by_keyboard(page, turn)
        assert page.input_value("#prompt") == ""  # the message moved into the conversation
        wait_until_idle(page)
        assert page.inner_text("#status") == "Done."
        messages.append({"role": "user", "content": turn})
        assert sent[-1]["messages"] == messages  # the whole history went with it
        assert sent[-1]["stream"] is True
        expected = httpx.post(
            f"{chat_server}/v1/chat/completions",
            json={"messages": messages, "max_tokens": 6, "temperature": 0},
            timeout=30,
        ).json()["choices"][0]["message"]["content"]
        answer = page.locator("#chat-log .message.assistant .generated").last.text_content()
        assert answer == expected
        messages.append({"role": "assistant", "content": answer})
    screenshot(page, "playground-chat")
    roles = page.eval_on_selector_all("#chat-log .message", "els => els.map(e => e.classList[1])")
    assert roles == ["user", "assistant", "user", "assistant"]
    assert page.locator("#chat-log .message.user .content").all_text_contents() == ["Hi", "Tell me more\nplease"]

    # A system message goes first; New chat forgets the history.
    page.fill("#system", "Be brief.")
    page.click("#new-chat")
    assert page.locator("#chat-log .message").count() == 0
    send_by_keyboard(page, "Hello again")
    wait_until_idle(page)
    assert sent[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello again"},
    ]

    # Completion mode on the same page, and back: the conversation is still there.
    page.check("input[value=completion]")
    assert page.is_hidden("#chat-log") and page.is_enabled("#n")
    page.check("#mode-chat")
    assert page.locator("#chat-log .message").count() == 2
    assert_stayed_home(network)


# --- JSON output ------------------------------------------------------------------------------------

JSON_QUESTION = "Who are you? Answer in JSON."


def json_answers(page: Any, where: str = "#completion-output") -> list[str]:
    """The text of each JSON answer in `where` (#completion-output or #chat-log)."""
    texts: list[str] = page.eval_on_selector_all(f"{where} .json .generated", "els => els.map(e => e.textContent)")
    return texts


def sent_bodies(page: Any) -> list[Any]:
    """The JSON body of every generation request the page sends, as it sends them."""
    bodies: list[Any] = []
    page.on("request", lambda request: bodies.append(request.post_data_json) if "/v1/" in request.url else None)
    return bodies


def test_json_output_is_shown_pretty_printed_and_valid(
    open_page: PageFactory, chat_server: str, screenshot: Screenshot
) -> None:
    """On the llama.cpp engine: the raw text streams in, then the answer that stopped is shown pretty-printed,
    parses and matches the schema; an empty schema asks for any JSON object; a cut answer is said to be
    incomplete; a schema the server cannot follow gets its message."""
    server = chat_server
    page, network = open_page(server)
    sent = sent_bodies(page)
    open_playground(page, server)
    assert page.is_hidden("#schema-field")
    page.check("#json-mode")
    assert page.is_visible("#schema-field")
    schema = json.loads(page.input_value("#json-schema"))  # the example the box starts with
    assert schema["type"] == "object" and schema["properties"]
    page.evaluate(
        """() => {
            window.streamed = [];  // the answer's text, each time it changed while the request ran
            new MutationObserver(() => {
                const text = document.querySelector('#chat-log .message.assistant:last-child .generated');
                if (text && document.body.classList.contains('busy')) window.streamed.push(text.textContent);
            }).observe(document.getElementById('chat-log'), {childList: true, subtree: true, characterData: true});
        }"""
    )
    settings(page, max_tokens=200, temperature=0)
    send_by_keyboard(page, JSON_QUESTION)
    wait_until_idle(page)
    screenshot(page, "playground-json")

    assert page.inner_text("#status") == "Done.", page.inner_text("#error")
    assert stat(page, "finish") == "stop"
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    assert sent[-1]["response_format"] == response_format
    raw = httpx.post(
        f"{server}/v1/chat/completions",
        json={**sent[-1], "stream": False, "stream_options": None},
        timeout=60,
    ).json()["choices"][0]["message"]["content"]
    (shown,) = json_answers(page, "#chat-log")
    answer = json.loads(shown)
    jsonschema.validate(answer, schema)
    assert answer == json.loads(raw)
    assert shown == json.dumps(answer, indent=2, ensure_ascii=False) != raw  # pretty-printed: indented by 2
    assert page.locator(".json-note").count() == 0
    streamed = page.evaluate("() => window.streamed")
    assert streamed and streamed[-1] == raw, streamed[-3:]  # as it arrived: the raw text
    assert all(raw.startswith(text) for text in streamed)

    # Completion mode, an empty schema: any JSON object.
    page.check("input[value=completion]")
    page.fill("#json-schema", "")
    send_by_keyboard(page, "A person:")
    wait_until_idle(page)
    assert sent[-1]["response_format"] == {"type": "json_object"}
    assert sent[-1]["prompt"] == "A person:"
    (shown,) = json_answers(page)
    if stat(page, "finish") == "stop":
        assert isinstance(json.loads(shown), dict)
        assert shown == json.dumps(json.loads(shown), indent=2, ensure_ascii=False)
    else:  # cut: the raw text and the note
        assert page.locator(".json-note").count() == 1

    # Cut at max new tokens: said to be incomplete, the raw text as it came.
    settings(page, max_tokens=3)
    send_by_keyboard(page, "A person:")
    wait_until_idle(page)
    assert stat(page, "finish") == "length"
    cut = complete(server, prompt="A person:", max_tokens=3, temperature=0, response_format={"type": "json_object"})
    assert json_answers(page) == [cut["choices"][0]["text"]]
    assert page.inner_text("#completion-output .json-note").startswith("Incomplete JSON: cut at max new tokens")
    screenshot(page, "playground-json-cut")

    # A schema the server cannot follow: its 400, its message.
    page.fill("#json-schema", '{"type": "strin"}')
    send_by_keyboard(page, "A person:")
    wait_until_idle(page)
    body = {"prompt": "A person:", **sent[-1], "stream": False, "stream_options": None}
    error = assert_refusal_shown(page, f"{server}/v1/completions", body, "invalid_grammar")
    assert "strin" in error["message"]
    assert page.inner_text("#status") == "Failed."
    assert_stayed_home(network, failures=1)


def test_json_output_errors_are_shown_in_the_page(
    open_page: PageFactory, ctranslate2_server: str, screenshot: Screenshot
) -> None:
    """A schema that is not a JSON object is reported before any request; an engine that cannot constrain
    (ctranslate2) answers 400, and the page shows its message."""
    live_server = ctranslate2_server
    page, network = open_page(live_server)
    open_playground(page, live_server)
    page.check("#json-mode")
    settings(page, max_tokens=8, temperature=0)
    for schema, message in (
        ('{"type": "object",}', "JSON Schema: not valid JSON"),
        ('["object"]', "JSON Schema: must be a JSON object"),
    ):
        page.fill("#json-schema", schema)
        send_by_keyboard(page, PROMPT)
        page.locator("#error").wait_for(state="visible")
        assert page.inner_text("#error .error-message").startswith(message)
        assert "/v1/completions" not in network.paths()  # nothing was sent
        assert page.input_value("#prompt") == PROMPT
    screenshot(page, "playground-json-invalid-schema")

    page.fill("#json-schema", '{"type": "object"}')
    send_by_keyboard(page, PROMPT)
    wait_until_idle(page)
    page.locator("#error").wait_for(state="visible")
    format_ = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    body = {"prompt": PROMPT, "max_tokens": 8, "response_format": format_}
    error = assert_refusal_shown(page, f"{live_server}/v1/completions", body, "unsupported_by_engine")
    assert "ENGINE=llamacpp" in error["message"]
    assert page.inner_text("#completion-output") == "Nothing was generated."
    screenshot(page, "playground-json-unsupported")
    assert network.paths().count("/v1/completions") == 1
    assert_stayed_home(network, failures=1)


# --- API keys ----------------------------------------------------------------------------------------


def test_a_key_field_when_the_api_needs_one(open_page: PageFactory, keyed_server: str, screenshot: Screenshot) -> None:
    page, network = open_page(keyed_server)
    authorizations: list[str | None] = []
    page.on(
        "request",
        lambda request: (
            authorizations.append(request.headers.get("authorization"))
            if request.url.endswith("/v1/completions")
            else None
        ),
    )
    open_playground(page, keyed_server)  # the page itself needs no key
    assert page.is_visible("#key-field")
    settings(page, max_tokens=8, temperature=0)
    send_by_keyboard(page, PROMPT)
    wait_until_idle(page)
    missing = httpx.post(f"{keyed_server}/v1/completions", json={"prompt": PROMPT}, timeout=30).json()
    assert page.inner_text("#error .error-message") == missing["error"]["message"]
    assert page.evaluate("() => document.activeElement.id") == "api-key"  # where the key goes
    screenshot(page, "playground-key-missing")

    page.fill("#api-key", API_KEY)
    send_by_keyboard(page, PROMPT)
    wait_until_idle(page)
    assert page.is_hidden("#error")
    key = {"authorization": f"Bearer {API_KEY}"}
    answer = complete(keyed_server, headers=key, prompt=PROMPT, max_tokens=8, temperature=0)
    assert generated(page) == [answer["choices"][0]["text"]]
    assert authorizations == [None, f"Bearer {API_KEY}"]
    screenshot(page, "playground-key")
    assert_stayed_home(network, failures=1)


# --- phone, labels, the Lambda stage -----------------------------------------------------------------


def test_on_a_phone_sized_screen(open_page: PageFactory, live_server: str, screenshot: Screenshot) -> None:
    page, network = open_page(live_server)
    page.set_viewport_size(PHONE)
    open_playground(page, live_server)
    settings(page, max_tokens=24, temperature=0)
    send_by_keyboard(page, PROMPT)
    wait_until_idle(page)
    screenshot(page, "playground-phone")
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"wider than the screen: {widths}"
    work, aside = page.locator(".work").bounding_box(), page.locator(".settings").bounding_box()
    assert aside["y"] >= work["y"] + work["height"]  # one column: settings below
    for control in ("#prompt", "#send", "#stop", "#max-tokens", "#temperature"):
        box = page.locator(control).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], control
    assert page.locator("#send").bounding_box()["height"] >= 36  # big enough to tap
    assert_stayed_home(network)


def test_every_control_is_labelled_and_reachable_by_keyboard(open_page: PageFactory, live_server: str) -> None:
    page, _ = open_page(live_server)
    open_playground(page, live_server)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, select')]
            .filter((el) => el.labels.length === 0 || !el.labels[0].textContent.trim())
            .map((el) => el.id || el.name)"""
    )
    assert unlabelled == []
    page.focus("#prompt")
    reached = set()
    for _ in range(30):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("() => document.activeElement.id"))
    assert {"send", "max-tokens", "temperature", "top-p", "n", "seed", "stop-sequences"} <= reached


def test_on_the_lambda_stage(open_page: PageFactory, lambda_stage_server: str, screenshot: Screenshot) -> None:
    """Behind API Gateway's /Prod stage, through the Lambda handler: the stream arrives in one piece, and works."""
    stage_page, stage_network = open_page(lambda_stage_server)
    open_playground(stage_page, lambda_stage_server)
    settings(stage_page, max_tokens=16, temperature=0)
    send_by_keyboard(stage_page, PROMPT)
    wait_until_idle(stage_page)
    screenshot(stage_page, "playground-lambda-stage")
    answer = complete(lambda_stage_server, prompt=PROMPT, max_tokens=16, temperature=0)
    assert generated(stage_page) == [answer["choices"][0]["text"]]
    assert stage_page.inner_text("#status") == "Done."
    assert stat(stage_page, "finish") == answer["choices"][0]["finish_reason"]
    assert f"{answer['usage']['completion_tokens']} generated" in stat(stage_page, "tokens")
    assert f"{STAGE}/v1/completions" in stage_network.paths()
    assert_stayed_home(stage_network, prefix=STAGE)
