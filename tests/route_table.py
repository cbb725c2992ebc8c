"""The (METHOD, path) pairs an app serves, for tests that must cover every route."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(METHOD, path) the app serves, docs included, in API Gateway's path syntax."""
    routes: set[tuple[str, str]] = set()
    # FastAPI keeps included routers nested; this yields every route with its full path.
    for route in iter_route_contexts(app.routes):
        if route.path is None or route.methods is None:  # mounts, websockets
            continue
        # Starlette's {name:path} is API Gateway's greedy {name+}.
        path = re.sub(r"\{(\w+):path\}", r"{\1+}", route.path)
        # Starlette's own routes answer HEAD for every GET, implied; the gateway routes only what a route declares.
        implied = {"HEAD"} if "GET" in route.methods else set()
        routes.update((method, path) for method in route.methods - implied)
    return routes


def unlisted_asset_paths(assets_url: str, *own: str) -> list[str]:
    """Paths under `assets_url` that must be 404s: an unknown name, an encoded traversal, the folder itself, and
    `own` (relative to it)."""
    return [f"{assets_url}/nothing.js", f"{assets_url}/%2E%2E%2F__init__.py", f"{assets_url}/"] + [
        f"{assets_url}/{path}" for path in own
    ]


def assert_served_asset(response: Any, media_type: str) -> None:
    """`response` serves an asset: 200, its media type, no sniffing, cacheable."""
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"].startswith("public, max-age=")
