"""How many CPUs this process may compute on: the default number of threads an engine runs.

The least of what the kernel lets the process run on (its CPU affinity), what its cgroup's quota pays for
(`cpu.max`, or cgroup v1's `cpu.cfs_quota_us`), and on AWS Lambda the share of a vCPU its memory setting buys
(one vCPU per 1,769 MB, six at most: Lambda shows more CPUs than it pays for). Each limit is rounded down: a
thread without a whole CPU behind it stalls llama.cpp's spinning barrier, and two threads on one and a half CPUs
ran slower than one. CTranslate2 is the exception: on an Intel Xeon with AMX its int8 decode of SmolLM2 ran at
114-116 tok/s on one thread and 88-91 on two (docs/PERFORMANCE.md), so it keeps one unless THREADS says otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LAMBDA_MB_PER_VCPU = 1769  # AWS: "at 1,769 MB, a function has the equivalent of one vCPU"
LAMBDA_MAX_VCPUS = 6
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuShare:
    """How many CPUs the process may use, and which limit decided it."""

    count: int
    reason: str


def default_threads(engine: str) -> CpuShare:
    """Threads `engine` computes on when THREADS is not set, and why."""
    if engine == "ctranslate2":
        return CpuShare(1, "CTranslate2: one thread measured fastest")
    return usable_cpus()


def usable_cpus(environ: Mapping[str, str] = os.environ, cgroup_root: Path = CGROUP_ROOT) -> CpuShare:
    """The fewest CPUs any limit leaves this process (at least one), and that limit."""
    limits = [(len(os.sched_getaffinity(0)), "CPU affinity")]
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        limits.append((math.floor(quota), f"cgroup CPU quota {quota:g}"))
    memory = environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if memory.isdigit():
        share = min(int(memory) / LAMBDA_MB_PER_VCPU, LAMBDA_MAX_VCPUS)
        limits.append((math.floor(share), f"Lambda's {memory} MB = {share:.2f} vCPU"))
    count, reason = min(limits, key=lambda limit: limit[0])
    return CpuShare(max(count, 1), reason)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs the cgroup's quota pays for per period, or None when unlimited or unknown."""
    v2 = _read(root / "cpu.max")  # "max 100000" or "150000 100000"
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" or not period else int(quota) / int(period)
    quota_us, period_us = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota_us is None or period_us is None or int(quota_us) <= 0:
        return None
    return int(quota_us) / int(period_us)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
