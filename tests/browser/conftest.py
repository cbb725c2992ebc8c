"""A real browser against the real service: Debian's Chromium, driven by Playwright, on loopback only.

Fixtures for any browser test:
- `live_server`: the service under uvicorn in its own process (`python -m distilgpt2_api serve`): base URL.
- `lambda_stage_server`: `handler.handler` behind a loopback stand-in for API Gateway's `/Prod` stage:
  the stage's base URL.
- `browser`: headless Chromium, a fresh profile per launch, one launch per test module.
- `open_page(base_url)`: a fresh page that may reach `base_url`'s origin only, and the record of what it asked
  for (requests to other origins are aborted and listed in `network.blocked`).
- `screenshot(page, name)`: a full-page PNG under tests/browser/screenshots/ (gitignored), path printed.

Chromium comes from Debian (`apt-get install chromium`; .ci/run installs it). Without it these tests
skip, with one line saying how to run them; with REQUIRE_BROWSER_TESTS=1, as .ci/run sets, they fail instead.
Playwright's own browser downloads are never used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from browser_harness import (
    CHROMIUM_FLAGS,
    NetworkLog,
    PageFactory,
    guarded_page,
    origin_of,
    require_chromium,
    serving_lambda_stage,
)
from server_process import server_process

SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture(scope="session")
def live_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service as `make serve` runs it, on a free loopback port: its base URL."""
    command = ["-m", "distilgpt2_api", "serve", "--port", "{port}", "--log-level", "warning"]
    log = tmp_path_factory.mktemp("live-server") / "server.log"
    with server_process(command, {"MODEL_DIR": str(model_dir)}, log) as server:
        yield server.base_url


@pytest.fixture(scope="session")
def lambda_stage_server(lambda_handler: Any) -> Iterator[str]:
    """`handler.handler` (the session's app) behind API Gateway's `/Prod` stage, on loopback."""
    with serving_lambda_stage(lambda_handler) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; Playwright gives every launch a fresh temporary profile (user data dir).

    Module-scoped on purpose: while Playwright's sync API is in use, this thread's asyncio loop
    counts as running, which other tests' event loops (Mangum, the Lambda handler) must not meet.
    """
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[PageFactory]:
    """`open_page(base_url)`: a fresh page that may reach `base_url`'s origin only, and its network log."""
    with ExitStack() as pages:

        def new(base_url: str) -> tuple[Any, NetworkLog]:
            network = NetworkLog(origin_of(base_url))
            return pages.enter_context(guarded_page(browser, network)), network

        yield new


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """`screenshot(page, name)`: saves a full-page PNG in tests/browser/screenshots/ and prints its path."""

    def take(target: Any, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        target.screenshot(path=str(path), full_page=True)
        print(f"screenshot of {request.node.nodeid}: {path}")
        return path

    return take
