"""Tiny random-weight causal LMs with a real byte-level BPE tokenizer, for tests that must not download anything.

Each builder writes a complete model directory (config, safetensors weights, tokenizer, manifest.json)
in about a second. `build_gpt2_size_tokenizer` is a BPE of GPT-2's own size, for the benchmarks.
`build_tiny_bert` is a sentence-embedding BertModel (WordPiece, sentence-transformers' pooling), which only embeds.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
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
    tokenizer, trainer = _byte_level_bpe(vocab_size)
    tokenizer.train([str(CORPUS)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS)


def _byte_level_bpe(vocab_size: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained GPT-2 style byte-level BPE (every byte encodable, EOS its one special token) and its trainer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=alphabet, show_progress=False
    )
    return tokenizer, trainer


GPT2_VOCAB_SIZE = 50257  # 256 byte symbols + 50,000 merges + <|endoftext|>, as GPT-2 and distilgpt2


def _pseudo_english(lines: int, seed: int) -> Iterator[str]:
    """tests/data/corpus.txt, then `lines` lines of made-up words from a letter model of its words (each letter
    drawn given the two before it; random.Random(seed)): enough distinct words for 50,000 merges, in about 2 s."""
    text = CORPUS.read_text()
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    following: dict[str, list[str]] = defaultdict(list)
    for word in (w for w in words if w.isalpha()):
        padded = "^^" + word + "$"
        for i in range(len(padded) - 2):
            following[padded[i : i + 2]].append(padded[i + 2])
    rng = random.Random(seed)

    def made_up_word() -> str:
        context, letters = "^^", ""
        while len(letters) < 14:
            letter = rng.choice(following[context])
            if letter == "$":
                break
            letters += letter
            context = context[1] + letter
        return letters

    yield text
    for _ in range(lines):
        yield " ".join(made_up_word() for _ in range(20))


def build_gpt2_size_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE of GPT-2's size: 256 byte symbols, 50,000 merges and EOS, no added tokens
    beyond EOS. Trained offline on tests' corpus plus made-up words, deterministically (same seed, same merges)."""
    tokenizer, trainer = _byte_level_bpe(GPT2_VOCAB_SIZE)
    tokenizer.train_from_iterator(_pseudo_english(lines=20_000, seed=0), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS)
    if len(wrapped) != GPT2_VOCAB_SIZE or set(wrapped.get_added_vocab()) != {EOS}:
        raise RuntimeError(f"expected {GPT2_VOCAB_SIZE} tokens with EOS the only added one, got {len(wrapped)}")
    return wrapped


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path, model_id: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_manifest(path, source="local", model_id=model_id)
    return path


TINY_GPT2: dict[str, Any] = {"n_positions": 256, "n_embd": 64, "n_layer": 2, "n_head": 2}
TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def build_tiny_gpt2(path: Path) -> Path:
    """A 2-layer GPT-2 (n_embd 64) with random weights (seed 0) in `path`."""
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=eos_id, eos_token_id=eos_id, **TINY_GPT2)
    torch.manual_seed(0)
    return _save(GPT2LMHeadModel(config), tokenizer, path, "tiny-gpt2")


def build_tiny_llama(path: Path) -> Path:
    """A 2-layer Llama (hidden 64, 4 heads, 2 KV heads) with random weights (seed 0) in `path`."""
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    return _save(_tiny_llama(tokenizer, bos_id=eos_id, eos_id=eos_id), tokenizer, path, "tiny-llama")


def _tiny_llama(
    tokenizer: PreTrainedTokenizerFast, *, bos_id: int, eos_id: int, context: int = 256
) -> LlamaForCausalLM:
    """A 2-layer Llama (hidden 64, 4 heads, 2 KV heads) with random weights (seed 0) for `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=context,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        **TINY_LLAMA,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


CHATML = (  # the ChatML template SmolLM2 and many others use, with a system prompt by default
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_chat_llama(path: Path, context: int = 256) -> Path:
    """A tiny Llama chat model: ChatML special tokens, `<|im_end|>` as its end of turn, the template saved with it."""
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHATML
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = _tiny_llama(tokenizer, bos_id=tokenizer.convert_tokens_to_ids(EOS), eos_id=end_of_turn, context=context)
    return _save(model, tokenizer, path, "tiny-chat-llama")


# --- A sentence-embedding model (embeddings only: no language-model head) ---

Pooling = Literal["cls", "mean"]
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
BERT_CONTEXT = 128


def build_wordpiece_tokenizer(vocab_size: int = 500) -> PreTrainedTokenizerFast:
    """BERT's uncased WordPiece, trained on the corpus, adding [CLS] ... [SEP] around each text."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL), show_progress=False)
    tokenizer.train([str(CORPUS)], trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tiny_bert(path: Path, pooling: Pooling = "cls") -> Path:
    """A 2-layer BertModel (hidden 32, random weights, seed 0) as a sentence-transformers model pooling by
    `pooling`: what all-MiniLM-L6-v2 (mean) or a CLS-pooled embedding model look like on the Hub."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_wordpiece_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=BERT_CONTEXT, **TINY_BERT)
    BertModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": TINY_BERT["hidden_size"],
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
            }
        )
    )
    return path


def prepared_tiny_bert(root: Path, pooling: Pooling = "cls") -> Path:
    """The tiny BERT through `prepare-model --source local`, as a MODEL_DIR: its GGUF, manifest and pooling."""
    from distilgpt2_api.model_store.prepare import prepare_model  # the prepare path's imports: only when used

    source = build_tiny_bert(root / f"tiny-bert-{pooling}-source", pooling)
    output = root / f"tiny-bert-{pooling}"
    prepare_model("local", output, model_id=str(source))
    return output


def reference_embedding(model_dir: Path, token_ids: list[int], pooling: Pooling) -> torch.Tensor:
    """What sentence-transformers computes: transformers' last hidden states pooled, normalised to length 1."""
    model = BertModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        states = model(torch.tensor([token_ids])).last_hidden_state[0]
    pooled = states[0] if pooling == "cls" else states.mean(dim=0)
    return pooled / pooled.norm()
