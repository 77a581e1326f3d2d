"""An HTTP load client in its own process: POST one photo to a running API, many times, and time it.

    from childface.bench.http_load import run_http_load
    figures = run_http_load("http://127.0.0.1:8000", api_key, jpeg, requests=200, concurrency=4, warmup=8)
    figures["p50_ms"], figures["throughput_rps"]

The client runs in a separate Python process (`python -m childface.bench.http_load`),
so its work (building requests, parsing JSON) never shares the server's GIL or
its thread pool: what is timed is what another system calling the API sees.
`concurrency` threads each keep one keep-alive connection and take requests
from a shared counter until `requests` are done; a request's latency runs from
the first byte sent to the last byte of the response read. `warmup` requests
(spread over the same connections, so each one is open) go first, untimed.
Throughput is timed requests / wall time of the timed phase.

The API key travels on the child's stdin (never on its command line, where
`ps` would show it); the photo through a temporary file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULT_KEYS = ("p50_ms", "p95_ms", "p99_ms", "throughput_rps", "requests", "concurrency")


def run_http_load(
    base_url: str,
    api_key: str,
    photo: bytes,
    *,
    requests: int,
    concurrency: int,
    warmup: int,
    path: str = "/recognize",
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Load `base_url + path` from a client subprocess; its figures (`RESULT_KEYS`, `mean_ms`,
    `latencies_ms` in completion order, `status_counts`). Raises RuntimeError when the client fails
    or any timed request does not answer 200."""
    if requests < 1 or concurrency < 1 or warmup < 0:
        raise ValueError("requests and concurrency must be >= 1, warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="childface-http-load-") as tmp:
        photo_path = Path(tmp) / "photo"
        photo_path.write_bytes(photo)
        command = [
            sys.executable, "-m", "childface.bench.http_load", base_url.rstrip("/") + path, str(photo_path),
            "--requests", str(requests), "--concurrency", str(concurrency), "--warmup", str(warmup),
        ]
        done = subprocess.run(
            command, input=api_key + "\n", capture_output=True, text=True, timeout=timeout_s, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"the HTTP load client failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if result["status_counts"] != {"200": requests}:
        raise RuntimeError(f"requests did not all answer 200: {result['status_counts']} {result['errors']}")
    return result


def summarise(latencies_ms: list[float], wall_s: float, concurrency: int) -> dict[str, Any]:
    """Percentiles and throughput of one timed phase."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "mean_ms": round(float(values.mean()), 2),
        "throughput_rps": round(len(values) / wall_s, 3),
        "requests": len(values),
        "concurrency": concurrency,
        "wall_s": round(wall_s, 4),
    }


def _load(url: str, api_key: str, photo: bytes, *, requests: int, concurrency: int, warmup: int) -> dict:
    import httpx  # the client process only

    clients = [
        httpx.Client(headers={"X-API-Key": api_key}, timeout=300.0, limits=httpx.Limits(max_connections=1))
        for _ in range(concurrency)
    ]
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []

    def run_phase(total: int, timed: bool) -> float:
        remaining = [total]

        def worker(client: httpx.Client) -> None:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                try:
                    response = client.post(url, files={"file": ("photo.jpg", photo, "image/jpeg")})
                    response.read()
                    status = str(response.status_code)
                    error = None if response.status_code == 200 else response.text[:200]
                except httpx.HTTPError as exc:
                    status, error = "error", repr(exc)[:200]
                elapsed_ms = (time.perf_counter() - started) * 1000
                if timed:
                    with lock:
                        latencies.append(elapsed_ms)
                        statuses[status] = statuses.get(status, 0) + 1
                        if error is not None and len(errors) < 5:
                            errors.append(error)

        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    try:
        if warmup:
            run_phase(max(warmup, concurrency), timed=False)
        wall = run_phase(requests, timed=True)
    finally:
        for client in clients:
            client.close()
    return summarise(latencies, wall, concurrency) | {
        "latencies_ms": [round(v, 3) for v in latencies],
        "status_counts": statuses,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="HTTP load client (reads the API key on stdin).")
    parser.add_argument("url")
    parser.add_argument("photo", type=Path)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    args = parser.parse_args(argv)
    api_key = sys.stdin.readline().strip()
    result = _load(
        args.url, api_key, args.photo.read_bytes(),
        requests=args.requests, concurrency=args.concurrency, warmup=args.warmup,
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
