"""`childface bench api`: end-to-end latency of `POST /recognize` over HTTP on loopback.

A real uvicorn server (the production app, in a thread of this process) serves
a throw-away SQLite database and media folder with one enrolled child. The
client sends a 640x480 one-face JPEG (a real face from the packaged sample
photos on a synthetic background) and times each request from the first byte
sent to the last byte of the JSON read: multipart parsing, decoding, detection,
quality gate, embedding, index search, the database read of the candidates and
the review-queue write are all inside the span. In the same run the pipeline
alone (decode + detect + embed, no HTTP, no database) is timed on the same
photo, so the HTTP and storage overhead is visible as a ratio.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI

from childface.api.app import create_app
from childface.config import Settings
from childface.db.session import Actor
from childface.services import accounts
from childface.services.runtime import Runtime
from childface.services.sample_data import encode_jpeg, load_sample_photos, synthetic_photo

ENROLL_PHOTOS = 3


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


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = np.asarray(sorted(samples_ms))
    return {
        "p50_ms": round(float(np.percentile(ordered, 50)), 2),
        "p95_ms": round(float(np.percentile(ordered, 95)), 2),
        "p99_ms": round(float(np.percentile(ordered, 99)), 2),
        "mean_ms": round(statistics.fmean(samples_ms), 2),
    }


def run_api_benchmark(
    settings: Settings, *, requests: int, warmup: int, concurrency: int
) -> dict[str, Any]:
    """Time `requests` sequential recognitions (and a concurrent burst when `concurrency` > 1)."""
    with tempfile.TemporaryDirectory(prefix="childface-bench-api-") as tmp:
        root = Path(tmp)
        runtime = Runtime.scratch(settings, root)
        load_started = time.perf_counter()
        runtime.start(autosave=False)
        load_seconds = time.perf_counter() - load_started
        try:
            return _measure(runtime, requests=requests, warmup=warmup, concurrency=concurrency) | {
                "model_load_seconds": round(load_seconds, 2)
            }
        finally:
            runtime.close()


def _measure(runtime: Runtime, *, requests: int, warmup: int, concurrency: int) -> dict[str, Any]:
    sample = load_sample_photos(runtime.pipeline.detector)
    rng = np.random.default_rng(0)
    child_face = sample.faces[0]
    enroll_photos = [encode_jpeg(synthetic_photo(child_face, rng), quality=90) for _ in range(ENROLL_PHOTOS)]
    probe_rgb = synthetic_photo(child_face, rng)
    probe = encode_jpeg(probe_rgb, quality=90)
    key = accounts.create_api_key(
        db=runtime.db, actor=Actor("system", "bench-api"), name="bench", scopes=["recognize", "enroll"]
    ).key
    headers = {"X-API-Key": key}
    app = create_app(runtime.settings, runtime)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        created = http.post("/children", json={"external_id": "BENCH-1", "name": "Bench Child"})
        created.raise_for_status()
        files = [("files", (f"e{i}.jpg", data, "image/jpeg")) for i, data in enumerate(enroll_photos)]
        http.post(f"/children/{created.json()['id']}/images", files=files).raise_for_status()

        def recognize() -> tuple[float, str]:
            started = time.perf_counter()
            response = http.post("/recognize", files={"file": ("probe.jpg", probe, "image/jpeg")})
            body = response.json()
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            decisions = [face["decision"] for face in body["faces"]]
            return elapsed, ",".join(decisions) or "no face"

        for _ in range(warmup):
            recognize()
        timed = [recognize() for _ in range(requests)]
        latencies = [ms for ms, _ in timed]
        decisions: dict[str, int] = {}
        for _, decision in timed:
            decisions[decision] = decisions.get(decision, 0) + 1

        burst: dict[str, Any] | None = None
        if concurrency > 1:
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                burst_latencies = [ms for ms, _ in pool.map(lambda _: recognize(), range(requests))]
            wall = time.perf_counter() - started
            burst = {"concurrency": concurrency, "requests_per_second": round(requests / wall, 2)}
            burst |= _percentiles(burst_latencies)

    pipeline_ms = []
    for _ in range(max(5, min(requests, 50))):
        started = time.perf_counter()
        runtime.pipeline.process([runtime.pipeline.decode(probe)])
        pipeline_ms.append((time.perf_counter() - started) * 1000)
    device = str(runtime.pipeline.device)
    sequential = _percentiles(latencies)
    pipeline_p50 = float(np.percentile(pipeline_ms, 50))
    return {
        "endpoint": "POST /recognize",
        "photo": f"{probe_rgb.shape[1]}x{probe_rgb.shape[0]} JPEG, one face, {len(probe)} bytes",
        "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "requests": requests,
        **sequential,
        "requests_per_second": round(1000 / sequential["mean_ms"], 2),
        "decisions": decisions,
        "pipeline_only_p50_ms": round(pipeline_p50, 2),
        "http_and_storage_overhead_ms": round(sequential["p50_ms"] - pipeline_p50, 2),
        "concurrent": burst,
    }
