"""Inference engines. Each is imported only when chosen, so one never pays for another's imports."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from distilgpt2_api.engines.base import Engine, ModelInfo, ModelLoadError, TextTokenizer

EngineName = Literal["ctranslate2", "transformers"]
ComputeType = Literal["auto", "int8", "float32"]  # CTranslate2 arithmetic; auto = chosen at prepare time

__all__ = ["ComputeType", "Engine", "EngineName", "ModelInfo", "ModelLoadError", "TextTokenizer", "load_engine"]


def load_engine(
    model_dir: Path,
    engine: EngineName,
    *,
    threads: int,
    served_name: str | None = None,
    compute_type: ComputeType = "auto",
) -> Engine:
    """Load the model in `model_dir` with `engine`, or raise ModelLoadError."""
    info = ModelInfo.read(model_dir, served_name)
    if engine == "ctranslate2":
        from distilgpt2_api.engines.ctranslate2_engine import CTranslate2Engine

        return CTranslate2Engine(info, threads=threads, compute_type=compute_type)
    from distilgpt2_api.engines.transformers_engine import TransformersEngine

    return TransformersEngine(info, threads=threads)
