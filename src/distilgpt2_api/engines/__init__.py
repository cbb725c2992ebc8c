"""Inference engines. Each is imported only when chosen, so one never pays for another's imports."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from distilgpt2_api.engines.base import Engine, ModelInfo, ModelLoadError, StepEngine, TextTokenizer

EngineName = Literal["ctranslate2", "transformers", "llamacpp"]
ComputeType = Literal["auto", "int8", "float32"]  # CTranslate2 arithmetic; auto = chosen at prepare time

__all__ = [
    "ComputeType",
    "Engine",
    "EngineName",
    "ModelInfo",
    "ModelLoadError",
    "StepEngine",
    "TextTokenizer",
    "load_engine",
]


def load_engine(
    model_dir: Path,
    engine: EngineName,
    *,
    threads: int,
    served_name: str | None = None,
    compute_type: ComputeType = "auto",
    slots: int = 1,
    context: int | None = None,
    slot_tokens: int | None = None,
    cpu_variant: str = "auto",
) -> Engine | StepEngine:
    """Load the model in `model_dir` with `engine`, or raise ModelLoadError.

    llamacpp is a StepEngine, driven a step at a time by core/loop.py, holding `slots` sequences' KV caches of
    up to `context` positions each (default: the model's context), `slot_tokens` each at first (default: the
    least; they grow when a sequence needs more); the others generate whole requests (`slots`, `context` and
    `slot_tokens` do not apply to them). `cpu_variant` pins llama.cpp's CPU backend (`auto`: one proven to run).
    """
    info = ModelInfo.read(model_dir, served_name)
    if engine == "llamacpp":
        from distilgpt2_api.engines.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(
            info, threads=threads, slots=slots, context=context, slot_tokens=slot_tokens, cpu_variant=cpu_variant
        )
    if engine == "ctranslate2":
        from distilgpt2_api.engines.ctranslate2_engine import CTranslate2Engine

        return CTranslate2Engine(info, threads=threads, compute_type=compute_type)
    from distilgpt2_api.engines.transformers_engine import TransformersEngine

    return TransformersEngine(info, threads=threads)
