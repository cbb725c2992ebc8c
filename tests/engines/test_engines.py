"""Engines: both keep one contract on GPT-2 and Llama models; the fast one never imports torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from distilgpt2_api.core import sequence
from distilgpt2_api.core.batch import BatchScheduler
from distilgpt2_api.core.request import GenerationRequest, SamplingParams
from distilgpt2_api.engines import Engine, ModelInfo, ModelLoadError, load_engine
from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR, QUALITY_FILE
from distilgpt2_api.model_store.convert import COMPUTE_TYPES, QUALITY_TOLERANCE, convert_for_ctranslate2

from model_factory import build_tiny_llama
from slowdown import slow_down

REPO = Path(__file__).resolve().parents[2]


def test_tiny_tokenizer_has_a_real_vocabulary(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(tokenizer) > 256
    assert tokenizer.decode(tokenizer("hello world")["input_ids"]) == "hello world"


def test_model_info_reads_the_directory(model_dir: Path) -> None:
    info = ModelInfo.read(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    assert info.name == "tiny-gpt2"
    assert info.context_length == config["n_positions"]
    assert config["eos_token_id"] in info.eos_token_ids
    assert ModelInfo.read(model_dir, "custom").name == "custom"


SAMPLING_FIELDS = set(SamplingParams.__dataclass_fields__)


def _generate(engine: Engine, **fields: Any) -> list[tuple[str, str, int]]:
    sampling = SamplingParams(**{k: v for k, v in fields.items() if k in SAMPLING_FIELDS})
    rest = {k: v for k, v in fields.items() if k not in SAMPLING_FIELDS}
    request = GenerationRequest(**{"prompt": "Once upon a time", "max_new_tokens": 12, **rest}, sampling=sampling)
    result = BatchScheduler(engine).generate_blocking(request)
    return [(c.text, c.finish_reason, c.completion_tokens) for c in result.completions]


def test_greedy_is_deterministic(engine: Engine) -> None:
    first = _generate(engine)
    assert first == _generate(engine)
    ((text, reason, tokens),) = first
    assert reason in ("length", "eos")
    assert tokens == 12 if reason == "length" else tokens <= 12


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    fields = {"do_sample": True, "n": 3, "top_k": 0}
    assert _generate(engine, **fields, seed=11) == _generate(engine, **fields, seed=11)
    assert _generate(engine, **fields, seed=11) != _generate(engine, **fields, seed=12)


def test_stop_string_stops_generation(engine: Engine) -> None:
    fields = {"do_sample": True, "seed": 5, "max_new_tokens": 40}
    ((free, _, free_tokens),) = _generate(engine, **fields)
    stop = next(free[i : i + 2] for i in range(1, len(free) // 2) if free[i : i + 2].isascii())
    ((text, reason, tokens),) = _generate(engine, **fields, stop=(stop,))
    assert (text, reason) == (free[: free.find(stop)], "stop")
    assert tokens < free_tokens


def test_time_budget_returns_what_it_has(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_down(engine, monkeypatch)
    ((_, reason, tokens),) = _generate(engine, max_new_tokens=200, deadline=time.monotonic() + 0.5)
    assert reason == "time_limit"
    assert 1 <= tokens < 200


def test_engines_run_llama_models(tmp_path: Path) -> None:
    model_dir = build_tiny_llama(tmp_path / "tiny-llama")
    convert_for_ctranslate2(model_dir)
    for name in ("ctranslate2", "transformers"):
        engine = load_engine(model_dir, name, threads=1, served_name="my-llama")  # type: ignore[arg-type]
        assert engine.info.name == "my-llama"
        result = BatchScheduler(engine).generate_blocking(
            GenerationRequest(prompt="Once upon a time", max_new_tokens=5)
        )
        assert result.prompt_tokens >= 4
        assert 1 <= result.completions[0].completion_tokens <= 5


def test_missing_directory_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as raised:
        load_engine(missing, "ctranslate2", threads=1)
    assert str(missing) in str(raised.value)
    assert "make model" in str(raised.value)


def test_broken_directory_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_positions": 64}')
    for name in ("ctranslate2", "transformers"):
        with pytest.raises(ModelLoadError) as raised:
            load_engine(tmp_path, name, threads=1)  # type: ignore[arg-type]
        assert str(tmp_path) in str(raised.value)
    with pytest.raises(ModelLoadError, match="ENGINE=transformers"):
        load_engine(tmp_path, "ctranslate2", threads=1)


def _run(args: list[str], model_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "MODEL_DIR": str(model_dir), "PYTHONPATH": pythonpath, **env}
    return subprocess.run(
        [sys.executable, *args], env=environment, capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_fast_engine_never_imports_torch(model_dir: Path) -> None:
    probe = "import sys, distilgpt2_api.app; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = _run(["-c", probe], model_dir, ENGINE="ctranslate2")
    assert result.returncode == 0, result.stderr
    *logs, imported = result.stdout.strip().splitlines()  # the service logs JSON lines on stdout ("engine loaded")
    assert imported == "[]" and all(json.loads(line)["service"] == "distilgpt2-api" for line in logs)


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


def test_prepare_records_the_compute_type_that_keeps_quality(model_dir: Path) -> None:
    report = json.loads((model_dir / CT2_SUBDIR / QUALITY_FILE).read_text())
    reference, scores = report["reference_perplexity"], report["perplexity"]
    assert set(scores) == set(COMPUTE_TYPES)
    agrees = report["greedy_probe_agrees"]
    assert set(agrees) == set(COMPUTE_TYPES) and report["probe_tokens"] >= 1
    fitting = [c for c in COMPUTE_TYPES if agrees[c] and scores[c] <= reference * (1 + QUALITY_TOLERANCE)]
    assert report["compute_type"] == (fitting[0] if fitting else COMPUTE_TYPES[-1])


def test_engine_runs_the_prepared_compute_type(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "model")
    quality = copy / CT2_SUBDIR / QUALITY_FILE
    quality.write_text(json.dumps({**json.loads(quality.read_text()), "compute_type": "float32"}))
    assert load_engine(copy, "ctranslate2", threads=1).compute_type == "float32"  # type: ignore[attr-defined]
    assert load_engine(copy, "ctranslate2", threads=1, compute_type="int8").compute_type == "int8"  # type: ignore[attr-defined]


def test_a_failing_stop_check_is_an_error_not_a_crash(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The per-token callback runs on CTranslate2's own thread, where an exception would abort the process.
    engine = load_engine(model_dir, "ctranslate2", threads=1)

    def broken(text: str, stop: tuple[str, ...]) -> tuple[str, str] | None:
        raise ValueError("broken stop check")

    monkeypatch.setattr(sequence, "cut_at_stop", broken)
    with pytest.raises(ValueError, match="broken stop check"):
        _generate(engine, stop=("x",))


def test_top_k_beyond_the_vocabulary_samples_from_everything(engine: Engine) -> None:
    huge = _generate(engine, do_sample=True, seed=4, top_k=10**5)
    assert huge == _generate(engine, do_sample=True, seed=4, top_k=0)
