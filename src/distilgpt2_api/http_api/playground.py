"""`/playground`: one page for trying the model by hand, served by the service itself.

The page (static/playground.html, .js, .css: no build step, no CDN, no framework) streams from
`/v1/completions` and `/v1/chat/completions` with `fetch`. What it needs to know about this service
(the request's root_path, such as an API Gateway stage; the served model; whether it has a chat
template; whether a key is needed; the limits) is written into the page when it is served, so the
page works under any prefix and asks nothing before the first generation. The page and its assets
stay open when API keys are set: the page offers a field for the key, and the API checks it.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse

from distilgpt2_api import __version__
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.http_api.static_assets import Asset, add_asset_route
from distilgpt2_api.settings import Settings

PLAYGROUND_URL = "/playground"
ASSETS_URL = "/playground/assets"
PAGE = "playground.html"
ASSET_TYPES = {  # name -> content type; nothing else is served from the static folder
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
STATIC_DIR = files("distilgpt2_api.http_api") / "static"

# Same origin only, and nothing inline: the script and the style sheet are files of their own.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@cache
def load_asset(name: str) -> Asset:
    """One of ASSET_TYPES, read from the installed package once per process."""
    content = (STATIC_DIR / name).read_bytes()
    return Asset(content, ASSET_TYPES[name])


def asset_url(root: str, name: str) -> str:
    return f"{root}{ASSETS_URL}/{name}?v={load_asset(name).digest[:12]}"


@cache
def page_template() -> str:
    return (STATIC_DIR / PAGE).read_text(encoding="utf-8")


def page_config(scheduler: Scheduler, settings: Settings, *, root: str, key_required: bool) -> dict[str, object]:
    """What the page's script reads from the page: where the API is and what it allows."""
    return {
        "root": root,
        "model": scheduler.model_name,
        "version": __version__,
        "chat": scheduler.info.chat_template is not None,
        "keyRequired": key_required,
        "maxTokens": settings.max_new_tokens_limit,
        "maxChoices": settings.max_return_sequences,
        "maxPromptChars": settings.max_prompt_chars,
    }


def render_page(config: dict[str, object]) -> str:
    """The page, with its asset URLs under `root` (each carrying its content's hash) and `config` in a data
    attribute (escaped: it names the model, which the operator chose)."""
    root = str(config["root"])
    replacements = {
        "{{css_url}}": asset_url(root, "playground.css"),
        "{{js_url}}": asset_url(root, "playground.js"),
        "{{icon_url}}": f"{root}/docs/assets/favicon.png",
        "{{docs_url}}": f"{root}/docs",
        "{{model}}": str(config["model"]),
        "{{config}}": json.dumps(config, separators=(",", ":")),
    }
    text = page_template()
    for marker, value in replacements.items():
        text = text.replace(marker, html.escape(value, quote=True))
    return text


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def playground_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(PLAYGROUND_URL)
    async def playground(request: Request) -> HTMLResponse:
        config = page_config(
            request.app.state.scheduler,
            settings,
            root=_root(request),
            key_required=request.app.state.api_keys is not None,
        )
        return HTMLResponse(render_page(config), headers=PAGE_HEADERS)

    add_asset_route(router, ASSETS_URL, ASSET_TYPES, load_asset, "playground")
    return router


def install_playground(app: FastAPI, settings: Settings) -> None:
    """Serve the playground on `app`. Install before any catch-all route: `GET /{prompt}` would take it."""
    app.include_router(playground_router(settings))
