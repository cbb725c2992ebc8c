"""The app on the llama.cpp engine, loaded as production loads it (Settings, load_scheduler, create_app)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from distilgpt2_api.http_api.app_factory import create_app, load_scheduler
from distilgpt2_api.settings import Settings


def llamacpp_app(model_dir: Path, **settings: Any) -> FastAPI:
    config = Settings(model_dir=model_dir, engine="llamacpp", **settings)
    return create_app(load_scheduler(config), config)
