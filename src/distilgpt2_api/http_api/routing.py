"""Which paths belong to a fixed route: the tutorial's `GET /{prompt}` takes only the paths none owns."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute, Match, get_route_path
from starlette.types import Scope


def owned_by_fixed_route(routes: Sequence[BaseRoute], scope: Scope) -> bool:
    """Whether a route without path parameters serves the request's path, under any method."""
    path = get_route_path(scope) or "/"
    return any(route.path == path for route in iter_route_contexts(routes) if route.path)


class CatchAllRoute(APIRoute):
    """A route whose path parameters could match a fixed route's path (`/{prompt}` matches `/generate`): it
    yields that path under every method, so `GET /generate` is the fixed route's 405 (with `Allow`)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        router = scope.get("router")
        if match is not Match.NONE and router is not None and owned_by_fixed_route(router.routes, scope):
            return Match.NONE, {}
        return match, child_scope
