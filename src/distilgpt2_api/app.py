"""The ASGI app. Importing this module loads the model: that is the Lambda cold start."""

from __future__ import annotations

from distilgpt2_api.app_factory import create_app, load_generator
from distilgpt2_api.settings import get_settings

settings = get_settings()
app = create_app(load_generator(settings), settings)
