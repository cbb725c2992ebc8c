"""Building the ASGI app: around a loaded generator, or from settings (loading the model)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from distilgpt2_api import __version__, openai_routes, routes
from distilgpt2_api.auth import install_api_keys, require_api_key
from distilgpt2_api.body_limit import BodySizeLimit
from distilgpt2_api.engines import load_engine
from distilgpt2_api.errors import install_error_handling
from distilgpt2_api.generation import TextGenerator
from distilgpt2_api.observability import RequestLogging, silence_access_log
from distilgpt2_api.settings import Settings
from distilgpt2_api.time_budget import TimeBudget


def create_app(generator: TextGenerator, settings: Settings) -> FastAPI:
    """Build the app around an already loaded generator."""
    app = FastAPI(
        title="distilgpt2-api",
        version=__version__,
        summary="Text generation with a Hugging Face causal language model.",
    )
    app.state.generator = generator
    app.state.time_budget = TimeBudget(
        max_seconds=settings.max_request_seconds,
        gateway_timeout_seconds=settings.gateway_timeout_seconds,
        margin_seconds=settings.deadline_margin_seconds,
    )
    install_error_handling(app)
    install_api_keys(app, settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLogging, log_prompts=settings.log_prompts)  # outermost: sees every request
    if not settings.log_prompts:
        silence_access_log()
    if settings.cors_allow_origins:  # closed unless origins are configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["GET", "POST"])
    keyed = [Depends(require_api_key)]
    app.include_router(routes.health_router)
    app.include_router(openai_routes.router, dependencies=keyed)
    app.include_router(routes.router, dependencies=keyed)  # last: its `/{prompt}` route matches any single segment
    return app


def model_dir(settings: Settings) -> Path:
    """MODEL_DIR, or with MODEL_S3_URI a verified copy downloaded once per instance."""
    if settings.model_s3_uri is None:
        return settings.model_dir
    from distilgpt2_api.model_store.s3 import ensure_model_from_s3  # boto3: only when used

    return ensure_model_from_s3(settings.model_s3_uri, settings.model_cache_dir, engine=settings.engine)


def load_generator(settings: Settings) -> TextGenerator:
    engine = load_engine(
        model_dir(settings),
        settings.engine,
        threads=settings.threads,
        served_name=settings.served_model_name,
        compute_type=settings.compute_type,
    )
    return TextGenerator(engine, max_batch_tokens=settings.max_batch_tokens)
