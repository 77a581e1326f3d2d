"""Thread policy per workload: what the API's request path and batch work get, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from childface.config import Settings
from childface.services.workload import Workload, policy_for, prepare_environment

#: a fresh interpreter: the environment must be set before torch and faiss load
PROBE = """
import json, os, sys, threading
from childface.config import Settings
from childface.services.workload import Workload, apply, pin_request_thread, prepare_environment
workload = Workload(sys.argv[1])
prepared = prepare_environment(workload)
import faiss, torch
policy = apply(workload, Settings(_env_file=None, torch_threads=int(sys.argv[2]) or None))
seen = {}
def request_thread():  # a thread the policy was not applied in, like a server's request threads
    seen["faiss"] = faiss.omp_get_max_threads()
    torch.ones(64, 64) @ torch.ones(64, 64)  # torch runs here (as enrollment does)
    seen["torch"] = torch.get_num_threads()
    pin_request_thread()
    seen["faiss_pinned"] = faiss.omp_get_max_threads()
thread = threading.Thread(target=request_thread)
thread.start()
thread.join()
print(json.dumps({"prepared": prepared, "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                  "torch": torch.get_num_threads(), **seen}))
"""


def _probe(workload: str, torch_threads: int = 0) -> dict:
    unset = {"OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, workload, str(torch_threads)],
        env=environment, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_request_path_runs_faiss_on_one_thread_in_every_thread_and_torch_as_set() -> None:
    """~4 s on a quiet machine (a fresh interpreter imports torch and faiss)."""
    seen = _probe("request", torch_threads=2)
    assert seen["prepared"] and seen["wait_policy"] == "PASSIVE"
    assert seen["torch"] == 2 and seen["faiss"] == 1, "a new thread: FAISS on one thread, torch on two"
    assert seen["faiss_pinned"] == 1


def test_policies() -> None:
    request = policy_for(Workload.REQUEST, Settings(_env_file=None, torch_threads=3))
    assert (request.torch_threads, request.faiss_threads, request.torch_interop_threads) == (3, 1, 1)
    assert request.environment["OMP_NUM_THREADS"] == "1"
    batch = policy_for(Workload.BATCH)
    assert batch.torch_threads == batch.faiss_threads == os.cpu_count()
    assert "OMP_NUM_THREADS" not in batch.environment


def test_too_late_changes_nothing(monkeypatch) -> None:  # noqa: ANN001
    import torch  # noqa: F401 - loaded: its OpenMP runtime has read the environment already

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert prepare_environment(Workload.REQUEST) is False
    assert "OMP_WAIT_POLICY" not in os.environ
