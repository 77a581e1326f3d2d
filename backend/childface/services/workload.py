"""Thread settings per workload: the API's request path, or batch work (import, reindex, eval, bench).

    prepare_environment(Workload.REQUEST)     # first, before torch / faiss / numpy load
    apply(Workload.REQUEST, settings)         # after: torch's thread pools
    pin_request_thread()                      # in a request thread, before a FAISS search

Three native thread pools live in one process: torch's OpenMP (intra-op) pool,
FAISS's own OpenMP runtime (the faiss-cpu wheel carries its own libgomp), and
the BLAS under numpy. Left alone, each starts one thread per core and, at
every parallel region's barrier, spins waiting for the others. On a shared
machine those spinning threads fight each other and every other process:
measured on this 2-core machine at load average ~4 (another test run beside),
one-face 640x480 through the pipeline, median of 10:

    torch threads  OMP_WAIT_POLICY    quiet-ish     CPU hog on both cores (load 8-9)
    2              (default, spin)    75.2 ms       1502.7 ms
    2              PASSIVE            38.8 ms        224.8 ms (batch of 4: 137.7 ms per image)
    1              PASSIVE            40.5 ms        251.4 ms (batch of 4: 212.5 ms per image)

and a short spin before sleeping did not help either (same probe, 2 threads,
load average 4-7, without / with the hog): PASSIVE 41.7-42.6 / 40.5-93.2 ms,
GOMP_SPINCOUNT=1000 57.4-58.3 / 102.6-111.4 ms, 10000 109.9-205.6 / 261-785 ms,
100000 121.5-443.4 / 575-3615 ms. So every process sleeps at barriers
(`OMP_WAIT_POLICY=PASSIVE`; libgomp then ignores GOMP_SPINCOUNT). libgomp
reads it once, when it loads, i.e. on the first `import torch` or `import
faiss`: the CLI's entry point calls `prepare_environment` before any command
imports them (an explicit value in the environment wins: `setdefault`).

The request path also sets `OMP_NUM_THREADS=1` and `OPENBLAS_NUM_THREADS=1`.
An OpenMP thread count is per calling thread, and FAISS and torch can share
one OpenMP runtime (torch loads its libgomp globally; when torch is imported
first, FAISS's calls bind to it), so the process default read at load is what
reaches the server's request threads: a single query is far too small to
split. Measured here, one query on a flat index of 10,000 x 128 (median / p99
of 200, load average 6.7-7.0): one thread 0.086-0.089 ms / 0.3-16 ms, two
threads 0.39-0.49 ms / 0.5-108 ms, with or without a hog beside (through the
whole gallery, identify at 10k faces was reported at 0.83 ms against 26.6 ms).
torch keeps its own count (`apply`) and sets it in each thread where it first
runs an operator: the micro-batcher's thread runs the models with
`torch_threads`. A request thread
where torch ran (enrollment runs the pipeline in the request's thread) would
carry that count into its next FAISS search, so the request path calls
`pin_request_thread` before searching.

Batch work keeps the libraries' defaults (one thread per core) for FAISS and
BLAS: big builds and many-query searches do split well.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from enum import StrEnum

from childface.config import Settings

log = logging.getLogger(__name__)

#: libraries whose thread pools read the environment once, when they load
NATIVE_MODULES = ("torch", "faiss", "numpy")


class Workload(StrEnum):
    REQUEST = "request"  # the API: many small concurrent calls, latency first
    BATCH = "batch"  # import, reindex, eval, bench: few large calls, throughput first


@dataclass(frozen=True)
class ThreadPolicy:
    workload: Workload
    torch_threads: int  # intra-op pool (convolutions, matmuls)
    torch_interop_threads: int  # pool for independent ops run in parallel (unused by our models)
    faiss_threads: int  # OpenMP threads of a FAISS call
    environment: dict[str, str]  # what must be set before the native libraries load


def policy_for(workload: Workload, settings: Settings | None = None) -> ThreadPolicy:
    """The thread settings of `workload` (settings.torch_threads overrides torch's count)."""
    cores = os.cpu_count() or 1
    configured = settings.torch_threads if settings is not None else None
    environment = {"OMP_WAIT_POLICY": "PASSIVE"}
    if workload is Workload.REQUEST:
        environment |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        # the cores are shared out between the micro-batcher's workers: side by side, one-image
        # forward passes use the cores better than one pass split across threads (config.batch_workers)
        workers = settings.resolved_batch_workers if settings is not None else 1
        return ThreadPolicy(workload, configured or max(1, cores // workers), 1, 1, environment)
    return ThreadPolicy(workload, configured or cores, 1, cores, environment)


def prepare_environment(workload: Workload) -> bool:
    """Put the workload's OpenMP/BLAS variables into the environment, where not set already.

    Returns False (and changes nothing) when torch, faiss or numpy is already loaded in this
    process: they would not read them any more.
    """
    loaded = [name for name in NATIVE_MODULES if name in sys.modules]
    if loaded:
        log.debug("thread environment not set: %s already loaded", ", ".join(loaded))
        return False
    for name, value in policy_for(workload).environment.items():
        os.environ.setdefault(name, value)
    return True


def apply(workload: Workload, settings: Settings) -> ThreadPolicy:
    """Set torch's thread pools (process-wide; FAISS follows the environment, see the docstring)."""
    import torch

    policy = policy_for(workload, settings)
    torch.set_num_threads(policy.torch_threads)
    if torch.get_num_interop_threads() != policy.torch_interop_threads:
        try:
            torch.set_num_interop_threads(policy.torch_interop_threads)
        except RuntimeError:  # only possible before the first inter-op work of the process
            log.debug("torch's inter-op pool is already running; left at %d", torch.get_num_interop_threads())
    return policy


def pin_request_thread() -> None:
    """One OpenMP thread for the FAISS search this request thread is about to run (a thread-local
    setting: costs nothing, and undoes the count torch left here if it ran in this thread)."""
    import faiss

    faiss.omp_set_num_threads(policy_for(Workload.REQUEST).faiss_threads)
