"""Loading from MODEL_DIR: GPT-2 and Llama families, and clear failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from distilgpt2_api.generation import GenerationRequest, TextGenerator
from distilgpt2_api.model_loading import ModelLoadError, load_model

from model_factory import build_tiny_llama

REPO = Path(__file__).resolve().parents[1]


def test_tiny_tokenizer_has_a_real_vocabulary(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(tokenizer) > 256
    assert tokenizer.decode(tokenizer("hello world")["input_ids"]) == "hello world"


def test_loads_gpt2_in_eval_mode(model_dir: Path) -> None:
    loaded = load_model(model_dir, torch_threads=1)
    assert loaded.model.config.model_type == "gpt2"
    assert not loaded.model.training
    assert loaded.context_length == loaded.model.config.n_positions
    assert loaded.tokenizer.eos_token_id in loaded.eos_token_ids
    assert torch.get_num_threads() == 1


def test_loads_and_generates_with_a_llama_model(tmp_path: Path) -> None:
    loaded = load_model(build_tiny_llama(tmp_path / "tiny-llama"), torch_threads=1, served_name="my-llama")
    assert loaded.model.config.model_type == "llama"
    assert loaded.name == "my-llama"
    result = TextGenerator(loaded, torch_threads=1).generate_blocking(
        GenerationRequest(prompt="Once upon a time", max_new_tokens=5)
    )
    assert result.prompt_tokens >= 4
    assert 1 <= result.completions[0].completion_tokens <= 5


def test_missing_directory_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as raised:
        load_model(missing, torch_threads=1)
    assert str(missing) in str(raised.value)
    assert "make model" in str(raised.value)


def test_broken_directory_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelLoadError) as raised:
        load_model(tmp_path, torch_threads=1)
    assert str(tmp_path) in str(raised.value)


def _run(args: list[str], model_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODEL_DIR": str(model_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_serve_refuses_to_start_without_a_model(tmp_path: Path) -> None:
    result = _run(["-m", "distilgpt2_api", "serve", "--port", "0"], tmp_path / "absent")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: MODEL_DIR=")
    assert str(tmp_path / "absent") in result.stderr
    assert "Traceback" not in result.stderr


def test_lambda_cold_start_fails_with_the_same_message(tmp_path: Path) -> None:
    # Lambda reports the import error of handler.py; the message must say what to do.
    result = _run(["-c", "import handler"], tmp_path / "absent")
    assert result.returncode != 0
    assert f"MODEL_DIR={tmp_path / 'absent'}" in result.stderr
