"""`/models`: list, re-embed in the background with progress, switch and back; admin only (both back ends)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from childface.db.models import ReembedJob
from childface.services import reembedding
from childface.services.runtime import Runtime
from services.models_support import STAFF, arcface_spec, save_arcface

from .support import Photos, create_child, enroll, recognize


def wait_for_job(client: TestClient, admin: dict[str, str], timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get("/models/reembed", headers=admin).json()
        if job["status"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_reembed_in_the_background_then_switch_and_back(
    client: TestClient, auth: Callable[..., dict[str, str]], runtime: Runtime, photos: Photos, tmp_path: Path
) -> None:
    admin, staff = auth("admin"), auth("staff")
    for person in range(3):
        child = create_child(client, staff, f"K{person}")
        enroll(client, staff, child, photos.person(person, 0), photos.person(person, 1))
    assert client.get("/models", headers=staff).status_code == 403
    assert client.post("/models/reembed", json={}, headers=staff).status_code == 403
    listed = client.get("/models", headers=admin).json()
    (old,) = listed["models"]
    assert (old["state"], old["coverage"], old["enrolled_faces"]) == ("current", 1.0, 6)
    assert listed["serving"] == old["key"] and listed["note"] is None
    assert client.get("/models/reembed", headers=admin).status_code == 404

    weights = save_arcface(tmp_path / "backbone.pth")
    missing = client.post("/models/reembed", headers=admin,
                          json={"embedder": "arcface", "weights": str(tmp_path / "nope.pth"), "arch": "mbf"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "model_unloadable"
    # one job at a time, whichever process runs it
    target = reembedding.load_target(runtime.db, runtime.settings, arcface_spec(weights))
    blocking = reembedding.start_job(runtime.db, STAFF, target.model_id)
    body = {"embedder": "arcface", "weights": str(weights), "arch": "mbf", "flip": False, "batch_size": 2}
    busy = client.post("/models/reembed", json=body, headers=admin)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "reembed_running"
    with runtime.db.transaction() as session:
        session.get(ReembedJob, blocking).status = "cancelled"

    started = client.post("/models/reembed", json=body, headers=admin)
    assert started.status_code == 202, started.text
    assert started.json()["model_key"] == target.key and started.json()["total"] == 6
    job = wait_for_job(client, admin)
    assert (job["status"], job["done"], job["failed"], job["eta_s"]) == ("finished", 6, 0, None)
    assert job["faces_per_s"] > 0 and job["started_by"] == "user:admin"
    models = {m["key"]: m for m in client.get("/models", headers=admin).json()["models"]}
    assert models[target.key]["state"] == "available" and models[target.key]["coverage"] == 1.0
    assert models[target.key]["spec"] == {"embedder": "arcface", "weights": "backbone.pth", "arch": "mbf",
                                          "flip": False, "thresholds": None}
    probe = photos.person(1, 4)
    assert recognize(client, staff, probe)["model_id"] == old["key"]  # unchanged until the switch

    switched = client.post(f"/models/{target.key}/switch", headers=admin,
                           json={"accept_threshold": 0.5, "review_threshold": 0.4})
    assert switched.status_code == 200, switched.text
    assert switched.json()["before"] == old["key"] and switched.json()["thresholds"] == {
        "accept_threshold": 0.5, "review_threshold": 0.4}
    assert client.get("/models", headers=admin).json()["serving"] == target.key
    assert recognize(client, staff, probe)["model_id"] == target.key
    view = client.get("/admin/settings", headers=admin).json()
    assert (view["model_id"], view["accept_threshold"], view["configured"]["accept_threshold"]) == (
        target.key, 0.5, 0.5)
    again = client.post(f"/models/{target.key}/switch", json={}, headers=admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_current"
    unknown = client.post("/models/nomodel:00/switch", json={}, headers=admin)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "no_model"

    back = client.post(f"/models/{old['key']}/switch", json={}, headers=admin)
    assert back.status_code == 200, back.text
    assert recognize(client, staff, probe)["model_id"] == old["key"]
    configured = runtime.settings.accept_threshold
    assert client.get("/admin/settings", headers=admin).json()["accept_threshold"] == configured
