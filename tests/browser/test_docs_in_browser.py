"""/docs and /redoc in headless Chromium with every other origin blocked: they render, from the service alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from distilgpt2_api.http_api.docs import ASSETS_URL

from browser_harness import STAGE, NetworkLog, PageFactory

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
RENDER_TIMEOUT_MS = 30_000
Screenshot = Callable[[Any, str], Path]


def operations(base_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) for every operation in the service's OpenAPI schema."""
    schema = httpx.get(f"{base_url}/openapi.json", timeout=30).raise_for_status().json()
    return [
        (method.upper(), path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def assert_stayed_home(network: NetworkLog, *, prefix: str = "") -> None:
    """No request left the service's origin (none was even attempted), and none failed."""
    assert network.blocked == [], f"requests to other origins: {network.blocked}"
    assert all(network.same_origin(url) for url in network.requests), network.requests
    assert network.failed == [], network.failed
    assert network.console_errors == [], network.console_errors
    outside = [path for path in network.paths() if not path.startswith(prefix + "/")]
    assert outside == [], f"requests outside {prefix or '/'}: {outside}"


def render_swagger_ui(page: Any, base_url: str) -> list[tuple[str, str]]:
    """Open /docs and wait for every operation of the schema: the (METHOD, path) Swagger UI lists."""
    expected = operations(base_url)
    page.goto(f"{base_url}/docs")
    # A function, not an expression: Playwright evaluates an expression anew at every poll, which the
    # page's policy (no 'unsafe-eval') refuses once the first check has not yet found the operations.
    page.wait_for_function(
        "(count) => document.querySelectorAll('.opblock').length >= count", arg=len(expected), timeout=RENDER_TIMEOUT_MS
    )
    listed: list[list[str]] = page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(block => [
            block.querySelector('.opblock-summary-method').textContent.trim(),
            block.querySelector('.opblock-summary-path').getAttribute('data-path'),
        ])""",
    )
    pairs = [(method, path) for method, path in listed]
    assert sorted(pairs) == sorted((method, path) for method, path, _ in expected)
    return pairs


def try_health_in_swagger_ui(page: Any) -> None:
    """Swagger UI's "Try it out" on `GET /`: the request goes out from the page and answers 200."""
    block = page.locator(".opblock", has=page.locator(".opblock-summary-path[data-path='/']"))
    block.locator(".opblock-summary").first.click()
    block.get_by_role("button", name="Try it out").click()
    block.get_by_role("button", name="Execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=RENDER_TIMEOUT_MS)
    assert status.inner_text().strip() == "200"
    assert '"health": "ok"' in block.locator(".live-responses-table .microlight").first.inner_text()


def render_redoc(page: Any, base_url: str) -> None:
    """Open /redoc and wait for the title and every operation's heading."""
    expected = operations(base_url)
    page.goto(f"{base_url}/redoc")
    title = page.locator("h1", has_text="distilgpt2-api")
    title.wait_for(timeout=RENDER_TIMEOUT_MS)
    assert title.is_visible()
    headings = page.locator("h2").all_inner_texts()
    for _, path, operation in expected:
        assert operation["summary"] in headings, f"{path}: {operation['summary']!r} not in {headings}"
    assert page.get_by_text("/v1/chat/completions").first.is_visible()


# --- uvicorn ------------------------------------------------------------------------------


def test_swagger_ui_lists_every_operation(open_page: PageFactory, live_server: str, screenshot: Screenshot) -> None:
    page, network = open_page(live_server)
    render_swagger_ui(page, live_server)
    assert page.locator(".info .title").inner_text().startswith("distilgpt2-api")
    screenshot(page, "docs")
    try_health_in_swagger_ui(page)
    screenshot(page, "docs-try-health")
    assert_stayed_home(network)
    assert {f"{ASSETS_URL}/swagger-ui-bundle.js", f"{ASSETS_URL}/swagger-ui.css", "/openapi.json", "/"} <= set(
        network.paths()
    )


def test_redoc_renders_the_schema(open_page: PageFactory, live_server: str, screenshot: Screenshot) -> None:
    page, network = open_page(live_server)
    render_redoc(page, live_server)
    screenshot(page, "redoc")
    assert_stayed_home(network)
    assert {f"{ASSETS_URL}/redoc.standalone.js", "/openapi.json"} <= set(network.paths())


def test_the_guard_and_the_pages_policy_keep_requests_home(open_page: PageFactory, live_server: str) -> None:
    """The harness itself, and the docs pages' Content-Security-Policy: nothing leaves the machine either way."""
    page, network = open_page(live_server)
    page.goto(f"{live_server}/")  # JSON, no policy: the harness's guard aborts the request and records it
    page.evaluate("() => fetch('https://example.com/from-health').catch(() => null)")
    assert network.blocked == ["https://example.com/from-health"]
    page.goto(f"{live_server}/docs")  # the page's policy refuses it before it becomes a request
    page.evaluate("() => fetch('https://example.com/from-docs').catch(() => null)")
    assert "https://example.com/from-docs" not in network.requests
    assert any("Content Security Policy" in error for error in network.console_errors), network.console_errors


# --- the Lambda handler behind an API Gateway stage ------------------------------------------


def test_swagger_ui_on_the_lambda_stage(
    open_page: PageFactory, lambda_stage_server: str, screenshot: Screenshot
) -> None:
    stage_page, stage_network = open_page(lambda_stage_server)
    render_swagger_ui(stage_page, lambda_stage_server)
    screenshot(stage_page, "lambda-stage-docs")
    try_health_in_swagger_ui(stage_page)  # the schema's server is the stage: the request goes to /Prod/
    assert_stayed_home(stage_network, prefix=STAGE)
    assert f"{STAGE}/" in stage_network.paths()


def test_redoc_on_the_lambda_stage(open_page: PageFactory, lambda_stage_server: str, screenshot: Screenshot) -> None:
    stage_page, stage_network = open_page(lambda_stage_server)
    render_redoc(stage_page, lambda_stage_server)
    screenshot(stage_page, "lambda-stage-redoc")
    assert_stayed_home(stage_network, prefix=STAGE)
