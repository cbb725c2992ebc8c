"""/docs and /redoc load every script, style and icon from the service itself: at the root, on a stage, on Lambda."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.http_api.docs import (
    ASSET_TYPES,
    ASSETS_DIR,
    ASSETS_URL,
    CONTENT_SECURITY_POLICY,
    EMPTY_IMAGE_URL,
    REDOC_LOGO_URL,
    load_asset,
)
from distilgpt2_api.settings import Settings

from event_factory import http_api_event, response_body, response_header, rest_api_event
from route_table import assert_served_asset, unlisted_asset_paths

PAGES = ["/docs", "/redoc", "/docs/oauth2-redirect"]
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024  # a synchronous invocation's whole response, JSON-encoded


def referenced_urls(html: str) -> list[str]:
    """Every URL a docs page makes the browser load: tags' src/href, ReDoc's spec-url, Swagger UI's url and redirect."""
    urls = re.findall(r'\b(?:src|href|spec-url)="([^"]*)"', html)
    urls += re.findall(r"\burl: '([^']*)'", html)
    urls += re.findall(r"oauth2RedirectUrl: window\.location\.origin \+ '([^']*)'", html)
    return urls


def assert_same_origin(html: str, root: str) -> list[str]:
    """Only root-relative URLs under `root`, and no absolute URL anywhere in the page; returns the URLs."""
    assert not re.findall(r"[a-zA-Z][a-zA-Z0-9+.-]*://|//[a-z]", html.replace("window.location.origin", "")), html
    urls = referenced_urls(html)
    for url in urls:
        assert url.startswith(f"{root}/") and not url.startswith("//"), url
    return urls


@pytest.fixture(scope="module")
def staged(app: FastAPI) -> Iterator[TestClient]:
    """The app as uvicorn --root-path /Prod serves it (or a proxy that strips the stage)."""
    with TestClient(app, root_path="/Prod", raise_server_exceptions=False) as client:
        yield client


# --- pages --------------------------------------------------------------------------------


def test_swagger_ui_page_references_only_its_own_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    urls = assert_same_origin(page.text, "")
    assert {
        f"{ASSETS_URL}/swagger-ui-bundle.js",
        f"{ASSETS_URL}/swagger-ui.css",
        f"{ASSETS_URL}/favicon.png",
        "/openapi.json",
        "/docs/oauth2-redirect",
    } == set(urls)
    assert '"validatorUrl": null' in page.text  # no badge from a public validator


def test_redoc_page_references_only_its_own_assets_and_no_fonts(client: TestClient) -> None:
    page = client.get("/redoc")
    assert page.status_code == 200
    urls = assert_same_origin(page.text, "")
    assert {f"{ASSETS_URL}/redoc.standalone.js", f"{ASSETS_URL}/favicon.png", "/openapi.json"} == set(urls)
    assert "fonts.googleapis" not in page.text


@pytest.mark.parametrize("path", PAGES)
def test_pages_forbid_other_origins(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    for sources in directives.values():
        assert "*" not in sources and "http" not in sources, sources  # no other origin, however named


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_every_url_a_page_references_is_served(client: TestClient, path: str) -> None:
    for url in referenced_urls(client.get(path).text):
        response = client.get(url)
        assert response.status_code == 200, url


# --- assets -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ASSET_TYPES)
def test_assets_are_served_with_their_content_types(client: TestClient, name: str) -> None:
    response = client.get(f"{ASSETS_URL}/{name}")
    assert_served_asset(response, ASSET_TYPES[name])
    assert response.content == load_asset(name).content
    assert len(response.content) > 1000


def test_assets_are_the_packages_own_but_for_redocs_logo() -> None:
    for name in ASSET_TYPES:
        shipped, served = (ASSETS_DIR / name).read_bytes(), load_asset(name).content
        if name == "redoc.standalone.js":
            # The only URL of another origin ReDoc loads by itself: gone from what the service serves.
            assert REDOC_LOGO_URL in shipped and REDOC_LOGO_URL not in served
            assert shipped.replace(REDOC_LOGO_URL, b"") == served.replace(EMPTY_IMAGE_URL, b"")
        else:
            assert served == shipped, name
        assert b"fonts.googleapis" not in served and b"cdn.jsdelivr" not in served, name


def test_an_unchanged_asset_is_a_304(client: TestClient) -> None:
    first = client.get(f"{ASSETS_URL}/swagger-ui.css")
    again = client.get(f"{ASSETS_URL}/swagger-ui.css", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert client.get(f"{ASSETS_URL}/swagger-ui.css", headers={"if-none-match": '"stale"'}).status_code == 200


@pytest.mark.parametrize(
    "path", unlisted_asset_paths(ASSETS_URL, "..%2F..%2Fpyproject.toml", "../docs", "swagger-ui.css/x")
)
def test_only_the_listed_assets_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    if path.endswith("/../docs"):  # the client resolves it to /docs/docs: a 404 too
        assert response.url.path == "/docs/docs"
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_docs_stay_open_when_api_keys_are_set(app: FastAPI) -> None:
    locked = create_app(app.state.scheduler, Settings(model_dir=Path("unused"), api_key="secret-key"))
    with TestClient(locked, raise_server_exceptions=False) as client:
        assert client.post("/generate", json={"prompt": "Once"}).status_code == 401
        for url in ["/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json"]:
            assert client.get(url).status_code == 200, url
        for url in referenced_urls(client.get("/docs").text + client.get("/redoc").text):
            assert client.get(url).status_code == 200, url


# --- behind a stage prefix ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_behind_a_root_path_every_url_carries_it(staged: TestClient, path: str) -> None:
    page = staged.get(path)
    assert page.status_code == 200
    urls = assert_same_origin(page.text, "/Prod")
    assert "/Prod/openapi.json" in urls
    for url in urls:
        assert staged.get(url.removeprefix("/Prod")).status_code == 200, url  # as the proxy passes it on


# --- through the Lambda handler -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_lambda_rest_api_stage_pages_and_assets(lambda_handler: Any, lambda_context: Any, path: str) -> None:
    page = lambda_handler(rest_api_event("GET", path, stage="Prod"), lambda_context)
    assert page.get("statusCode") == 200
    assert response_header(page, "content-security-policy") == CONTENT_SECURITY_POLICY
    urls = assert_same_origin(response_body(page).decode(), "/Prod")
    for url in urls:
        # The gateway hands the function the path without the stage, and the stage in the context.
        response = lambda_handler(rest_api_event("GET", url.removeprefix("/Prod"), stage="Prod"), lambda_context)
        assert response["statusCode"] == 200, url
        if url.startswith(f"/Prod{ASSETS_URL}/"):
            name = url.rsplit("/", 1)[1]
            assert response_header(response, "content-type") == ASSET_TYPES[name]
            assert response_body(response) == load_asset(name).content


@pytest.mark.parametrize("name", ASSET_TYPES)
def test_lambda_http_api_assets(lambda_handler: Any, lambda_context: Any, name: str) -> None:
    response = lambda_handler(http_api_event("GET", f"{ASSETS_URL}/{name}"), lambda_context)
    assert response["statusCode"] == 200
    assert response_header(response, "content-type") == ASSET_TYPES[name]
    assert response["isBase64Encoded"] is not name.endswith((".js", ".css"))  # text stays text, the icon is binary
    assert response_body(response) == load_asset(name).content
    assert len(json.dumps(response)) < LAMBDA_RESPONSE_LIMIT


def test_lambda_http_api_pages_at_the_root(lambda_handler: Any, lambda_context: Any) -> None:
    for path in ["/docs", "/redoc"]:
        page = lambda_handler(http_api_event("GET", path), lambda_context)
        assert page["statusCode"] == 200
        urls = assert_same_origin(response_body(page).decode(), "")
        assert "/openapi.json" in urls
