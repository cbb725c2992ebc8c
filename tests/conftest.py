"""Shared fixtures: a tiny GPT-2 built here, loaded through MODEL_DIR exactly as in production (on the default
engine, llama.cpp); the real SmolLM2 for the llama.cpp engine (smollm2_model.py)."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distilgpt2_api.aws_lambda.local import LocalContext
from distilgpt2_api.engines import Engine, load_engine
from distilgpt2_api.model_store import write_manifest
from distilgpt2_api.model_store.convert import convert_for_ctranslate2
from distilgpt2_api.model_store.llamacpp_gguf import write_gguf

from engine_apps import llamacpp_app, openai_sdk
from model_factory import build_tiny_chat_llama, build_tiny_gpt2
from server_process import serving_in_thread

pytest_plugins = ["smollm2_model"]  # smollm2_llamacpp_dir: the real SmolLM2 for the llama.cpp engine


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2, converted for CTranslate2 and to a float32 GGUF too, as `prepare-model` leaves a directory."""
    path = build_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")
    convert_for_ctranslate2(path)
    write_gguf(path)
    write_manifest(path, source="local", model_id="tiny-gpt2")  # after conversion, as prepare-model does
    return path


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a ChatML chat template and `<|im_end|>` as end of turn, converted like model_dir."""
    path = build_tiny_chat_llama(tmp_path_factory.mktemp("models") / "tiny-chat-llama")
    convert_for_ctranslate2(path)
    write_gguf(path)
    write_manifest(path, source="local", model_id="tiny-chat-llama")
    return path


@pytest.fixture(scope="session")
def long_chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat Llama with a 2048-token context, for the llama.cpp engine only: room for tool definitions,
    which the suite's small tokenizer spells out in many tokens."""
    path = build_tiny_chat_llama(tmp_path_factory.mktemp("models") / "tiny-chat-llama-2k", context=2048)
    write_gguf(path)
    write_manifest(path, source="local", model_id="tiny-chat-llama")
    return path


class _SseWatcherLeftBehind(logging.Filter):
    """sse-starlette starts a shutdown watcher task on each event loop that serves a stream; it ends with the
    server it watches, which a test's loop (TestClient's, a loopback server's thread) never signals. When such a
    loop is dropped, asyncio reports the task as "destroyed but pending": expected here, and only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Task was destroyed but it is pending" in message and "_shutdown_watcher" in message)


logging.getLogger("asyncio").addFilter(_SseWatcherLeftBehind())

_engines: dict[str, Engine] = {}


@pytest.fixture(scope="session", params=["ctranslate2", "transformers"])
def engine(request: pytest.FixtureRequest, model_dir: Path) -> Engine:
    """Each engine on the tiny model: both must keep the same contract.

    Kept for the whole session, as in a server (loading is the slow part).
    """
    if request.param not in _engines:
        _engines[request.param] = load_engine(model_dir, request.param, threads=1)
    return _engines[request.param]


@pytest.fixture(scope="session")
def app(model_dir: Path) -> FastAPI:
    """The production app module, imported with MODEL_DIR pointing at the tiny GPT-2 and no ENGINE set: the
    default engine, llama.cpp, on the float32 `model.gguf` that `model_dir` writes. The tests that use it stand
    in for its step engine's `forward` (slowed, failing, held: slowdown.py); the other engines keep their
    contract in tests/engines, and an app on one of them is `engine_apps.engine_app`."""
    os.environ["MODEL_DIR"] = str(model_dir)
    for name in ("ENGINE", "SERVED_MODEL_NAME", "THREADS"):
        os.environ.pop(name, None)
    from distilgpt2_api.settings import get_settings

    get_settings.cache_clear()
    module = importlib.import_module("distilgpt2_api.app")
    return module.app


@pytest.fixture(scope="session")
def chat_app(chat_model_dir: Path) -> FastAPI:
    """The production app on the default engine (llama.cpp) over the tiny chat Llama: the chat routes' model."""
    return llamacpp_app(chat_model_dir)


@pytest.fixture
def chat_client(chat_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(chat_app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def base_url(app: FastAPI) -> Iterator[str]:
    """The module's app under uvicorn on an ephemeral loopback port."""
    with serving_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(base_url: str) -> openai.OpenAI:
    """The official `openai` SDK against the module's app (no retries: a failure shows at once)."""
    return openai_sdk(base_url)


@pytest.fixture
def lambda_context() -> LocalContext:
    """The context Lambda passes, as `make invoke` fakes it: 60 s left unless a test sets `remaining_millis`."""
    return LocalContext(aws_request_id="11111111-2222-3333-4444-555555555555", remaining_millis=60_000)


@pytest.fixture(scope="session")
def lambda_handler(app: FastAPI):  # type: ignore[no-untyped-def]
    """`handler.handler`, the Lambda entry point."""
    return importlib.import_module("handler").handler
