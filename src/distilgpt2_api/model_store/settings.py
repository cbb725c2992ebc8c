"""What `prepare-model` reads from the environment: which model to prepare, from where. Never read when serving."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ModelSource = Literal["auto", "hub", "smollm2", "s3", "local"]
MODEL_SOURCES: tuple[str, ...] = get_args(ModelSource)
DEFAULT_MODEL_ID = "distilgpt2"


class PrepareSettings(BaseSettings):
    """MODEL_SOURCE and MODEL_ID; the output directory is the serving MODEL_DIR."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    model_source: ModelSource = Field("auto", description="What `prepare-model` prepares (see docs/MODEL_STORE.md).")
    model_id: str = Field(DEFAULT_MODEL_ID, description="Hugging Face Hub id that `prepare-model` fetches.")
    llama_cpu_variant: str = Field("auto", description="The GGUF gate's llama.cpp CPU backend, as when serving.")
    gguf_type: str = Field(
        "auto",
        description="The GGUF served: auto (the gate's rule: the smallest candidate whose quality passes), or a "
        "candidate to serve whatever its score (shipped, f32, f16, q8_0, q4_k_m); every score is recorded.",
    )
