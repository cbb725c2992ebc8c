"""What every benchmark here shares: the service under uvicorn on loopback, pyperf, the machine, the reports.

`Service` starts `uvicorn distilgpt2_api.api:app` (or any other server command) on 127.0.0.1 and a free port,
waits until it answers, and stops it. Process-level timing (fresh processes, warmups, statistics) is pyperf's:
`pyperf_values` runs its command line and reads what it wrote. `machine_info` says which CPU the figures came
from; `OthersLoad` how much CPU other processes took meanwhile. `render` fills a report's Jinja template.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import jinja2

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SRC = ROOT / "src"
HOST = "127.0.0.1"  # loopback only: nothing here sends requests anywhere else
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
# Written for these benchmarks (not the prepare-time quality text), ~150 words of plain English.
PARAGRAPH = (
    "Every spring, the small harbour town prepares for the return of the fishing boats. Families gather on the "
    "stone pier early in the morning, carrying flasks of tea and warm bread wrapped in cloth. The children race "
    "along the sea wall, counting the masts as they appear on the horizon, while their grandparents tell stories "
    "about storms that kept the fleet away for weeks. When the first boat finally ties up, the crew hands baskets "
    "of fish to the waiting buyers, and the market square fills with noise. Shopkeepers open their doors, the "
    "baker sells out before noon, and the old church bell rings to mark the occasion. By evening, the harbour is "
    "quiet again. The sailors rest, the nets are hung out to dry, and the lights of the cottages shine across the "
    "calm water until the stars come out."
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def service_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the worktree's package first on PYTHONPATH, offline, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in {"MODEL_DIR", "ENGINE", "THREADS", "MODEL_S3_URI"}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return env | (extra or {})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_status_bytes(pid: int, key: str) -> int:
    """A size line of /proc/PID/status (VmRSS: resident now, VmHWM: its peak), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for pid {pid}")


class Service:
    """A server in a child process on loopback: ours under uvicorn (`Service.ours`) or any other command."""

    def __init__(self, command: list[str], port: int, env: dict[str, str] | None = None, health: str = "/") -> None:
        self.port, self.health = port, health
        self.log_path = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.spawned = time.perf_counter()
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @classmethod
    def ours(cls, model_dir: Path, env: dict[str, str] | None = None) -> Service:
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "distilgpt2_api.api:app", "--host", HOST, "--port", str(port)]
        command += ["--log-level", "warning", "--no-access-log"]
        return cls(command, port, service_env({"MODEL_DIR": str(model_dir.resolve()), **(env or {})}))

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 300.0) -> httpx.Response:
        """Poll the health path until it answers 200; that first answer (it carries the cold start)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=30, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    response = client.get(self.health)
                    if response.status_code == 200:
                        return response
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Service:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pyperf_values(kind: str, args: Sequence[str], options: Sequence[str] = ()) -> dict[str, Any]:
    """`python -m pyperf KIND OPTIONS ARGS` (timeit or command: fresh worker processes, warmups discarded):
    every value in seconds, their median, and each worker's peak RSS in MB (pyperf's metadata)."""
    import pyperf

    with tempfile.TemporaryDirectory(prefix="pyperf-") as tmp:
        out = Path(tmp) / "out.json"
        command = [sys.executable, "-m", "pyperf", kind, "--quiet", "-o", str(out), *options]
        command += ["--inherit-environ", "PYTHONPATH,HF_HUB_OFFLINE,TRANSFORMERS_OFFLINE,TRANSFORMERS_VERBOSITY"]
        done = subprocess.run([*command, *args], env=service_env(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pyperf {kind} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        bench = pyperf.Benchmark.load(str(out))
    runs = [run for run in bench.get_runs() if run.values]
    rss = [run.get_metadata().get("command_max_rss") or run.get_metadata().get("mem_max_rss") for run in runs]
    return {"values_s": list(bench.get_values()), "median_s": bench.median(), "peak_rss_mb": max(rss) / 2**20}


# --- the machine ------------------------------------------------------------------------------------------


def cpu_busy_s() -> float:
    """CPU seconds all processes have used since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


class OthersLoad:
    """CPU (in cores) that processes other than this one, its children and `pids` used since it was made."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = [os.getpid(), *pids]
        self.started, self.busy, self.ours = time.monotonic(), cpu_busy_s(), self._ours()
        self.busiest = top_processes(self.pids)

    def _ours(self) -> float:
        return sum(process_cpu_s(pid) for pid in self.pids)

    def cores(self) -> float:
        elapsed = time.monotonic() - self.started
        others = (cpu_busy_s() - self.busy) - (self._ours() - self.ours)
        return round(max(0.0, others) / elapsed, 2) if elapsed > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        return {"foreign_load_cores": self.cores(), "busiest_processes": self.busiest}


def top_processes(exclude: Sequence[int], limit: int = 6) -> list[str]:
    """The busiest processes right now (ps), `exclude` left out: what else was running."""
    out = subprocess.run(
        ["ps", "-eo", "pid,ppid,pcpu,etime,args", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True
    ).stdout.splitlines()
    rows = [line.split(None, 2) for line in out]
    rows = [rest.strip()[:140] for pid, ppid, rest in rows if int(pid) not in exclude and int(ppid) not in exclude]
    return [row for row in rows if not row.startswith("0.0")][:limit]


def wait_for_idle(max_wait_s: float, idle_cores: float = 0.3) -> dict[str, float]:
    """Wait until other processes use under `idle_cores` cores (or max_wait_s passes); what was seen."""
    started = time.monotonic()
    while True:
        gauge = OthersLoad()
        time.sleep(2.0 if max_wait_s > 0 else 0.2)
        busy, waited = gauge.cores(), time.monotonic() - started
        if busy < idle_cores or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "busy_cores": busy}


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def machine_info(packages: Sequence[str]) -> dict[str, Any]:
    """The CPU (model name, CPUs, SIMD flags), memory, kernel, Python and `packages`' versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    flags = set(next((line for line in cpuinfo if line.startswith("flags")), "").split(":", 1)[-1].split())
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gb": round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": loadavg(),
    }


# --- markdown ---------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]) + "\n"


def machine_section(machine: dict[str, Any], extra: Sequence[list[str]] = ()) -> str:
    """`## Machine`: the CPU the figures came from, its SIMD flags, memory, software (and `extra` rows)."""
    flags = ", ".join(f for f, present in machine["cpu_flags"].items() if present) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    start, end = " ".join(machine["loadavg_start"]), " ".join(machine.get("loadavg_end", []))
    rows = [
        ["CPU", f"{machine['cpu_model']} ({machine['logical_cpus']} logical CPUs, {machine['usable_cpus']} usable)"],
        ["SIMD flags", flags],
        ["memory", f"{machine['memory_gb']} GB"],
        ["software", f"Python {machine['python']}, kernel {machine['kernel']}, {versions}"],
        *extra,
        ["load average", f"start {start}, end {end}"],
    ]
    return "## Machine\n\n" + table(["", ""], rows)


def render(template: str, context: dict[str, Any]) -> str:
    """bench/TEMPLATE, a Jinja template, over `context`. Filters: s (seconds, or milliseconds under 0.1 s), f (a
    format spec: `x|f(".2f")`), pct (a ratio as a whole percentage), pyrepr (repr)."""
    loader = jinja2.FileSystemLoader(BENCH)
    env = jinja2.Environment(loader=loader, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters |= {"s": seconds, "f": format, "pct": lambda value: f"{value:.0%}", "pyrepr": repr}
    return env.get_template(template).render(context)


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.0f} ms"


def write_report(out: Path, stem: str, results: dict[str, Any], markdown: str) -> None:
    """OUT/stem.json (the raw figures) and OUT/STEM.md (the report)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem.upper()}.md").write_text(markdown)
