"""bench/step_loop.py on the tiny model, in the parts that need no llama-server: determinism and cold start."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench_scripts import load_script


def test_determinism_and_cold_start_parts_write_the_report(model_dir: Path, tmp_path: Path) -> None:
    step_loop = load_script("step_loop")
    argv = ["--llama-server", sys.executable, "--smollm2-dir", str(model_dir), "--distil-dir", str(model_dir)]
    argv += ["--parts", "determinism,cold", "--rounds", "1", "--out", str(tmp_path)]

    assert step_loop.main(argv) == 0

    results = json.loads((tmp_path / "step_loop.json").read_text())
    for name in ("smollm2", "distil"):  # both given the tiny model here
        determinism = results["parts"]["determinism"][name]
        assert determinism["prompts"] == 100 and 0 <= determinism["differing"] <= 100
    cold = results["parts"]["cold"]["distil"]
    assert set(cold) == {"distil ours-llamacpp", "distil ours-ctranslate2"}  # the tiny model has no Q8_0 GGUF
    for figures in cold.values():
        assert figures["spawn_to_ready_s"] > 0 and figures["cold_start_header_ms"] > 0
        assert figures["peak_rss_mb"] >= figures["rss_after_load_mb"] > 0
    assert {t["target"] for t in results["targets"]} >= {"greedy answers alone vs 8 concurrent, smollm2: differing"}
    markdown = (tmp_path / "STEP_LOOP.md").read_text()
    assert "## Greedy determinism under batching" in markdown and "## Cold start and memory, distil" in markdown
    assert "## What else ran" in markdown
