"""Load a causal language model and its tokenizer from a local directory, once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

PREPARE_HINT = "Prepare one with `make model` (or `python -m distilgpt2_api prepare-model`) and point MODEL_DIR at it."


class ModelLoadError(RuntimeError):
    """The model directory is missing or unusable; the message names the path and the fix."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with what the API reports about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    context_length: int
    eos_token_ids: frozenset[int]


def _served_name(model_dir: Path, override: str | None) -> str:
    if override:
        return override
    manifest = model_dir / "manifest.json"
    if manifest.is_file():
        model_id = json.loads(manifest.read_text()).get("model_id")
        if isinstance(model_id, str) and model_id:
            return model_id
    return model_dir.resolve().name


def _context_length(model: PreTrainedModel) -> int:
    config = model.config
    for attribute in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelLoadError(f"cannot tell the context length of {type(model).__name__} from its config")


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    candidates = model.generation_config.eos_token_id
    ids = set(candidates if isinstance(candidates, list) else [candidates])
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if isinstance(i, int))


def load_model(model_dir: Path, *, torch_threads: int, served_name: str | None = None) -> LoadedModel:
    """Load model and tokenizer from `model_dir` for CPU inference, or raise ModelLoadError."""
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"MODEL_DIR={model_dir} is not a model directory (no config.json there). {PREPARE_HINT}")
    torch.set_num_threads(torch_threads)
    transformers_logging.disable_progress_bar()  # progress bars are noise in service logs
    try:
        # local_files_only: a bad path must fail here, never turn into a Hub download.
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load the model in MODEL_DIR={model_dir}: {error}. {PREPARE_HINT}") from error
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=_served_name(model_dir, served_name),
        context_length=_context_length(model),
        eos_token_ids=_eos_token_ids(model, tokenizer),
    )
