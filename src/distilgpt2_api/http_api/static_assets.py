"""Files the service serves from its own package (docs and playground assets): ETag, caching, no sniffing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request, Response

ASSET_CACHE_CONTROL = "public, max-age=86400"  # the files change only with the installed package


@dataclass(frozen=True)
class Asset:
    content: bytes
    media_type: str

    @property
    def digest(self) -> str:
        """Of the content: the ETag, and a version for URLs that name it."""
        return hashlib.sha256(self.content).hexdigest()[:32]

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


def asset_response(asset: Asset, request: Request) -> Response:
    """`asset`, or 304 when the client's copy is current."""
    headers = {"etag": asset.etag, "cache-control": ASSET_CACHE_CONTROL, "x-content-type-options": "nosniff"}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.content, media_type=asset.media_type, headers=headers)


def add_asset_route(
    router: APIRouter, url: str, media_types: Mapping[str, str], load: Callable[[str], Asset], what: str
) -> None:
    """`GET {url}/{name}` on `router`: the assets `media_types` lists (as `load` reads them), a 404 for any other."""

    async def asset(name: str, request: Request) -> Response:
        if name not in media_types:
            raise HTTPException(404, f"no {what} asset named {name!r}")
        return asset_response(load(name), request)

    router.add_api_route(url + "/{name}", asset, methods=["GET"], name=f"{what}_asset")
