"""The same app under its earlier name (`distilgpt2_api.app:app`): one app module, `api`."""

from distilgpt2_api.api import app

__all__ = ["app"]
