"""What every engine shares: the model directory's metadata, the engine contract, load errors.

Nothing here imports torch or transformers, so the fast engine's cold start never pays for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

PREPARE_HINT = "Prepare one with `make model` (or `python -m distilgpt2_api prepare-model`) and point MODEL_DIR at it."


class ModelLoadError(RuntimeError):
    """The model directory is missing or unusable; the message names the path and the fix."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}. {PREPARE_HINT}") from error
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object. {PREPARE_HINT}")
    return data


def _int_ids(value: object) -> set[int]:
    values = value if isinstance(value, list) else [value]
    return {v for v in values if isinstance(v, int) and not isinstance(v, bool)}


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know about a model directory, read from its JSON files."""

    path: Path
    name: str
    context_length: int
    eos_token_ids: frozenset[int]

    @classmethod
    def read(cls, model_dir: Path, served_name: str | None = None) -> ModelInfo:
        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(
                f"MODEL_DIR={model_dir} is not a model directory (no config.json there). {PREPARE_HINT}"
            )
        config = _read_json(config_file)
        context = next(
            (config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx") if isinstance(config.get(k), int)),
            None,
        )
        if context is None:
            raise ModelLoadError(f"cannot tell the context length from {config_file}. {PREPARE_HINT}")
        eos = _int_ids(config.get("eos_token_id"))
        generation_config = model_dir / "generation_config.json"
        if generation_config.is_file():
            eos |= _int_ids(_read_json(generation_config).get("eos_token_id"))
        return cls(
            path=model_dir,
            name=served_name or _manifest_model_id(model_dir) or model_dir.resolve().name,
            context_length=context,
            eos_token_ids=frozenset(eos),
        )


def _manifest_model_id(model_dir: Path) -> str | None:
    manifest = model_dir / "manifest.json"
    if not manifest.is_file():
        return None
    model_id = _read_json(manifest).get("model_id")
    return model_id if isinstance(model_id, str) and model_id else None


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Sampling fields apply only when do_sample is true."""

    prompt: str
    max_new_tokens: int
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k filtering
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    deadline: float | None = None  # time.monotonic() by which generation must have returned


class Engine(Protocol):
    """A loaded model that turns token ids into more token ids."""

    info: ModelInfo

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def close(self) -> None:
        """Release native resources now, before interpreter shutdown; the engine is unusable after."""
        ...

    def generate(
        self, prompt_ids: list[int], request: GenerationRequest, *, sequences: int, max_time: float | None
    ) -> list[list[int]]:
        """New token ids per sequence, ending with an EOS token if the model produced one.

        `sequences` rows (sampled unless greedy); with `max_time` seconds spent, each row stops
        with what it has; `request.seed`, when set, makes sampling reproducible.
        """
        ...
