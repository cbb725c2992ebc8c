"""bench/structured.py on the tiny chat model, every part once: the script runs and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load_script


def test_every_part_writes_the_report(chat_model_dir: Path, tmp_path: Path) -> None:
    structured = load_script("structured")
    argv = ["--model-dir", str(chat_model_dir), "--rounds", "1", "--first-rounds", "1", "--max-tokens", "8"]
    argv += ["--samples", "8", "--free-samples", "8", "--validity-max-tokens", "24", "--free-max-tokens", "8"]
    argv += ["--out", str(tmp_path)]

    assert structured.main(argv) == 0

    results = json.loads((tmp_path / "structured.json").read_text())
    parts = results["parts"]
    for case in ("small", "nested"):
        speed = parts["speed"][case]
        assert speed["constrained"]["requests"] == speed["free"]["requests"] == 1
        assert speed["free"]["completion_tokens"] > 0 and speed["constrained"]["completion_tokens"] > 0
        assert set(parts["compile"][case]) >= {"new schema", "cached schema", "no schema", "compile_ms"}
        assert parts["compile"]["in process"][case]["compile_ms"] > 0
    assert parts["first"]["rounds"] == 1 and parts["first"]["first_structured_ttft_ms"] > 0
    assert set(parts["validity"]) == set(structured.VALIDITY_CASES)
    for figures in parts["validity"].values():
        constrained = figures["constrained"]
        assert constrained["answers"] == 8 == constrained["stop"] + constrained["length"]
        assert constrained["stopped_valid"] == constrained["stop"]  # random weights, yet every finished answer is valid
        assert figures["free"]["answers"] == 8
    assert any(t["target"].startswith("constrained answers ending") and t["passed"] for t in results["targets"])
    markdown = (tmp_path / "STRUCTURED.md").read_text()
    assert "## Validity: sampled answers" in markdown and "## What else ran" in markdown

    assert structured.main(["--model-dir", str(chat_model_dir), "--render", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "STRUCTURED.md").read_text() == markdown
