"""`childface serve` as a user starts it: real process and port, first-start admin, admin page beside."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHILDFACE = str(Path(sys.executable).with_name("childface"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, seconds: float = 180) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer 200 within {seconds} s")


@pytest.fixture
def serve_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(
        CHILDFACE_DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}",
        CHILDFACE_DEVICE="cpu",
        CHILDFACE_TORCH_THREADS="1",
    )
    return env


def test_serve_with_admin_creates_first_admin_and_answers(serve_env: dict[str, str], tmp_path: Path) -> None:
    assert (
        subprocess.run([CHILDFACE, "migrate"], env=serve_env, capture_output=True, timeout=120).returncode
        == 0
    )
    port, admin_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [
            CHILDFACE,
            "serve",
            "--port",
            str(port),
            "--save-img-path",
            str(tmp_path / "photos"),
            "--admin",
            "--admin-port",
            str(admin_port),
        ],
        env=serve_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _wait_for(f"http://127.0.0.1:{port}/readyz", process)
        assert ready.json()["ready"] is True
        assert (tmp_path / "photos").is_dir()
        admin_page = _wait_for(f"http://127.0.0.1:{admin_port}/", process)
        assert "streamlit" in admin_page.text.lower()
        request_id = "serve-test-1"
        assert httpx.get(f"http://127.0.0.1:{port}/children", timeout=5).status_code == 401
        httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": request_id}, timeout=5)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    found = re.search(r"created staff account 'admin' with password (\S+)", stderr)
    assert found, stderr[-2000:]
    assert f"[{request_id}]" in stderr, "request ids belong in the log lines"

    # the printed password signs in, options reach the running API, a second start makes no second admin
    env = {**serve_env, "CHILDFACE_MEDIA_DIR": str(tmp_path / "photos")}
    port = _free_port()
    again = subprocess.Popen(
        [CHILDFACE, "serve", "--port", str(port), "--proba-conf", "0.93"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", again)
        login = httpx.post(
            f"http://127.0.0.1:{port}/auth/login",
            json={"username": "admin", "password": found.group(1)},
            timeout=30,
        )
        assert login.status_code == 200, login.text
        # the first-start password must be replaced before anything else
        changed = httpx.post(
            f"http://127.0.0.1:{port}/auth/password",
            json={"current_password": found.group(1), "new_password": "the admin's own password"},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
            timeout=30,
        )
        assert changed.status_code == 204, changed.text
        login = httpx.post(
            f"http://127.0.0.1:{port}/auth/login",
            json={"username": "admin", "password": "the admin's own password"},
            timeout=30,
        )
        token = login.json()["access_token"]
        settings = httpx.get(
            f"http://127.0.0.1:{port}/admin/settings",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert settings.status_code == 200, settings.text
        assert settings.json()["accept_threshold"] == 0.93
    finally:
        again.terminate()
        _, stderr = again.communicate(timeout=60)
    assert "created staff account" not in stderr


def test_serve_refuses_bad_options(serve_env: dict[str, str], tmp_path: Path) -> None:
    bad_device = subprocess.run(
        [CHILDFACE, "serve", "--device", "tpu"], env=serve_env, capture_output=True, text=True, timeout=120
    )
    assert bad_device.returncode == 2 and "device" in bad_device.stderr
    missing = subprocess.run(
        [CHILDFACE, "serve", "--recg-ckdir", str(tmp_path / "nope.dat")],
        env=serve_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "weights not found" in missing.stderr
    loud = subprocess.run(
        [CHILDFACE, "serve", "--log-level", "loud"],
        env=serve_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loud.returncode == 2 and "--log-level" in loud.stderr
    behind = subprocess.run([CHILDFACE, "serve"], env=serve_env, capture_output=True, text=True, timeout=120)
    assert behind.returncode == 2 and "childface migrate" in behind.stderr


@pytest.mark.slow
def test_bench_api_reports_latency(serve_env: dict[str, str]) -> None:
    """~20 s: a `childface serve` process starts and loads its models; the clients run in another."""
    result = subprocess.run(
        [CHILDFACE, "bench", "api", "--requests", "4", "--warmup", "1", "--concurrency", "2", "--rounds", "2",
         "--json"],
        env=serve_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["requests"] == 4 and report["device"] == "cpu" and report["rounds"] == 2
    assert report["probe_decisions"] == {"match": 3}, "the enrolled child's new photo must be recognised"
    assert report["sequential"]["requests"] == report["concurrent"]["requests"] == 4
    assert report["concurrent"]["concurrency"] == 2
    assert len(report["load_average_before"]) == len(report["load_average_after"]) == 3
    # figures only: which of two timings is larger depends on the machine's load, so no ordering of them
    assert 0 < report["p50_ms"] <= report["p99_ms"] and report["throughput_rps"] > 0
    assert report["throughput_vs_sequential"] > 0
