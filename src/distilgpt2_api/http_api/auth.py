"""Optional API keys: `Authorization: Bearer <key>`, or `x-api-key: <key>` (Anthropic's clients send that), on every
route that runs the model.

Keys come from API_KEY (comma-separated, so a new key can go live before the old one is retired),
or under Lambda from an SSM SecureString parameter or a Secrets Manager secret named by
API_KEY_PARAMETER, read through Powertools parameters and cached per instance.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from distilgpt2_api.http_api.errors import ApiError
from distilgpt2_api.settings import Settings

KEY_CACHE_SECONDS = 300  # a rotated secret reaches a warm instance within this time
SECRETS_MANAGER_ARN = "arn:aws:secretsmanager:"

CHALLENGE = {"www-authenticate": "Bearer"}
KeySource = Callable[[], tuple[bytes, ...]]
_bearer = HTTPBearer(auto_error=False, description="The service's API key (API_KEY), when one is configured.")
_api_key_header = APIKeyHeader(
    name="x-api-key", auto_error=False, description="The same key, as Anthropic's clients send it."
)


def split_keys(value: str) -> tuple[bytes, ...]:
    """`"k1, k2"` → the non-empty keys, as bytes for a constant-time comparison."""
    return tuple(key.strip().encode() for key in value.split(",") if key.strip())


def key_source(settings: Settings) -> KeySource | None:
    """Where the accepted keys come from, or None when the API is open."""
    if settings.api_key is not None:
        keys = split_keys(settings.api_key.get_secret_value())
        return lambda: keys
    name = settings.api_key_parameter
    if name is None:
        return None
    from aws_lambda_powertools.utilities import parameters  # boto3: only when used

    if name.startswith(SECRETS_MANAGER_ARN):
        return lambda: split_keys(str(parameters.get_secret(name, max_age=KEY_CACHE_SECONDS)))
    return lambda: split_keys(str(parameters.get_parameter(name, decrypt=True, max_age=KEY_CACHE_SECONDS)))


def is_accepted(given: str, keys: tuple[bytes, ...]) -> bool:
    """Whether `given` is one of `keys`, compared in constant time against every key."""
    candidate = given.encode()
    matches = [hmac.compare_digest(candidate, key) for key in keys]  # no early exit
    return any(matches)


def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """Dependency: a 401 unless the request carries an accepted key, as a bearer token or in `x-api-key` (or no
    key is configured). With both headers, the bearer token is the one checked.

    Synchronous on purpose: FastAPI runs it in a worker thread, so a parameter refresh never
    blocks the event loop.
    """
    source: KeySource | None = request.app.state.api_keys
    if source is None:
        return
    given = credentials.credentials if credentials is not None else api_key
    if given is None:
        message = "this API needs a key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
        raise ApiError(401, "missing_api_key", message, headers=CHALLENGE)
    if not is_accepted(given, source()):
        raise ApiError(401, "invalid_api_key", "the API key is not valid", headers=CHALLENGE)


def install_api_keys(app: FastAPI, settings: Settings) -> None:
    """Record where `app` reads its keys; routes opt in with `Depends(require_api_key)`."""
    app.state.api_keys = key_source(settings)
