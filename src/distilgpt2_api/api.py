"""The ASGI app: `uvicorn distilgpt2_api.api:app`. Importing this module loads the model (the Lambda cold start)."""

from __future__ import annotations

from distilgpt2_api.http_api.app_factory import create_app, load_scheduler
from distilgpt2_api.settings import get_settings

settings = get_settings()
app = create_app(load_scheduler(settings), settings)
