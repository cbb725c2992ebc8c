"""The default thread count: the fewest CPUs any limit leaves the process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distilgpt2_api.engines.cpus import default_threads, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, *, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


def test_without_limits_every_cpu_of_the_affinity(tmp_path: Path) -> None:
    share = usable_cpus({}, cgroup(tmp_path, v2="max 100000"))
    assert (share.count, share.reason) == (AFFINITY, "CPU affinity")


@pytest.mark.parametrize(("v2", "v1"), [("50000 100000", None), ("150000 100000", None), (None, ("150000", "100000"))])
def test_a_cgroup_quota_rounds_down_to_whole_cpus(tmp_path: Path, v2: str | None, v1: tuple[str, str] | None) -> None:
    share = usable_cpus({}, cgroup(tmp_path, v2=v2, v1=v1))
    assert share.count == 1  # half a CPU, or one and a half: one thread
    assert share.reason.startswith("cgroup CPU quota")


def test_an_unlimited_cgroup_v1_quota_is_no_limit(tmp_path: Path) -> None:
    assert usable_cpus({}, cgroup(tmp_path, v1=("-1", "100000"))).reason == "CPU affinity"


@pytest.mark.parametrize(("memory", "expected"), [("128", 1), ("1769", 1), ("3008", 1), ("3538", 2), ("10240", 5)])
def test_on_lambda_the_vcpu_share_of_the_memory_setting(tmp_path: Path, memory: str, expected: int) -> None:
    share = usable_cpus({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": memory}, cgroup(tmp_path))
    assert share.count == min(expected, AFFINITY)
    if expected < AFFINITY:
        assert share.reason.startswith(f"Lambda's {memory} MB")


def test_ctranslate2_keeps_one_thread_unless_told() -> None:
    assert default_threads("ctranslate2").count == 1
    assert default_threads("llamacpp") == usable_cpus()
