"""Tiny random-weight causal LMs with a real byte-level BPE tokenizer, for tests that must not download anything.

Each builder writes a complete model directory (config, safetensors weights, tokenizer, manifest.json)
in about a second.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from distilgpt2_api.model_store import write_manifest

CORPUS = Path(__file__).parent / "data" / "corpus.txt"
EOS = "<|endoftext|>"


def build_tokenizer(vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE trained on tests/data/corpus.txt, with EOS as bos/eos."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tokenizer.train([str(CORPUS)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS)


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path, model_id: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_manifest(path, source="local", model_id=model_id)
    return path


def build_tiny_gpt2(path: Path) -> Path:
    """A 2-layer GPT-2 (n_embd 64) with random weights (seed 0) in `path`."""
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(0)
    return _save(GPT2LMHeadModel(config), tokenizer, path, "tiny-gpt2")


def build_tiny_llama(path: Path) -> Path:
    """A 2-layer Llama (hidden 64, 4 heads, 2 KV heads) with random weights (seed 0) in `path`."""
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    return _save(_tiny_llama(tokenizer, bos_id=eos_id, eos_id=eos_id), tokenizer, path, "tiny-llama")


def _tiny_llama(tokenizer: PreTrainedTokenizerFast, *, bos_id: int, eos_id: int) -> LlamaForCausalLM:
    """A 2-layer Llama (hidden 64, 4 heads, 2 KV heads) with random weights (seed 0) for `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


CHATML = (  # the ChatML template SmolLM2 and many others use, with a system prompt by default
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_chat_llama(path: Path) -> Path:
    """A tiny Llama chat model: ChatML special tokens, `<|im_end|>` as its end of turn, the template saved with it."""
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHATML
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = _tiny_llama(tokenizer, bos_id=tokenizer.convert_tokens_to_ids(EOS), eos_id=end_of_turn)
    return _save(model, tokenizer, path, "tiny-chat-llama")
