"""Building the ASGI app: around a loaded scheduler, or from settings (loading the model)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from distilgpt2_api import __version__
from distilgpt2_api.core.batch import BatchScheduler
from distilgpt2_api.core.loop import StepScheduler
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.core.time_budget import TimeBudget
from distilgpt2_api.engines import load_engine
from distilgpt2_api.engines.base import Engine, StepEngine
from distilgpt2_api.engines.cpus import default_threads
from distilgpt2_api.http_api.anthropic import routes as anthropic
from distilgpt2_api.http_api.anthropic.routes import anthropic_router
from distilgpt2_api.http_api.auth import install_api_keys, require_api_key
from distilgpt2_api.http_api.body_limit import BodySizeLimit
from distilgpt2_api.http_api.docs import install_docs
from distilgpt2_api.http_api.embeddings.routes import embeddings_router
from distilgpt2_api.http_api.errors import install_error_handling
from distilgpt2_api.http_api.metrics import install_metrics
from distilgpt2_api.http_api.native import routes as native
from distilgpt2_api.http_api.native.routes import generation_router, health_router
from distilgpt2_api.http_api.openai import routes as openai
from distilgpt2_api.http_api.openai.routes import openai_router
from distilgpt2_api.http_api.playground import install_playground
from distilgpt2_api.http_api.protocol import Bounds
from distilgpt2_api.http_api.responses import routes as responses
from distilgpt2_api.http_api.responses.routes import responses_router
from distilgpt2_api.http_api.server_timing import ServerTiming
from distilgpt2_api.http_api.streaming import document_events
from distilgpt2_api.http_api.tgi.routes import tgi_router
from distilgpt2_api.http_api.tokens.routes import tokens_router
from distilgpt2_api.observability import RequestLogging, logger, silence_access_log
from distilgpt2_api.settings import Settings


def create_app(scheduler: Scheduler, settings: Settings, *, cold_start_seconds: float | None = None) -> FastAPI:
    """Build the app around an already loaded model; every limit comes from `settings`. `cold_start_seconds`:
    what loading took, reported in the first response's Server-Timing header."""
    app = FastAPI(
        title=f"distilgpt2-api: {scheduler.model_name}",
        version=__version__,
        summary=f"Text generation with {scheduler.model_name}, a Hugging Face causal language model.",
        docs_url=None,  # install_docs serves the docs pages, with their assets from this service
        redoc_url=None,
    )
    app.state.scheduler = scheduler
    app.state.time_budget = TimeBudget(
        max_seconds=settings.max_request_seconds,
        gateway_timeout_seconds=settings.gateway_timeout_seconds,
        margin_seconds=settings.deadline_margin_seconds,
    )
    install_error_handling(app)
    install_api_keys(app, settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ServerTiming, cold_start_seconds=cold_start_seconds)
    app.add_middleware(RequestLogging, log_prompts=settings.log_prompts)  # outermost: sees every request
    if not settings.log_prompts:
        silence_access_log()
    if settings.cors_allow_origins:  # closed unless origins are configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "DELETE"],  # DELETE: a stored response
            allow_headers=["authorization", "content-type", "x-api-key", "anthropic-version"],
        )
    keyed, bounds = [Depends(require_api_key)], Bounds.from_settings(settings)
    # First: its `/{prompt}` yields every path a fixed route owns (http_api/routing.py), and matching it before
    # them keeps Starlette's `$` (which also matches before a final newline) from giving `/%0A` to `GET /`.
    app.include_router(generation_router(bounds), dependencies=keyed)
    install_docs(app)  # open, like health
    install_playground(app, settings)  # open too: the page asks for the key when one is needed
    app.include_router(health_router())
    install_metrics(app, settings, keyed)  # Prometheus; behind the key when there is one, as Prometheus can send it
    app.include_router(openai_router(bounds), dependencies=keyed)
    app.include_router(responses_router(bounds, settings.response_store_size), dependencies=keyed)
    app.include_router(embeddings_router(bounds), dependencies=keyed)
    app.include_router(anthropic_router(bounds), dependencies=keyed)
    app.include_router(tokens_router(bounds), dependencies=keyed)
    app.include_router(tgi_router(bounds), dependencies=keyed)  # POST /: after health, which owns GET and HEAD /
    document_events(app, [*openai.EVENTS, *native.EVENTS, *responses.EVENTS, *anthropic.EVENTS])
    return app


def model_dir(settings: Settings) -> Path:
    """MODEL_DIR, or with MODEL_S3_URI a verified copy downloaded once per instance."""
    if settings.model_s3_uri is None:
        return settings.model_dir
    from distilgpt2_api.model_store.s3 import ensure_model_from_s3  # boto3: only when used

    return ensure_model_from_s3(settings.model_s3_uri, settings.model_cache_dir, engine=settings.engine)


def load_scheduler(settings: Settings) -> Scheduler:
    """The model's engine behind its scheduler: continuous batching for a step engine, else whole jobs."""
    cpus = default_threads(settings.engine)
    engine = load_engine(
        model_dir(settings),
        settings.engine,
        threads=settings.threads or cpus.count,
        served_name=settings.served_model_name,
        compute_type=settings.compute_type,
        # Room for the largest request (n sequences run at once) or batch, and the prefix cache's extra slots.
        slots=max(settings.max_batch_size, settings.max_return_sequences) + settings.prefix_cache_slots,
        context=settings.max_batch_tokens,  # no sequence may hold more (the token budget of a request)
        slot_tokens=settings.kv_slot_tokens or None,  # each slot's KV at load; it grows to `context` on demand
        cpu_variant=settings.llama_cpu_variant,
    )
    # What the engine computes with on this CPU, and why (llama.cpp: the probed CPU variant): also GET / and /metrics.
    threads_reason = "THREADS" if settings.threads else cpus.reason
    logger.info(
        "engine loaded",
        extra={"model": engine.info.name, "kernels": asdict(engine.kernels), "threads_set_by": threads_reason},
    )
    return scheduler_for(engine, settings)


def scheduler_for(engine: Engine | StepEngine, settings: Settings) -> Scheduler:
    """`engine` behind the scheduler of its kind: continuous batching for a step engine, else whole jobs."""
    shared = {
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_size": settings.max_batch_size,
        "any_model_name": settings.model_name_policy == "any",
    }
    if isinstance(engine, StepEngine):
        return StepScheduler(
            engine,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
            prefix_cache_slots=None if settings.prefix_cache_slots else 0,  # any free slot, or none
            grammar_cache_size=settings.grammar_cache_size,
            **shared,
        )
    return BatchScheduler(engine, **shared)
