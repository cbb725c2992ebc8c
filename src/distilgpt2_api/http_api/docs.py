"""`/docs` (Swagger UI) and `/redoc` (ReDoc), with every script, style and icon served by the service itself.

FastAPI's own pages load Swagger UI, ReDoc and Google fonts from public CDNs, so they render blank
without internet access. Here the assets come from the `fastapi-offline` package and are served at
`/docs/assets/{name}`; every URL a page holds carries the request's root_path (an API Gateway stage
such as `/Prod`, or uvicorn's `--root-path`), and a Content-Security-Policy keeps the pages from
reaching any other origin.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

from distilgpt2_api.http_api.static_assets import Asset, add_asset_route

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
FAVICON_URL = f"{ASSETS_URL}/favicon.png"

# name -> content type; nothing else is served from the package's folder.
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# Resolved at import, so an image without the package fails at its cold start, not on a page view.
ASSETS_DIR = files("fastapi_offline") / "static"

# Same origin only. The inline parts are FastAPI's page scripts and the styles both UIs inject;
# ReDoc runs its search in a worker built from a blob, and both draw icons from data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'self'; base-uri 'self'; "
    "form-action 'self'"
)


# ReDoc's side menu shows Redocly's logo from Redocly's CDN (and hides it when it fails to load): an
# empty image in its place, so the page never even tries another origin.
REDOC_LOGO_URL = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE_URL = b"data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22 width=%220%22 height=%220%22/%3E"
ASSET_PATCHES = {"redoc.standalone.js": [(REDOC_LOGO_URL, EMPTY_IMAGE_URL)]}


@cache
def load_asset(name: str) -> Asset:
    """One of ASSET_TYPES, read from the installed package once per process (and patched)."""
    content = (ASSETS_DIR / name).read_bytes()
    for old, new in ASSET_PATCHES.get(name, []):
        content = content.replace(old, new)
    return Asset(content, ASSET_TYPES[name])


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _page(response: HTMLResponse) -> HTMLResponse:
    response.headers["content-security-policy"] = CONTENT_SECURITY_POLICY
    response.headers["cache-control"] = "no-cache"
    return response


def docs_router(app: FastAPI) -> APIRouter:
    """The docs pages and their assets, for `app`'s title and schema URL. Open even when API keys are set."""
    router = APIRouter(include_in_schema=False)

    def page(
        request: Request, render: Callable[..., HTMLResponse], name: str, paths: dict[str, str], **options: Any
    ) -> HTMLResponse:
        """`render`'s page of `app`'s schema, titled `name`; `paths` (keyword -> path) under this service's root."""
        root = _root(request)
        urls = {keyword: f"{root}{path}" for keyword, path in paths.items()}
        return _page(render(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - {name}", **urls, **options))

    @router.get(DOCS_URL)
    async def swagger_ui(request: Request) -> HTMLResponse:
        paths = {
            "swagger_js_url": f"{ASSETS_URL}/swagger-ui-bundle.js",
            "swagger_css_url": f"{ASSETS_URL}/swagger-ui.css",
            "swagger_favicon_url": FAVICON_URL,
            "oauth2_redirect_url": OAUTH2_REDIRECT_URL,
        }
        # No validator badge: it would ask a public validator about the schema.
        parameters = {**(app.swagger_ui_parameters or {}), "validatorUrl": None}
        oauth = app.swagger_ui_init_oauth
        return page(
            request, get_swagger_ui_html, "Swagger UI", paths, init_oauth=oauth, swagger_ui_parameters=parameters
        )

    @router.get(OAUTH2_REDIRECT_URL)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return _page(get_swagger_ui_oauth2_redirect_html())

    @router.get(REDOC_URL)
    async def redoc(request: Request) -> HTMLResponse:
        paths = {"redoc_js_url": f"{ASSETS_URL}/redoc.standalone.js", "redoc_favicon_url": FAVICON_URL}
        return page(request, get_redoc_html, "ReDoc", paths, with_google_fonts=False)

    add_asset_route(router, ASSETS_URL, ASSET_TYPES, load_asset, "docs")
    return router


def install_docs(app: FastAPI) -> None:
    """Serve the docs pages on `app`, which must be built with `docs_url=None, redoc_url=None`.

    Install before any catch-all route: `GET /{prompt}` would otherwise take `/docs`.
    """
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("build the app with docs_url=None and redoc_url=None: install_docs serves those pages")
    app.include_router(docs_router(app))
