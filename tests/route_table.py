"""The (METHOD, path) pairs an app serves, for tests that must cover every route."""

from __future__ import annotations

import re

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
