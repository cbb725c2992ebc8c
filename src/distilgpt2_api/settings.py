"""Service configuration, read once from environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from distilgpt2_api.engines import ComputeType, EngineName


class Settings(BaseSettings):
    """Every knob the service reads. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    model_dir: Path = Field(
        Path("models/default"),
        description="Local model directory (config, safetensors weights, tokenizer) loaded at startup.",
    )
    model_s3_uri: str | None = Field(
        None, description="s3://bucket/prefix/ of a prepared model: downloaded at cold start instead of MODEL_DIR."
    )
    model_cache_dir: Path = Field(
        Path("/tmp/model"), description="Where a model from MODEL_S3_URI is kept (Lambda: only /tmp is writable)."
    )
    served_model_name: str | None = Field(
        None,
        description="Name reported by the API; defaults to the manifest's model id or the directory name.",
    )
    model_name_policy: Literal["any", "served"] = Field(
        "any",
        description="What a request naming another model gets: any (served by the one model, and answered with the "
        "served name, as text-generation-inference and llama-server do: clients that send `tgi`, `default` or a "
        "file name work) or served (a 404 model_not_found for any other name, as vLLM does).",
    )
    engine: EngineName = Field(
        "llamacpp",
        description="llamacpp (a GGUF; continuous batching, prefix caching, structured output, tool calls), "
        "ctranslate2 (int8; needs a converted model; faster on long prompts) or transformers (fp32 reference).",
    )
    llama_cpu_variant: str = Field(
        "auto",
        pattern=r"^[A-Za-z0-9_.]+$",
        description="llama.cpp's CPU backend: auto (the best-scored variant a child process ran correctly on this "
        "CPU, the verdict cached in XDG_CACHE_HOME per CPU and build), or a variant's name to load it unprobed: "
        "zen4, icelake, sapphirerapids, haswell, x64 (plain x86)... GET / shows the one in use and why.",
    )
    compute_type: ComputeType = Field(
        "auto",
        description="CTranslate2 arithmetic: auto (int8 where prepare-model found it keeps quality), int8, float32.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Threads one generation uses. Default: the CPUs the process may use (its affinity, cgroup quota, "
        "and on Lambda the vCPU share of its memory setting, each rounded down); GET / shows the number and why.",
    )
    max_new_tokens_limit: int = Field(512, ge=1, description="Upper bound for max_new_tokens / max_tokens.")
    max_return_sequences: int = Field(8, ge=1, description="Upper bound for num_return_sequences / n.")
    max_prompt_chars: int = Field(8000, ge=1, description="Upper bound for the prompt length in characters.")
    max_batch_tokens: int = Field(
        3072,  # SmolLM2's worst admitted requests peak at 1.31 GB (1.40 GB on transformers), 13 s prompt pass
        ge=1,
        description="Upper bound for sampled sequences x (prompt + max_new_tokens) tokens in one request: "
        "memory and uninterruptible prefill time grow with it (docs/LAMBDA_SIZING.md).",
    )
    max_batch_size: int = Field(
        8,
        ge=1,
        description="Sequences that concurrent requests may share in one engine call (dynamic batching); "
        "1 turns batching off. Lambda serves one request per instance, so there it never batches.",
    )
    prefill_chunk_tokens: int = Field(
        256,
        ge=1,
        description="Step-level engines (continuous batching): prompt tokens read per step, all prompts together. "
        "A long prompt is read over several steps, so running streams wait at most one such chunk per token.",
    )
    prefix_cache_slots: int = Field(
        4,
        ge=0,
        description="Step-level engines: KV slots beyond MAX_BATCH_SIZE, so that ended sequences stay cached for "
        "later prompts sharing their beginning (system prompts, conversation history); any slot no sequence runs "
        "in may hold one. Each slot's KV cache holds KV_SLOT_TOKENS positions at first, growing to min(model "
        "context, MAX_BATCH_TOKENS). 0: no prefix cache.",
    )
    kv_slot_tokens: int = Field(
        0,
        ge=0,
        description="Step-level engines: positions each slot's KV cache holds when the model loads. When a sequence "
        "needs more, every slot's cache doubles (or grows to what it needs), up to min(model context, "
        "MAX_BATCH_TOKENS), and never shrinks. 0: llama.cpp's least, 256, so memory and cold start follow the load; "
        "set it to the longest sequences a steady load holds to spare the moves as it grows.",
    )
    grammar_cache_size: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Structured output: compiled grammars (JSON schemas, regexes, tool sets) kept per instance, the "
        "least recently used dropped first. A cached one costs nothing to reuse; a new one is compiled when its "
        "request arrives (about a millisecond for typical schemas; the first one also indexes the vocabulary).",
    )
    response_store_size: int = Field(
        256,
        ge=0,
        le=100_000,
        description="OpenAI Responses: finished responses (with `store: true`, the default) kept in this instance's "
        "memory for `previous_response_id` and GET /v1/responses/{id}, the least recently used dropped first. Per "
        "instance: on Lambda or behind a load balancer clients send the whole conversation instead. 0: none kept.",
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Larger request bodies get a 413 that names this setting. 1 MiB: room for real-world JSON "
        "Schemas in response_format and tools (a Kubernetes resource's runs past 128 KiB).",
    )
    max_request_seconds: float = Field(25.0, gt=0, description="Time budget for one generation request.")
    gateway_timeout_seconds: float = Field(30.0, gt=0, description="API Gateway's integration timeout.")
    deadline_margin_seconds: float = Field(1.5, ge=0, description="Kept free before a gateway or Lambda deadline.")
    api_key: SecretStr | None = Field(
        None,
        description="Keys a caller must send as `Authorization: Bearer <key>`; several separated by commas. "
        "Unset (and no API_KEY_PARAMETER): the API is open.",
    )
    api_key_parameter: str | None = Field(
        None,
        description="Instead of API_KEY: an SSM SecureString parameter name, or a Secrets Manager secret ARN, "
        "holding the key(s); read per instance and cached for 5 minutes.",
    )
    log_prompts: bool = Field(False, description="Include prompt text in request logs.")
    metrics_enabled: bool = Field(
        default_factory=lambda: not running_on_lambda(),
        description="Serve Prometheus metrics at GET /metrics (docs/METRICS.md); behind the API key when one is set. "
        "Default: on, except under AWS Lambda, where EMF metrics serve and each instance would only count its own.",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS, as a JSON list; empty means closed."
    )


def running_on_lambda() -> bool:
    """Whether this process is an AWS Lambda function (Lambda sets this variable for every function)."""
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (environment is read once)."""
    return Settings()
