"""Without Chromium the browser tests skip with a line saying how to run them, except where CI requires them."""

from __future__ import annotations

import pytest

import browser_harness


def test_a_missing_chromium_skips_with_how_to_run_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser_harness, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv(browser_harness.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser_harness.require_chromium()


def test_a_missing_chromium_fails_where_the_browser_tests_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser_harness, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv(browser_harness.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="may not be skipped"):
        browser_harness.require_chromium()
