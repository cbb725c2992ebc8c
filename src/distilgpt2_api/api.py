"""The ASGI app: `uvicorn distilgpt2_api.api:app`. Importing this module loads the model (the Lambda cold start)."""

from __future__ import annotations

import time

_started = time.perf_counter()

from distilgpt2_api.http_api.app_factory import create_app, load_scheduler  # noqa: E402 - timed: the cold start
from distilgpt2_api.settings import get_settings  # noqa: E402

settings = get_settings()
app = create_app(load_scheduler(settings), settings, cold_start_seconds=time.perf_counter() - _started)
