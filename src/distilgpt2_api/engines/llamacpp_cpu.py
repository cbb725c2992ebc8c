"""Which of llama.cpp's CPU variants this process runs, proven in a child process before any of its kernels runs here.

The portable build ships one CPU backend per x86 (or Arm) generation, `libggml-cpu-<variant>.so`. ggml itself loads
the one whose score (the CPU extensions CPUID reports) is highest. CPUID can promise what the kernel cannot run: on
an Intel Xeon with AMX under Firecracker, the `sapphirerapids` variant's AMX kernels die with SIGILL at the first
quantized matrix product, and no handler can turn that into an error. So `choose` has a child process
(llamacpp_cpu_probe.py) run each variant's kernels, best score first; a variant whose child dies (or computes wrong
answers) is skipped with its reason, and the next one is tried. The verdict is cached per CPU and build
(`XDG_CACHE_HOME/distilgpt2-api/`, /tmp/.cache on Lambda), so only an instance's first cold start pays for it.

LLAMA_CPU_VARIANT pins a variant by name (`zen4`, `icelake`, `x64` for the plain x86 path...) with no probe: for an
operator who knows better.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from distilgpt2_api.engines import llamacpp_cpu_probe
from distilgpt2_api.engines.base import ModelLoadError, cpu_identity, cpu_name

AUTO = "auto"
PREFIX = "libggml-cpu"  # libggml-cpu-<variant>.so; a build with a single CPU backend has libggml-cpu.so
SINGLE = "cpu"  # the variant name of that single backend
PROBE_VERSION = 1  # part of the cache key: a new probe proves every CPU again
PROBE_THREADS = 2  # AMX's fault was on a worker thread: the probe always runs several
PROBE_TIMEOUT_SECONDS = 60.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """What happened to one variant: passed, failed (it ran, but not correctly or not here) or crashed."""

    variant: str
    outcome: str
    reason: str = ""


@dataclass(frozen=True)
class CpuVariant:
    """The variant this process loads, and why."""

    name: str
    path: Path
    chosen_by: str  # "probe", "cached probe" or "LLAMA_CPU_VARIANT"
    attempts: tuple[Attempt, ...] = ()  # every variant tried before it (best score first), then itself
    seconds: float = 0.0  # what choosing cost this process

    @property
    def reason(self) -> str:
        if not self.attempts:
            return self.chosen_by
        tried = "; ".join(f"{a.variant} {a.outcome}" + (f" ({a.reason})" if a.reason else "") for a in self.attempts)
        return f"{self.chosen_by}: {tried}"


def variant_files(directories: Sequence[Path]) -> dict[str, Path]:
    """The CPU backends in the first of `directories` that has any: {variant name: library}."""
    for directory in directories:
        files = {_variant_name(path): path for path in sorted(directory.glob(f"{PREFIX}*")) if path.is_file()}
        if files:
            return files
    return {}


def _variant_name(path: Path) -> str:
    stem = path.name.split(".")[0]  # libggml-cpu-zen4.so -> libggml-cpu-zen4
    return stem.removeprefix(f"{PREFIX}-") if stem != PREFIX else SINGLE


def choose(
    files: Mapping[str, Path], ggml_library: Path, *, pin: str = AUTO, cache_dir: Path | None = None
) -> CpuVariant:
    """The variant to load: `pin` when it names one, else the best-scored one a child process ran correctly.
    Raises ModelLoadError when none can run (or `pin` names no variant of this build)."""
    if not files:
        raise ModelLoadError("llama.cpp found no CPU backend (libggml-cpu*.so) next to llama-cpp-python")
    if pin != AUTO:
        if pin not in files:
            raise ModelLoadError(f"LLAMA_CPU_VARIANT={pin}: this build has {', '.join(sorted(files))} (or auto)")
        return CpuVariant(pin, files[pin], chosen_by="LLAMA_CPU_VARIANT")
    started = time.perf_counter()
    cache = cache_dir / f"llamacpp-cpu-{_cache_key(files)}.json" if cache_dir else None
    cached = _read_cache(cache, files)
    if cached is not None:
        return replace(cached, seconds=time.perf_counter() - started)
    attempts = _probe(files, ggml_library)
    chosen = next((a.variant for a in attempts if a.outcome == "passed"), None)
    if chosen is None:
        raise ModelLoadError(
            "no llama.cpp CPU variant runs on this CPU: "
            + "; ".join(f"{a.variant} {a.outcome} ({a.reason})" for a in attempts)
        )
    variant = CpuVariant(chosen, files[chosen], "probe", tuple(attempts), time.perf_counter() - started)
    if cache is not None:
        _write_cache(cache, variant)
    return variant


def _probe(files: Mapping[str, Path], ggml_library: Path) -> list[Attempt]:
    """Run the probe in child processes until one reports a variant that passed (or none is left): a child that
    dies takes the variant it was running with it, and the next child starts without that one."""
    results: dict[str, Attempt] = {}
    left = dict(files)
    while left:
        lines, returncode, error = _run_child(left, ggml_library)
        running: tuple[str, str] | None = None  # (variant, stage) begun and not finished
        for event in _events(lines):
            if event["event"] == "begin":
                running = (event["variant"], event["stage"])
            elif event["event"] == "result":
                results[event["variant"]] = Attempt(
                    event["variant"], "passed" if event["ok"] else "failed", event.get("reason", "")
                )
                running = None
        if returncode == 0 or running is None:
            break  # a variant passed, or every one was tried
        variant, stage = running
        results[variant] = Attempt(variant, "crashed", f"{error} while probing {stage}")
        logger.warning("llama.cpp CPU variant %s cannot run here: %s while probing %s", variant, error, stage)
        del left[variant]
    return list(results.values())  # in the order they were tried (best score first): the one that passed last


def _run_child(files: Mapping[str, Path], ggml_library: Path) -> tuple[list[str], int, str]:
    """The probe's output lines, its exit status and, when it died, how."""
    command = [
        sys.executable, "-I", "-S", llamacpp_cpu_probe.__file__, str(ggml_library), str(PROBE_THREADS),
        *(f"{name}={path}" for name, path in files.items()),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as timeout:
        output = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else timeout.stdout or ""
        return output.splitlines(), -signal.SIGKILL, f"no answer within {PROBE_TIMEOUT_SECONDS:.0f} s"
    lines = done.stdout.splitlines()
    if done.returncode < 0:
        return lines, done.returncode, f"killed by {signal.Signals(-done.returncode).name}"
    if done.returncode not in (0, 1):
        last = done.stderr.strip().splitlines()[-1:] or ["no message"]
        if not any(event["event"] == "begin" for event in _events(lines)):
            raise ModelLoadError(f"the llama.cpp CPU probe failed before trying any variant: {last[0]}")
        return lines, done.returncode, f"exited with status {done.returncode}: {last[0]}"
    return lines, done.returncode, ""


def _events(lines: list[str]) -> list[dict[str, Any]]:
    """The probe's own lines (a library may print to stdout too)."""
    return [json.loads(line) for line in lines if line.startswith('{"event": ')]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distilgpt2-api"


def _cache_key(files: Mapping[str, Path]) -> str:
    build = sorted((name, path.stat().st_size, path.stat().st_mtime_ns) for name, path in files.items())
    text = json.dumps([PROBE_VERSION, cpu_identity(), build])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cache(path: Path | None, files: Mapping[str, Path]) -> CpuVariant | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        attempts = tuple(Attempt(**attempt) for attempt in data["attempts"])
        name = data["variant"]
        return CpuVariant(name, files[name], "cached probe", attempts) if name in files else None
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring the llama.cpp CPU probe's cache %s: %s", path, error)
        return None


def _write_cache(path: Path, variant: CpuVariant) -> None:
    data = {"variant": variant.name, "attempts": [asdict(a) for a in variant.attempts], "cpu": cpu_name()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as file:
            json.dump(data, file)
        os.replace(file.name, path)
    except OSError as error:  # a read-only disk: the next process probes again
        logger.warning("cannot cache the llama.cpp CPU probe's verdict in %s: %s", path, error)
