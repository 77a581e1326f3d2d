"""GET / PATCH /admin/settings: thresholds changed at run time, audited, in force at once in every process."""

from __future__ import annotations

from fastapi.testclient import TestClient

from childface.api.app import create_app
from childface.services.runtime import Runtime

from .support import THRESHOLDS, Photos, create_child, enroll, recognize
from .test_recognition import _probe


def _audit(client: TestClient, headers: dict[str, str]) -> list[dict]:
    response = client.get("/audit", params={"action": "settings.changed"}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_a_threshold_change_is_audited_and_decides_at_once_in_every_process(
    client: TestClient, auth, photos: Photos, runtime: Runtime, pipeline  # noqa: ANN001
) -> None:
    replica_runtime = Runtime(
        runtime.settings.model_copy(update={"index_dir": runtime.settings.media_dir.parent / "replica"}),
        pipeline=pipeline,
    )
    replica_runtime.start(autosave=False)
    try:
        with TestClient(create_app(replica_runtime.settings, replica_runtime)) as replica:
            admin, key = auth("admin"), auth(key="recognize")
            eileen = create_child(client, auth("staff"), "E-7", "Eileen")
            enroll(client, auth("staff"), eileen, photos.person(7, 0), photos.person(7, 1))
            probe = _probe(photos, 7, 5)
            first = recognize(replica, key, probe)["faces"][0]
            assert first["decision"] == "match"
            score = first["candidates"][0]["score"]
            assert THRESHOLDS["accept_threshold"] <= score < 0.999

            # the first process changes the accept threshold; the replica decides with it at once
            changed = client.patch("/admin/settings", json={"accept_threshold": 0.999}, headers=admin)
            assert changed.status_code == 200, changed.text
            body = changed.json()
            assert body["accept_threshold"] == 0.999 and body["review_threshold"] == 0.85
            assert body["configured"]["accept_threshold"] == THRESHOLDS["accept_threshold"]
            assert body["changed"]["accept_threshold"]["updated_by"] == "user:admin"
            assert recognize(replica, key, probe)["faces"][0]["decision"] == "review"
            seen = replica.get("/admin/settings", headers=admin).json()
            assert seen["accept_threshold"] == 0.999 and set(seen["changed"]) == {"accept_threshold"}

            (event,) = _audit(client, admin)
            assert event["actor"] == "user:admin"
            assert event["before"] == {"accept_threshold": 0.95}
            assert event["after"] == {"accept_threshold": 0.999}

            # the replica changes it back (null: the configured value): the first process follows
            reset = replica.patch("/admin/settings", json={"accept_threshold": None}, headers=admin)
            assert reset.status_code == 200 and reset.json()["changed"] == {}, reset.text
            assert recognize(client, key, probe)["faces"][0]["decision"] == "match"
            assert recognize(replica, key, probe)["faces"][0]["decision"] == "match"
            assert len(_audit(client, admin)) == 2
    finally:
        replica_runtime.close()


def test_a_new_process_starts_with_the_stored_thresholds(
    client: TestClient, auth, runtime: Runtime, pipeline  # noqa: ANN001
) -> None:
    admin = auth("admin")
    body = {"review_threshold": 0.8, "match_margin": 0.05, "top_k": 3}
    assert client.patch("/admin/settings", json=body, headers=admin).status_code == 200
    later = Runtime(
        runtime.configured_settings.model_copy(update={"index_dir": runtime.settings.media_dir.parent / "b"}),
        pipeline=pipeline,
    )
    later.start(autosave=False)
    try:
        assert later.settings.review_threshold == 0.8 and later.settings.top_k == 3
        assert later.settings.match_margin == 0.05 and later.settings.accept_threshold == 0.95
        assert later.configured_settings.review_threshold == 0.85
    finally:
        later.close()


def test_invalid_settings_are_refused_and_change_nothing(client: TestClient, auth) -> None:  # noqa: ANN001
    admin = auth("admin")
    cases = [
        ({"review_threshold": 0.97}, 400, "the review threshold must not be above the accept threshold"),
        ({"accept_threshold": 1.5}, 400, "accept_threshold: Input should be less than or equal to 1"),
        ({"top_k": 0}, 400, "top_k: Input should be greater than or equal to 1"),
        ({"match_margin": -0.1}, 400, "match_margin"),
        ({"max_upload_bytes": 10}, 422, "max_upload_bytes"),
        ({"accept_threshold": "high"}, 422, "accept_threshold"),
    ]
    for body, status, words in cases:
        response = client.patch("/admin/settings", json=body, headers=admin)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert words in error["message"], (body, error)
        if status == 400:
            assert error["code"] == "invalid_settings"
    # lowering both at once is fine: checked as a whole
    both = client.patch("/admin/settings", json={"accept_threshold": 0.9, "review_threshold": 0.88},
                        headers=admin)
    assert both.status_code == 200, both.text
    again = client.patch("/admin/settings", json={"accept_threshold": 0.9}, headers=admin)
    assert again.status_code == 200  # nothing to change: no event
    events = _audit(client, admin)
    assert [e["after"] for e in events] == [{"accept_threshold": 0.9, "review_threshold": 0.88}]
    assert client.patch("/admin/settings", json={"top_k": 3}, headers=auth("staff")).status_code == 403
    assert client.get("/admin/settings", headers=auth("staff")).status_code == 403
