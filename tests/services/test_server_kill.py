"""kill -9 of a real `childface serve` right after an erasure and during a burst of enrollments and an
import, on SQLite and PostgreSQL: after a restart, `childface verify` finds nothing (DESIGN.md invariant 3).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from sqlalchemy import select

from childface.db import Actor, Database
from childface.db.models import ImportRun, ImportStatus
from childface.services.accounts import create_api_key

from .photos import insightface_images, read_rgb

CHILDFACE = str(Path(sys.executable).with_name("childface"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def face_photos(n: int) -> list[bytes]:
    """`n` different JPEGs of one face (mirrored and brightened a little: other bytes, same person)."""
    folder = insightface_images()
    if folder is None:
        pytest.skip("insightface (its sample photos are the test's faces) is not installed")
    rgb = read_rgb(folder / "Tom_Hanks_54745.png")
    photos = []
    for i in range(n):
        image = rgb[:, ::-1] if i % 2 else rgb
        image = np.clip(image.astype(np.int16) + i // 2, 0, 255).astype(np.uint8)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        photos.append(jpeg.tobytes())
    return photos


class Server:
    """`childface serve` in a subprocess, its log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("a") as sink:
            self.process = subprocess.Popen([CHILDFACE, "serve", "--port", str(self.port)], env=env,
                                            stdout=sink, stderr=sink)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.process.kill()
        pytest.fail(f"the server did not become ready: {log.read_text()[-3000:]}")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        self.process.terminate()  # uvicorn shuts down gracefully, then dies of the signal it caught
        assert self.process.wait(timeout=60) in (0, -signal.SIGTERM), self.log.read_text()[-3000:]


def import_files(photos: list[bytes], child: str) -> dict[str, tuple[str, bytes, str]]:
    rows = ["child_id,image"] + [f"{child},p{i}.jpg" for i in range(len(photos))]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, photo in enumerate(photos):
            zf.writestr(f"p{i}.jpg", photo)
    return {"csv": ("rows.csv", "\n".join(rows).encode(), "text/csv"),
            "photos": ("photos.zip", archive.getvalue(), "application/zip")}


@pytest.mark.slow
def test_kill_9_after_erasure_and_during_enrollments_then_restart_verifies_clean(
    db_url: str, tmp_path: Path
) -> None:
    photos = face_photos(64)
    database = Database(db_url)
    key = create_api_key(db=database, actor=Actor("system", "kill-test"), name="kill-test",
                         scopes=["admin"]).key
    headers = {"X-API-Key": key}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(CHILDFACE_DATABASE_URL=db_url, CHILDFACE_MEDIA_DIR=str(tmp_path / "data" / "media"),
               CHILDFACE_INDEX_DIR=str(tmp_path / "data" / "index"), CHILDFACE_DEVICE="cpu",
               CHILDFACE_TORCH_THREADS="1", CHILDFACE_RATE_LIMIT_UNAUTHENTICATED="10000/minute")
    log = tmp_path / "serve.log"
    media = tmp_path / "data" / "media"

    # 1. enroll a child with several photos, erase it, kill -9 right after the answer
    server = Server(env, log)
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
        child = client.post("/children", json={"external_id": "k-1", "name": "Erased"}).json()["id"]
        enrolled = client.post(f"/children/{child}/images",
                               files=[("files", (f"{i}.jpg", photos[i], "image/jpeg")) for i in range(4)])
        assert enrolled.status_code == 200, enrolled.text
        assert [p["status"] for p in enrolled.json()["photos"]] == ["enrolled"] * 4
        erased = client.post(f"/children/{child}/erase", json={"confirm": "ERASE"})
        server.kill9()
    assert erased.status_code == 200, erased.text

    # 2. a burst of concurrent enrollments and an import, killed while they run
    server = Server(env, log)
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
        child = client.post("/children", json={"external_id": "k-2", "name": "Kept"}).json()["id"]
        started = client.post("/imports", files=import_files(photos[16:], "k-3"))
        assert started.status_code == 202, started.text

        def enroll(i: int) -> int | None:
            try:
                return client.post(f"/children/{child}/images",
                                   files=[("files", (f"{i}.jpg", photos[i], "image/jpeg"))]).status_code
            except httpx.TransportError:
                return None  # killed mid-request

        with ThreadPoolExecutor(max_workers=8) as pool:
            burst = [pool.submit(enroll, i) for i in range(4, 16)]
            while not any(f.done() for f in burst):
                time.sleep(0.01)
            server.kill9()
            answers = [f.result() for f in burst]
    assert 200 in answers and None in answers, f"the kill should land mid-burst: {answers}"
    with database.session() as session:
        stuck = session.scalar(select(ImportRun).where(ImportRun.status == ImportStatus.running))
    assert stuck is not None, "the import should have been running at the kill"

    # 3. restart: start-up recovery cleans up, the index catches up; then verify
    server = Server(env, log)
    server.stop()
    assert "recovered after an unclean stop" in log.read_text()
    with database.session() as session:
        run = session.get(ImportRun, stuck.id)
    assert run.status == ImportStatus.failed and run.error.startswith("interrupted")
    assert not list((tmp_path / "data" / "tmp" / "imports").iterdir()), "the import's scratch folder stays"
    verified = subprocess.run([CHILDFACE, "verify", "--json"], env=env, capture_output=True, text=True,
                              timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["clean"] and report["photo_files"] == len(list(media.rglob("*.jpg")))
    assert report["indexes"] and all(index["clean"] for index in report["indexes"])
    database.dispose()
