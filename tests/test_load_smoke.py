"""bench/load.py end to end, briefly: the tiny model under uvicorn, 4 clients for 3 seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

LOAD_SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "load.py"


def load_bench() -> ModuleType:
    # bench/ is a folder of scripts, not a package: import the file itself.
    spec = importlib.util.spec_from_file_location("bench_load", LOAD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_load_run_reports_every_route_without_errors(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    exit_code = load_bench().main(
        ["--model-dir", str(model_dir), "--clients", "4", "--duration", "3", "--json", str(out)]
    )
    report = json.loads(out.read_text())

    assert report["errors"] == 0, report["error_samples"]
    # Memory growth over 3 s is noise, so the exit code may be 1 for that reason alone, never for errors.
    assert exit_code in (0, 1)
    assert report["requests"] > 0 and report["throughput_rps"] > 0
    routes = {"overall", "GET /", "GET /{prompt}", "POST /generate", "POST /v1/completions"}
    assert set(report["latency"]) == routes
    for figures in report["latency"].values():
        assert figures["requests"] > 0
        assert {"p50_ms", "p95_ms", "p99_ms"} <= figures.keys()
    assert report["rss"]["start_bytes"] > 0 and report["rss"]["end_bytes"] > 0
    assert "growth_pct" in report["rss"]
