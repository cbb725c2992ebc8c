"""bench/bench.py end to end in --quick mode: every section runs once on the tiny model; no timing thresholds."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load_script


def test_quick_bench_writes_every_section(model_dir: Path, tmp_path: Path) -> None:
    # model_dir: the session's tiny GPT-2, already converted; building another would only add time.
    assert load_script("bench").main(["--quick", "--out", str(tmp_path), "--quick-model", str(model_dir)]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "memory_bandwidth", "models", "targets"} <= results.keys()
    assert results["quick"] is True
    assert results["machine"]["cpu_model"] and results["memory_bandwidth"]["copy_gbps_2_threads"] > 0

    model = results["models"]["tiny"]
    assert {"systems", "bounds", "quality", "alternatives", "lambda_sizing", "weights"} <= model.keys()
    assert set(model["systems"]) == {"pipeline", "llamacpp", "ctranslate2", "transformers"}
    for figures in model["systems"].values():
        assert {"interpreter_s", "import_s", "load_s", "first_response_s", "total_s"} == figures["cold_start"].keys()
        assert {"greedy", "sampled"} <= figures["warm"].keys()
        assert figures["warm"]["greedy"]["tokens"] > 0 and figures["peak_rss_mb"] > 0
    for figures in model["systems"].values():  # pyperf's medians: every stage took time, the parts add up
        cold = figures["cold_start"]
        assert cold["interpreter_s"] > 0 and cold["total_s"] > 0 and figures["cold_start_totals_s"]
        parts = sum(v for k, v in cold.items() if k != "total_s")
        assert abs(parts - cold["total_s"]) < 1e-6
    for engine in ("llamacpp", "ctranslate2"):
        assert {"greedy", "sampled", "sampled_seeded", "greedy_via_handler"} <= model["systems"][engine]["warm"].keys()
        assert model["systems"][engine]["warm"]["greedy_via_handler"]["median_s"] > 0
    assert model["systems"]["llamacpp"]["compute"] == "F32 GGUF"  # the tiny model's converter output, ungated
    assert model["bounds"]["llamacpp"]["bytes_per_token"] == 4 * model["weights"]["params"]
    assert model["systems"]["pipeline"]["per_request_pipeline_s"] > 0

    quality = model["quality"]
    assert {"transformers_float32", "ctranslate2_int8"} <= quality["perplexity"].keys()
    assert "identical" in quality["greedy"]["ctranslate2_int8"]
    alternatives = model["alternatives"]
    assert {"ct2", "engine_threads", "torch_dynamic_quantization", "bf16"} <= alternatives.keys()
    assert {row["threads"] for row in alternatives["engine_threads"]} == {1, 2}
    assert [row["memory_mb"] for row in model["lambda_sizing"]["rows"]]
    assert {t["target"] for t in results["targets"] if t["model"] == "tiny"}

    markdown = (tmp_path / "RESULTS.md").read_text()
    for heading in (
        "## Machine",
        "### Cold start",
        "### Warm requests",
        "### Alternatives",
        "### Quality",
        "## Targets",
    ):
        assert heading in markdown
    assert "## Lambda sizing" in markdown
