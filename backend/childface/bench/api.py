"""`childface bench api`: `POST /recognize` as another system sees it, one client and several at once.

The server is a real `childface serve` process (the production command, its
thread policy and micro-batcher) on a throw-away SQLite database and media
folder with one enrolled child. The clients are another process
(bench/http_load.py) over real HTTP on loopback; they send a 640x480 one-face
JPEG (a real face from the packaged sample photos on a synthetic background).
A request's latency runs from its first byte sent to the last byte of the JSON
read: multipart parsing, decoding, detection, quality gate, embedding, index
search, the database read of the candidates, all inside.

Sequential (one client) and concurrent (`concurrency` clients) phases alternate
in `rounds` rounds on the same server, so both see the same machine;
`throughput_vs_sequential` is the concurrent phases' requests per second over
the sequential phases'. The load average is recorded before and after, and
`background_load` runs a CPU hog on every core beside the whole measurement.

`serve_in_thread` (uvicorn in a thread of this process) stays for tests and
benchmarks that need a server sharing their runtime.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI

from childface.bench.background_load import background_load as cpu_hog
from childface.bench.http_load import run_http_load, summarise
from childface.config import Settings
from childface.db.migrate import upgrade
from childface.db.session import Actor, Database
from childface.services import accounts
from childface.services.sample_data import encode_jpeg, load_sample_photos, synthetic_photo

ENROLL_PHOTOS = 3
SERVER_START_S = 300.0
#: settings the server process gets from the benchmark's own (the rest it reads as usual)
SERVER_SETTINGS = ("device", "torch_threads", "batch_size", "batch_window_ms", "batch_max_images",
                   "batch_workers", "detector", "detector_weights", "detector_input_size", "embedder",
                   "embedder_weights", "embedder_arch")


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port, as `childface serve` does; yields its base URL.

    uvicorn binds the port itself: handing it a socket bound here left Nagle's algorithm on for
    the accepted connections, which added a delayed-ACK wait (~40 ms) to every keep-alive request.
    """
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_environment(settings: Settings, root: Path) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("CHILDFACE_")}
    values: dict[str, Any] = {name: getattr(settings, name) for name in SERVER_SETTINGS}
    values |= {
        "device": settings.resolved_device,
        "database_url": f"sqlite:///{root / 'bench.db'}",
        "media_dir": root / "media",
        "index_dir": root / "index",
    }
    environment |= {f"CHILDFACE_{k.upper()}": str(v) for k, v in values.items() if v is not None}
    return environment


@contextmanager
def serve_process(settings: Settings, root: Path) -> Iterator[tuple[str, float]]:
    """`childface serve` in a subprocess on a database under `root`; yields its URL and how long it
    took to answer /readyz."""
    with serve_subprocess(_server_environment(settings, root), root / "server.log") as started:
        yield started


@contextmanager
def serve_subprocess(
    environment: dict[str, str], log_path: Path, *, timeout_s: float = SERVER_START_S
) -> Iterator[tuple[str, float]]:
    """`childface serve` in a subprocess with this environment, on a free loopback port; yields its URL
    and how long it took to answer /readyz. Stopped with SIGTERM (as a service manager does)."""
    port = _free_port()
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "childface.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                log_tail = log_path.read_text()[-2000:]
                raise RuntimeError(f"the server exited ({process.returncode}): {log_tail}")
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"the server was not ready in {timeout_s:.0f} s")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url, time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_api_benchmark(
    settings: Settings,
    *,
    requests: int,
    warmup: int,
    concurrency: int,
    rounds: int = 3,
    background_load: bool = False,
) -> dict[str, Any]:
    """Sequential and (when `concurrency` > 1) concurrent phases, alternating, against one server."""
    with tempfile.TemporaryDirectory(prefix="childface-bench-api-") as tmp:
        root = Path(tmp)
        database = Database(f"sqlite:///{root / 'bench.db'}")
        try:
            upgrade(database)
            key = accounts.create_api_key(
                db=database, actor=Actor("system", "bench-api"), name="bench", scopes=["recognize", "enroll"]
            ).key
        finally:
            database.dispose()
        enroll_photos, probe = _photos(settings)
        with serve_process(settings, root) as (url, start_seconds):
            decisions = _enroll_and_check(url, key, enroll_photos, probe)
            report = _measure(
                url, key, probe, requests=requests, warmup=warmup, concurrency=concurrency,
                rounds=rounds, background=background_load,
            )
    return report | {
        "endpoint": "POST /recognize",
        "photo": f"640x480 JPEG, one face, {len(probe)} bytes",
        "probe_decisions": decisions,
        "server": "childface serve (subprocess)",
        "server_start_seconds": round(start_seconds, 2),
        "device": settings.resolved_device,
        "cpu_count": os.cpu_count(),
        "torch_threads": settings.torch_threads,
        "batch_window_ms": settings.batch_window_ms,
        "batch_max_images": settings.batch_max_images,
    }


def _photos(settings: Settings) -> tuple[list[bytes], bytes]:
    """Enrollment photos and a probe of one packaged face, each on its own synthetic background."""
    from childface.vision.detector import RetinaFaceDetector

    detector = RetinaFaceDetector.from_settings(settings.model_copy(update={"device": "cpu"}))
    child_face = load_sample_photos(detector).faces[0]
    rng = np.random.default_rng(0)
    enroll = [encode_jpeg(synthetic_photo(child_face, rng), quality=90) for _ in range(ENROLL_PHOTOS)]
    return enroll, encode_jpeg(synthetic_photo(child_face, rng), quality=90)


def _enroll_and_check(url: str, key: str, enroll_photos: list[bytes], probe: bytes) -> dict[str, int]:
    """Enroll the child; the decisions of a few recognitions of the probe (they should be matches)."""
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as http:
        created = http.post("/children", json={"external_id": "BENCH-1", "name": "Bench Child"})
        created.raise_for_status()
        files = [("files", (f"e{i}.jpg", data, "image/jpeg")) for i, data in enumerate(enroll_photos)]
        http.post(f"/children/{created.json()['id']}/images", files=files).raise_for_status()
        decisions: dict[str, int] = {}
        for _ in range(3):
            response = http.post("/recognize", files={"file": ("probe.jpg", probe, "image/jpeg")})
            response.raise_for_status()
            decision = ",".join(face["decision"] for face in response.json()["faces"]) or "no face"
            decisions[decision] = decisions.get(decision, 0) + 1
    return decisions


def _measure(
    url: str, key: str, probe: bytes, *, requests: int, warmup: int, concurrency: int, rounds: int,
    background: bool,
) -> dict[str, Any]:
    rounds = max(1, min(rounds, requests))
    per_round = [requests // rounds + (1 if r < requests % rounds else 0) for r in range(rounds)]
    phases = [1] + ([concurrency] if concurrency > 1 else [])
    latencies: dict[int, list[float]] = {c: [] for c in phases}
    wall: dict[int, float] = dict.fromkeys(phases, 0.0)
    load_before = os.getloadavg()
    with cpu_hog() if background else nullcontext():
        for r, count in enumerate(per_round):
            for clients in phases:
                result = run_http_load(
                    url, key, probe, requests=count, concurrency=clients,
                    warmup=max(warmup if r == 0 else 0, clients),
                )
                latencies[clients] += result["latencies_ms"]
                wall[clients] += result["wall_s"]
    load_after = os.getloadavg()
    sequential = summarise(latencies[1], wall[1], 1)
    concurrent = None
    if concurrency > 1:
        concurrent = summarise(latencies[concurrency], wall[concurrency], concurrency)
    return {
        "requests": requests,
        "rounds": rounds,
        "background_load": background,
        "p50_ms": sequential["p50_ms"],
        "p95_ms": sequential["p95_ms"],
        "p99_ms": sequential["p99_ms"],
        "throughput_rps": (concurrent or sequential)["throughput_rps"],
        "throughput_vs_sequential": (
            round(concurrent["throughput_rps"] / sequential["throughput_rps"], 3) if concurrent else 1.0
        ),
        "sequential": sequential,
        "concurrent": concurrent,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
    }
