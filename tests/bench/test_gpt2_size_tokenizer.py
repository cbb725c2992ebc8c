"""The benchmark's distilgpt2-shaped model gets a tokenizer of GPT-2's size, with no padding tokens added."""

from __future__ import annotations

import json

from model_factory import EOS, GPT2_VOCAB_SIZE, build_gpt2_size_tokenizer


def test_a_real_bpe_of_gpt2_size_built_the_same_way_every_time() -> None:
    tokenizer = build_gpt2_size_tokenizer()

    assert len(tokenizer) == GPT2_VOCAB_SIZE == 50257
    assert tokenizer.get_added_vocab() == {EOS: tokenizer.eos_token_id}  # EOS only, as in GPT-2's own
    saved = tokenizer.backend_tokenizer.to_str()
    assert len(json.loads(saved)["model"]["merges"]) == 50_000  # + 256 byte symbols + EOS
    ids = tokenizer("Once upon a time")["input_ids"]
    assert len(ids) <= 8 and tokenizer.decode(ids) == "Once upon a time"
    assert build_gpt2_size_tokenizer().backend_tokenizer.to_str() == saved  # deterministic
