"""The browser harness's parts: Chromium's launch, a page that may reach one origin only, and the Lambda stage.

tests/browser/conftest.py turns them into fixtures; tests import what they assert with (NetworkLog, STAGE).
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from event_factory import rest_api_event
from server_process import HOST

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REQUIRE_ENV = "REQUIRE_BROWSER_TESTS"  # .ci/run sets it: there a missing Chromium fails, never skips
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root, in containers without user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no update checks, safe browsing lists or field trials
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
STAGE = "/Prod"


def require_chromium() -> str:
    """Chromium's path. Without it the browser tests skip, with one summary line saying how to run them; with
    REQUIRE_BROWSER_TESTS=1 (CI) they fail instead."""
    path = shutil.which(CHROMIUM)
    if path is None:
        reason = (
            f"browser tests need Chromium, not found at {CHROMIUM}: `sudo apt-get install chromium` "
            "(or CHROMIUM=/path/to/chromium) runs them"
        )
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so they may not be skipped", pytrace=False)
        pytest.skip(reason)
    return path


# --- one origin only ----------------------------------------------------------------------


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class NetworkLog:
    """What one page asked for; `origin` is the only origin it may reach."""

    origin: str
    requests: list[str] = field(default_factory=list)  # every request the page attempted
    blocked: list[str] = field(default_factory=list)  # to another origin: aborted, never sent
    failed: list[str] = field(default_factory=list)  # same origin, but no answer or an error status
    console_errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    def same_origin(self, url: str) -> bool:
        if urlsplit(url).scheme in ("data", "blob", "about"):  # inside the page: nothing leaves it
            return True
        return origin_of(url) == self.origin

    def paths(self) -> list[str]:
        """The path of every same-origin request, in order."""
        return [urlsplit(url).path for url in self.requests if self.same_origin(url)]


PageFactory = Callable[[str], tuple[Any, NetworkLog]]  # open_page(base_url): a guarded page and its log


@contextmanager
def guarded_page(browser: Any, network: NetworkLog) -> Iterator[Any]:
    """A page in a fresh browser context: requests to `network.origin` go through, all others are
    aborted before they leave the browser; `network` records everything."""
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")

    def guard(route: Any) -> None:
        if network.same_origin(route.request.url):
            route.continue_()
        else:
            network.blocked.append(route.request.url)
            route.abort("blockedbyclient")

    def on_response(response: Any) -> None:
        if response.status >= 400 and network.same_origin(response.url):
            network.failed.append(f"{response.url}: HTTP {response.status}")

    def on_console(message: Any) -> None:
        if message.type == "error":
            network.console_errors.append(message.text)

    context.route("**/*", guard)
    context.on("request", lambda request: network.requests.append(request.url))
    context.on("requestfailed", lambda request: network.failed.append(f"{request.url}: {request.failure}"))
    context.on("response", on_response)
    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda error: network.console_errors.append(f"uncaught: {error}"))
    try:
        yield page
    finally:
        context.close()


# --- the Lambda handler behind an API Gateway stage -----------------------------------------


class _StageGateway(BaseHTTPRequestHandler):
    """API Gateway's REST API in front of the Lambda handler: `/Prod/...` becomes a payload 1.0 event.

    One request at a time, as one Lambda instance serves them; a path outside the stage is a 403,
    as API Gateway answers for a path it does not route.
    """

    invoke: Callable[[dict[str, Any], Any], dict[str, Any]]
    context: Any

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urlsplit(self.path)  # percent-encoded, as REST APIs pass it on
        if not (url.path == STAGE or url.path.startswith(STAGE + "/")):
            self._reply(403, {"content-type": "application/json"}, b'{"message":"Forbidden"}')
            return
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        event = rest_api_event(
            self.command,
            url.path.removeprefix(STAGE) or "/",
            stage=STAGE.lstrip("/"),
            query=dict(parse_qsl(url.query)) or None,
            body=base64.b64encode(body).decode() if body else None,
        )
        event["isBase64Encoded"] = bool(body)
        event["headers"] = {**dict(self.headers.items()), "Host": event["headers"]["Host"]}
        event["multiValueHeaders"] = {name: [value] for name, value in event["headers"].items()}
        result = type(self).invoke(event, self.context)
        headers = {name: str(value) for name, value in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[name] = ", ".join(map(str, values))
        raw = result.get("body") or ""
        content = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
        self._reply(int(result["statusCode"]), headers, content)

    def _reply(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(content)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the service logs its own requests


@contextmanager
def serving_lambda_stage(handler: Callable[[dict[str, Any], Any], dict[str, Any]]) -> Iterator[str]:
    """`handler` behind a loopback stand-in for API Gateway's `/Prod` stage: yields the stage's base URL."""
    context = SimpleNamespace(  # what the handler reads of Lambda's context object
        aws_request_id="33333333-4444-5555-6666-777777777777",
        function_name="distilgpt2-api",
        memory_limit_in_mb=1769,
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:distilgpt2-api",
        get_remaining_time_in_millis=lambda: 60_000,
    )
    gateway = type("StageGateway", (_StageGateway,), {"invoke": staticmethod(handler), "context": context})
    server = HTTPServer((HOST, 0), gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_port}{STAGE}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
