"""The app on a chosen engine, as MODEL_DIR and ENGINE configure it in production, and the `openai` SDK for one
served on loopback (server_process.serving_in_thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
from fastapi import FastAPI

from distilgpt2_api.engines import EngineName
from distilgpt2_api.http_api.app_factory import create_app, load_scheduler
from distilgpt2_api.settings import Settings


def engine_app(model_dir: Path, engine: EngineName, **settings: Any) -> FastAPI:
    """The production app on `engine` over `model_dir` (MODEL_DIR=model_dir, ENGINE=engine)."""
    config = Settings(model_dir=model_dir, engine=engine, **settings)
    return create_app(load_scheduler(config), config)


def llamacpp_app(model_dir: Path, **settings: Any) -> FastAPI:
    """The production app on the llama.cpp engine over `model_dir` (MODEL_DIR=model_dir, ENGINE=llamacpp)."""
    return engine_app(model_dir, "llamacpp", **settings)


def openai_sdk(base_url: str, *, timeout: float = 60) -> openai.OpenAI:
    """The SDK against the app served at `base_url`: no retries, so a failure shows at once."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=timeout)
