"""The ASGI app. Importing this module loads the model: that is the Lambda cold start."""

from __future__ import annotations

from fastapi import FastAPI

from distilgpt2_api import __version__, openai_routes, routes
from distilgpt2_api.errors import install_error_handling
from distilgpt2_api.generation import TextGenerator
from distilgpt2_api.model_loading import load_model
from distilgpt2_api.settings import Settings, get_settings


def create_app(generator: TextGenerator) -> FastAPI:
    """Build the app around an already loaded generator."""
    app = FastAPI(
        title="distilgpt2-api",
        version=__version__,
        summary="Text generation with a Hugging Face causal language model.",
    )
    app.state.generator = generator
    install_error_handling(app)
    app.include_router(openai_routes.router)
    app.include_router(routes.router)  # last: its `/{prompt}` route matches any single segment
    return app


def load_generator(settings: Settings) -> TextGenerator:
    loaded = load_model(
        settings.model_dir, torch_threads=settings.torch_threads, served_name=settings.served_model_name
    )
    return TextGenerator(loaded, torch_threads=settings.torch_threads)


app = create_app(load_generator(get_settings()))
