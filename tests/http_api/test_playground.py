"""/playground: one HTML page and its two files, same-origin only, at the root, behind a stage, on Lambda.

What the page does in a browser is tests/browser/test_playground_in_browser.py's part.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.http_api.playground import (
    ASSET_TYPES,
    ASSETS_URL,
    CONTENT_SECURITY_POLICY,
    PLAYGROUND_URL,
    load_asset,
)
from distilgpt2_api.settings import Settings

from engine_apps import llamacpp_app
from event_factory import http_api_event, response_body, response_header, rest_api_event
from route_table import assert_served_asset, unlisted_asset_paths

REPO = Path(__file__).resolve().parents[2]


def referenced_urls(page: str) -> list[str]:
    return re.findall(r'\b(?:src|href)="([^"]*)"', page)


def config_of(page: str) -> dict[str, Any]:
    """The settings the page's script reads, from the body's data-config attribute."""
    found = re.search(r'<body data-config="([^"]*)"', page)
    assert found, "no data-config on <body>"
    config: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return config


def directives() -> dict[str, str]:
    return dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))


@pytest.fixture(scope="module")
def staged(app: FastAPI) -> Iterator[TestClient]:
    """The app as uvicorn --root-path /Prod serves it (or a proxy that strips the stage)."""
    with TestClient(app, root_path="/Prod", raise_server_exceptions=False) as client:
        yield client


# --- the page -----------------------------------------------------------------------------


def test_the_page_is_html_with_a_strict_policy(client: TestClient) -> None:
    page = client.get(PLAYGROUND_URL)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-content-type-options"] == "nosniff"
    policy = directives()
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == "'self'"
    for sources in policy.values():
        assert "unsafe" not in sources and "*" not in sources and "http" not in sources, sources


def test_the_page_has_nothing_inline_and_no_other_origin(client: TestClient) -> None:
    """The policy allows no inline script or style: the page must not need any."""
    page = client.get(PLAYGROUND_URL).text
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert "<style" not in page and " style=" not in page
    assert re.findall(r"\son[a-z]+=", page) == []  # no inline event handlers
    assert re.findall(r"[a-zA-Z][a-zA-Z0-9+.-]*://|//[a-z]", page) == []
    for url in referenced_urls(page):
        assert url.startswith("/") and not url.startswith("//"), url


def test_every_url_the_page_references_is_served(client: TestClient) -> None:
    urls = referenced_urls(client.get(PLAYGROUND_URL).text)
    assert {url.split("?")[0] for url in urls} == {
        f"{ASSETS_URL}/playground.js",
        f"{ASSETS_URL}/playground.css",
        "/docs/assets/favicon.png",
        "/docs",
    }
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        name = url.split("?")[0].rsplit("/", 1)[1]
        if name in ASSET_TYPES:
            assert response.headers["content-type"] == ASSET_TYPES[name]
            assert response.content == load_asset(name).content
            assert f"?v={load_asset(name).digest[:12]}" in url  # a new version is a new URL


def test_the_page_tells_its_script_about_the_service(client: TestClient, app: FastAPI) -> None:
    config = config_of(client.get(PLAYGROUND_URL).text)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["CompletionRequest"]["properties"]
    assert config["root"] == ""
    assert config["model"] == app.state.scheduler.model_name
    assert config["chat"] is False  # the tiny GPT-2 has no chat template
    assert config["keyRequired"] is False
    # The limits the page shows are the ones the API enforces.
    assert config["maxTokens"] == schema["max_tokens"]["maximum"]
    assert config["maxChoices"] == schema["n"]["maximum"]


def test_a_model_with_a_chat_template_gets_chat(chat_client: TestClient) -> None:
    config = config_of(chat_client.get(PLAYGROUND_URL).text)
    assert config["chat"] is True and config["model"] == "tiny-chat-llama"
    # The page's promise: chat works on this model.
    hello = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    response = chat_client.post("/v1/chat/completions", json=hello)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")


def test_the_model_name_is_escaped(model_dir: Path) -> None:
    name = '"><script>alert(1)</script><b x="'
    with TestClient(llamacpp_app(model_dir, served_model_name=name)) as client:
        page = client.get(PLAYGROUND_URL).text
        assert "<script>alert" not in page
        assert config_of(page)["model"] == name
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []


def test_the_page_stays_open_when_api_keys_are_set(app: FastAPI) -> None:
    locked = create_app(app.state.scheduler, Settings(model_dir=Path("unused"), api_key="secret-key"))
    with TestClient(locked, raise_server_exceptions=False) as client:
        page = client.get(PLAYGROUND_URL)
        assert page.status_code == 200
        assert config_of(page.text)["keyRequired"] is True
        assert 'id="api-key"' in page.text
        assert "secret-key" not in page.text
        for url in referenced_urls(page.text):
            assert client.get(url).status_code == 200, url
        refused = client.post("/v1/completions", json={"prompt": "Once"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"


# --- its files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ASSET_TYPES)
def test_files_are_served_with_their_types(client: TestClient, name: str) -> None:
    response = client.get(f"{ASSETS_URL}/{name}")
    assert_served_asset(response, ASSET_TYPES[name])
    again = client.get(f"{ASSETS_URL}/{name}", headers={"if-none-match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_the_script_calls_only_this_services_api() -> None:
    script = load_asset("playground.js").content.decode()
    assert re.findall(r"https?://", script) == []
    assert "/v1/${" in script and '"chat/completions" : "completions"' in script
    assert "config.root" in script  # every request goes under the page's own prefix


def test_the_page_offers_json_output(client: TestClient) -> None:
    """A labelled switch and schema box; the script sends them as OpenAI's response_format."""
    page = client.get(PLAYGROUND_URL).text
    assert re.search(r'<label class="check" for="json-mode"><input type="checkbox" id="json-mode"[^>]*> JSON out', page)
    assert re.search(r'<label for="json-schema">JSON Schema</label>\s*<textarea id="json-schema"', page)
    assert 'id="schema-field" hidden' in page  # shown once JSON output is on
    script = load_asset("playground.js").content.decode()
    for word in ("response_format", '"json_object"', '"json_schema"', "JSON.stringify(JSON.parse(text), null, 2)"):
        assert word in script, word


# The page's template (playground.html) is served only as the page.
@pytest.mark.parametrize(
    "path", unlisted_asset_paths(ASSETS_URL, "playground.html", "..%2Fplayground.py", "playground.js/x")
)
def test_only_the_listed_files_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.slow
def test_the_built_package_ships_the_page(tmp_path: Path) -> None:
    """A wheel (what `pip install .` installs) holds the page and its files, not only a source checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir"]
        + [str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("playground.html", *ASSET_TYPES):
        assert f"distilgpt2_api/http_api/static/{name}" in names


# --- behind a stage prefix, and through the Lambda handler --------------------------------------


def test_behind_a_root_path_every_url_carries_it(staged: TestClient) -> None:
    page = staged.get(PLAYGROUND_URL)
    assert page.status_code == 200
    assert config_of(page.text)["root"] == "/Prod"  # the script's API calls go under it too
    urls = referenced_urls(page.text)
    assert urls
    for url in urls:
        assert url.startswith("/Prod/"), url
        assert staged.get(url.removeprefix("/Prod")).status_code == 200, url  # as the proxy passes it on


def test_lambda_rest_api_stage(lambda_handler: Any, lambda_context: Any) -> None:
    page = lambda_handler(rest_api_event("GET", PLAYGROUND_URL, stage="Prod"), lambda_context)
    assert page["statusCode"] == 200
    assert response_header(page, "content-type") == "text/html; charset=utf-8"
    assert response_header(page, "content-security-policy") == CONTENT_SECURITY_POLICY
    text = response_body(page).decode()
    assert config_of(text)["root"] == "/Prod"
    for url in referenced_urls(text):
        assert url.startswith("/Prod/"), url
        path, _, query = url.removeprefix("/Prod").partition("?")
        event = rest_api_event("GET", path, stage="Prod", query=dict([query.split("=")]) if query else None)
        response = lambda_handler(event, lambda_context)
        assert response["statusCode"] == 200, url
        name = path.rsplit("/", 1)[1]
        if name in ASSET_TYPES:
            assert response_header(response, "content-type") == ASSET_TYPES[name]
            assert response_body(response) == load_asset(name).content


def test_lambda_http_api_at_the_root(lambda_handler: Any, lambda_context: Any) -> None:
    page = lambda_handler(http_api_event("GET", PLAYGROUND_URL), lambda_context)
    assert page["statusCode"] == 200
    assert config_of(response_body(page).decode())["root"] == ""
    for name in ASSET_TYPES:
        response = lambda_handler(http_api_event("GET", f"{ASSETS_URL}/{name}"), lambda_context)
        assert response["statusCode"] == 200
        assert response["isBase64Encoded"] is False  # text stays text
        assert response_body(response) == load_asset(name).content
