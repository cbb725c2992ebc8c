"""Convert a GGUF checkpoint into a plain transformers directory (float32 safetensors + tokenizer), or into its
config and tokenizer alone (what the llama.cpp engine reads beside the GGUF itself)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from gguf import GGUFReader

from .errors import ModelStoreError


def _check_readable(gguf_path: Path) -> None:
    if not gguf_path.is_file():
        raise ModelStoreError(f"GGUF file {gguf_path} does not exist")
    try:
        GGUFReader(gguf_path)  # parses header, metadata and tensor index (memory-mapped, cheap)
    except Exception as error:  # the reader fails in many ways (ValueError, struct/numpy errors) on bad input
        raise ModelStoreError(f"unreadable GGUF file {gguf_path}: {error}") from error


def convert_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantize `gguf_path` with transformers and save it to `dest` as a regular model directory."""
    _check_readable(gguf_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy; only this source needs it here

    folder, name = gguf_path.parent, gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelStoreError(f"transformers cannot load GGUF file {gguf_path}: {error}") from error
    # A GGUF-loaded model keeps its gguf quantizer and refuses save_pretrained, so move the (already
    # dequantized) weights into a plain model built from the same config minus quantization_config.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def convert_gguf_metadata(gguf_path: Path, dest: Path) -> None:
    """Save `gguf_path`'s config, generation config and tokenizer (tokenizer.json, tokenizer_config.json, chat
    template) to `dest` as `convert_gguf` does, without reading, dequantizing or writing any weights."""
    _check_readable(gguf_path)
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder, name = gguf_path.parent, gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelStoreError(f"transformers cannot read GGUF file {gguf_path}: {error}") from error
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    if architecture:  # as a model's save_pretrained records it
        config.architectures = [architecture]
    config.save_pretrained(dest)
    GenerationConfig.from_model_config(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
