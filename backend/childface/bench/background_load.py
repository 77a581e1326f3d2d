"""A CPU hog for benchmarks under contention: one busy process per core, beside the measurement.

    with background_load():          # os.cpu_count() busy processes
        report = measure()

Each hog is a separate Python process spinning in a pure-Python loop (no
threads, no native code), like other tenants of a shared machine: it competes
for cores but holds no lock the benchmark could wait on. The processes are
started before the block and killed when it ends, also on an exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

BUSY_LOOP = "while True:\n    pass\n"
SETTLE_S = 0.3  # the hogs are running (not still starting Python) when the block begins


@contextmanager
def background_load(processes: int | None = None) -> Iterator[list[int]]:
    """Run `processes` (default: one per core) busy-looping processes for the block; yields their pids."""
    count = (os.cpu_count() or 1) if processes is None else processes
    hogs = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
        for _ in range(max(0, count))
    ]
    try:
        time.sleep(SETTLE_S if hogs else 0)
        yield [hog.pid for hog in hogs]
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
