"""The CPU hog: busy processes for the block, gone after it (also when the block raises)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from childface.bench.background_load import background_load


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_hogs_burn_cpu_and_stop() -> None:
    with background_load(2) as pids:
        assert len(pids) == 2 and os.getpid() not in pids
        time.sleep(0.5)
        assert all(_cpu_seconds(pid) > 0.05 for pid in pids), "each hog is busy"
    assert all(_gone(pid) for pid in pids)


def test_hogs_stop_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), background_load(1) as pids:
        raise RuntimeError("benchmark failed")
    assert _gone(pids[0])


def test_default_is_one_per_core() -> None:
    with background_load() as pids:
        assert len(pids) == os.cpu_count()
