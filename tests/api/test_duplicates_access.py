"""GET /review/duplicates is for staff, and on real faces it answers as the brute-force definition does."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import select

from childface.db.models import Child, ChildStatus, Embedding, Face, ReviewState
from services.duplicates_reference import brute_force_pairs

from .support import Photos, create_child, enroll


def test_only_staff_may_compare_every_child_with_every_other(client: TestClient, auth) -> None:  # noqa: ANN001
    allowed = {"staff": auth("staff"), "admin": auth("admin"), "enroll key": auth(key="enroll"),
               "admin key": auth(key="admin")}
    refused = {"viewer": auth("viewer"), "recognize key": auth(key="recognize")}
    for who, headers in allowed.items():
        assert client.get("/review/duplicates", headers=headers).status_code == 200, who
    for who, headers in refused.items():
        response = client.get("/review/duplicates", headers=headers)
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden", who
    assert client.get("/review/duplicates").status_code == 401


def test_report_on_real_faces_matches_brute_force(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    for person in range(len(photos.people)):
        child = create_child(client, staff, f"P{person}")
        enroll(client, staff, child, *(photos.person(person, n) for n in range(1 + person % 3)))
    for person in (2, 7):  # enrolled twice, under a second record
        enroll(client, staff, create_child(client, staff, f"P{person}-again"), photos.person(person, 5))
    with runtime.db.session() as session:
        rows = session.execute(
            select(Face.id, Face.child_id, Embedding.vector)
            .join(Embedding, Embedding.face_id == Face.id)
            .join(Child, Child.id == Face.child_id)
            .where(Face.review_state == ReviewState.enrolled, Child.status == ChildStatus.active)
        ).all()
    templates = [(r.id, r.child_id, np.frombuffer(r.vector, dtype="<f4")) for r in rows]
    for threshold in (0.95, 0.85, 0.6):
        for limit in (1, 3, 100):
            body = client.get(
                "/review/duplicates", params={"threshold": threshold, "limit": limit}, headers=staff
            ).json()
            found = [
                (p["a"]["child_id"], p["b"]["child_id"], p["score"], p["a"]["face_id"], p["b"]["face_id"])
                for p in body["pairs"]
            ]
            expected = brute_force_pairs(templates, threshold=threshold, limit=limit)
            assert [f[:2] + f[3:] for f in found] == [e[:2] + e[3:] for e in expected], (threshold, limit)
            assert all(abs(f[2] - e[2]) <= 2e-6 for f, e in zip(found, expected, strict=True))
    top = client.get("/review/duplicates", headers=staff).json()["pairs"]
    twice = {("P2", "P2-again"), ("P7", "P7-again")}
    assert {(p["a"]["external_id"], p["b"]["external_id"]) for p in top[:2]} == twice
