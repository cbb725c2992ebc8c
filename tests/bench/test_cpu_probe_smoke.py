"""bench/cpu_probe.py on the tiny model, one round: the probe's cost at a cold start and the variants' speeds."""

from __future__ import annotations

import json
from pathlib import Path

from distilgpt2_api.engines.llamacpp_engine import load_cpu_backend

from bench_scripts import load_script


def test_one_round_writes_every_figure(model_dir: Path, tmp_path: Path) -> None:
    assert load_script("cpu_probe").main(["--model-dir", str(model_dir), "--rounds", "1", "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "cpu_probe.json").read_text())
    assert results["variant"] == load_cpu_backend().name  # what this process's engines run: the probe's choice
    assert set(results["figures"]) == {"pinned", "uncached", "cached"}
    uncached, cached = results["figures"]["uncached"], results["figures"]["cached"]
    assert uncached["probe_s"] > 0 and cached["probe_s"] < uncached["probe_s"]
    chosen = results["speeds"][results["variant"]]
    assert set(chosen) == {"1", "2"} and all(f["same_answer_as_chosen"] for f in chosen.values())
    for by_threads in results["speeds"].values():
        for f in by_threads.values():
            assert f["prompt_256_tok_s"] > 0 and f["prompt_32_tok_s"] > 0 and f["decode_tok_s"] > 0
    report = (tmp_path / "CPU_PROBE.md").read_text()
    assert f"The probe chose **{results['variant']}**" in report and "| cached |" in report
