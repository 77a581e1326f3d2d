"""Many clients at once against a real server: no error, no lost or duplicated face, index == DB.

A real uvicorn server runs in a thread on a loopback port (the app's sync
endpoints run in its thread pool, as in production); 24 client threads send
20 enrollments for 20 different children interleaved with 200 recognitions.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from childface.bench.api import serve_in_thread
from childface.db.models import AuditEvent, Face, ReviewState

from .support import Photos, jpeg, on_canvas, variation

N_ENROLL = 20
N_RECOGNIZE = 200


@pytest.fixture
def server_url(app: FastAPI) -> Iterator[str]:
    with serve_in_thread(app) as url:
        yield url


def _small(photos: Photos, person: int, n: int) -> bytes:
    """A 320x240 photo with a new variation of one person (small: the test is about concurrency)."""
    face = variation(photos.people[person % len(photos.people)], n)
    scale = 170 / max(face.shape[:2])
    face = cv2.resize(face, (int(face.shape[1] * scale), int(face.shape[0] * scale)))
    return jpeg(on_canvas(face, size=(320, 240), at=(75, 35)))


def test_concurrent_enrollment_and_recognition(server_url: str, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff, key = auth("staff"), auth(key="recognize")
    with httpx.Client(base_url=server_url, timeout=120) as http:
        children = []
        for i in range(N_ENROLL):
            response = http.post(
                "/children", json={"external_id": f"C{i:02d}", "name": f"Child {i}"}, headers=staff
            )
            assert response.status_code == 201, response.text
            children.append(response.json()["id"])
        enroll_photos = [_small(photos, i, i) for i in range(N_ENROLL)]
        # variations 20..49 of each person: never the bytes of an enrollment photo (variations 0..19)
        probes = [_small(photos, i, 20 + (i * 7) % 30) for i in range(N_RECOGNIZE)]

        def enroll(i: int) -> httpx.Response:
            files = [("files", (f"c{i}.jpg", enroll_photos[i], "image/jpeg"))]
            return http.post(f"/children/{children[i]}/images", files=files, headers=staff)

        def recognize(i: int) -> httpx.Response:
            return http.post("/recognize", files={"file": ("p.jpg", probes[i], "image/jpeg")}, headers=key)

        jobs = [(enroll, i) for i in range(N_ENROLL)] + [(recognize, i) for i in range(N_RECOGNIZE)]
        # interleave: an enrollment every 10 recognitions, all in flight together
        jobs.sort(key=lambda job: job[1] * 10 if job[0] is enroll else job[1])
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=24) as pool:
            responses = list(pool.map(lambda job: (job[0].__name__, job[1], job[0](job[1])), jobs))
        elapsed = time.perf_counter() - started

    failures = [(kind, i, r.status_code, r.text[:200]) for kind, i, r in responses if r.status_code != 200]
    assert not failures, failures
    enrolled = [r.json() for kind, _, r in responses if kind == "enroll"]
    outcomes = [(p["status"], p["reasons"]) for e in enrolled for p in e["photos"]]
    assert outcomes == [("enrolled", [])] * N_ENROLL, outcomes
    recognized = [r.json() for kind, _, r in responses if kind == "recognize"]
    assert all(len(body["faces"]) == 1 for body in recognized)

    with runtime.db.session() as session:
        per_child = Counter(
            session.scalars(select(Face.child_id).where(Face.review_state == ReviewState.enrolled))
        )
        events = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "face.enrolled")
        )
    assert per_child == Counter({child_id: 1 for child_id in children}), "lost or duplicated faces"
    assert events == N_ENROLL
    differences = runtime.gallery.check()
    assert differences.clean, differences.summary()
    assert runtime.gallery.count == N_ENROLL
    print(f"{N_ENROLL} enrollments + {N_RECOGNIZE} recognitions in {elapsed:.1f} s")
