"""The consistency check: a face that does not look like the child is not enrolled without a confirmation.

Real photos, real models, both databases. People (see support.Photos): 0-5
are the six people of the group photo, 6 Tom Hanks, 7 the astronaut. Measured
with the default embedder: variations of one person score >= 0.97; person 0
against person 3 scores 0.81, against person 1 0.86.
"""

from __future__ import annotations

import csv
import io
import time
import zipfile

from fastapi.testclient import TestClient

from childface.services.runtime import Runtime

from .support import Photos, create_child, enroll


def _faces(client: TestClient, headers: dict[str, str], child_id: int) -> list[dict]:
    response = client.get(f"/children/{child_id}/faces", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _enrolled_events(client: TestClient, headers: dict[str, str]) -> list[dict]:
    response = client.get("/audit", params={"action": "face.enrolled", "limit": 200}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_a_face_closer_to_another_child_needs_a_confirmation(
    client: TestClient, auth, photos: Photos, runtime: Runtime  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    ada, ben = create_child(client, staff, "CA-1", "Ada"), create_child(client, staff, "CB-1", "Ben")
    assert enroll(client, staff, ada, photos.person(0, 0), photos.person(0, 1))["enrolled"] == 2
    assert enroll(client, staff, ben, photos.person(1, 0))["enrolled"] == 1
    events_before = len(_enrolled_events(client, admin))

    # another photo of Ada is enrolled silently; Ben's face sent for Ada is held back
    result = enroll(client, staff, ada, photos.person(0, 2), photos.person(1, 1))
    same, wrong = result["photos"]
    assert same["status"] == "enrolled" and same["consistency"] is None
    assert wrong["status"] == "needs_confirmation" and wrong["reasons"] == ["inconsistent_with_child"]
    assert wrong["enrolled_face_id"] is None and wrong["image_id"] is None
    check = wrong["consistency"]
    assert check["rule"] == "closer_to_other_child" and check["other_child_id"] == ben
    assert check["other_score"] > 0.97 > check["own_score"]
    assert "confirm=true" in wrong["message"]
    assert result["enrolled"] == 1 and len(_faces(client, staff, ada)) == 3
    assert len(_enrolled_events(client, admin)) == events_before + 1
    assert runtime.current_gallery().count == 4
    # nothing of the held-back photo is stored: its file neither
    sha = wrong["sha256"]
    assert not list((runtime.settings.media_dir / sha[:2] / sha[2:4]).glob(f"{sha}.*"))

    confirmed = enroll(client, staff, ada, photos.person(1, 1), confirm="true")["photos"][0]
    assert confirmed["status"] == "enrolled" and confirmed["consistency"]["rule"] == "closer_to_other_child"
    assert len(_faces(client, staff, ada)) == 4
    event = next(e for e in _enrolled_events(client, admin)
                 if e["after"]["face_id"] == confirmed["enrolled_face_id"])
    recorded = event["after"]["confirmed_despite_check"]
    assert recorded["rule"] == "closer_to_other_child" and recorded["other_child_id"] == ben
    assert recorded["own_score"] == check["own_score"]


def test_a_face_far_from_every_template_needs_a_confirmation(
    client: TestClient, auth, photos: Photos, runtime: Runtime  # noqa: ANN001
) -> None:
    # the runtime's thresholds: review 0.85; no margin, so "far" is below 0.85
    runtime.settings = runtime.settings.model_copy(update={"consistency_margin": 0.0})
    staff = auth("staff")
    ada = create_child(client, staff, "CF-1", "Ada")
    assert enroll(client, staff, ada, photos.person(0, 0))["enrolled"] == 1
    # person 3 is enrolled for nobody else: only the distance to Ada's own templates speaks
    wrong = enroll(client, staff, ada, photos.person(3, 0))["photos"][0]
    assert wrong["status"] == "needs_confirmation"
    check = wrong["consistency"]
    assert check["rule"] == "far_from_child" and check["other_child_id"] is None
    assert check["own_score"] < check["threshold"] == 0.85
    assert len(_faces(client, staff, ada)) == 1
    # an API key with the enroll scope gets the same answer
    by_key = enroll(client, auth(key="enroll"), ada, photos.person(3, 0))["photos"][0]
    assert by_key["status"] == "needs_confirmation"
    assert enroll(client, staff, ada, photos.person(3, 0), confirm="true")["enrolled"] == 1


def test_a_child_without_templates_is_never_checked(
    client: TestClient, auth, photos: Photos  # noqa: ANN001
) -> None:
    staff = auth("staff")
    ben = create_child(client, staff, "CN-1", "Ben")
    assert enroll(client, staff, ben, photos.person(1, 0))["enrolled"] == 1
    twin = create_child(client, staff, "CN-2", "Ben's twin")
    # looks exactly like Ben, but the new child has nothing to compare with
    first = enroll(client, staff, twin, photos.person(1, 1))["photos"][0]
    assert first["status"] == "enrolled" and first["consistency"] is None


def test_a_stored_photo_is_a_duplicate_before_any_check(
    client: TestClient, auth, photos: Photos  # noqa: ANN001
) -> None:
    staff = auth("staff")
    ada, ben = create_child(client, staff, "CD-1", "Ada"), create_child(client, staff, "CD-2", "Ben")
    enroll(client, staff, ada, photos.person(0, 0))
    ben_photo = photos.person(1, 0)
    enroll(client, staff, ben, ben_photo)
    again = enroll(client, staff, ada, ben_photo, confirm="true")["photos"][0]
    assert again["status"] == "duplicate" and again["consistency"] is None
    assert again["message"] == "this photo is already enrolled for another child"
    own = enroll(client, staff, ben, ben_photo)["photos"][0]
    assert own["message"] == "this photo is already enrolled for Ben"


def _import(client: TestClient, headers: dict[str, str], rows: list[tuple[str, str, bytes]],
            **form: str) -> tuple[dict, list[dict]]:
    """Import (child id, file name, photo) rows over HTTP; the finished run and its report rows."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for _, name, data in rows:
            archive.writestr(name, data)
    csv_text = "child_id,image\n" + "".join(f"{child},{name}\n" for child, name, _ in rows)
    files = {"csv": ("children.csv", csv_text.encode(), "text/csv"),
             "photos": ("photos.zip", buffer.getvalue(), "application/zip")}
    started = client.post("/imports", files=files, data=form, headers=headers)
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 120
    url = f"/imports/{started.json()['id']}"
    while (run := client.get(url, headers=headers).json())["status"] == "running":
        assert time.monotonic() < deadline, "the import did not end"
        time.sleep(0.2)
    assert run["status"] == "finished", run
    report = client.get(f"/imports/{run['id']}/report", headers=headers)
    assert report.status_code == 200, report.text
    return run, list(csv.DictReader(io.StringIO(report.text)))


def test_import_rows_are_checked_noted_and_refused_when_strict(
    client: TestClient, auth, photos: Photos  # noqa: ANN001
) -> None:
    staff = auth("staff")
    ben = create_child(client, staff, "IB-1", "Ben")
    enroll(client, staff, ben, photos.person(1, 0))
    rows = [("IA-1", "ada0.jpg", photos.person(0, 0)), ("IA-1", "ada1.jpg", photos.person(0, 1)),
            ("IA-1", "ben-as-ada.jpg", photos.person(1, 1))]  # Ben's face in Ada's rows
    run, report = _import(client, staff, rows)
    assert [r["status"] for r in report] == ["imported"] * 3
    assert [r["reason"].split(":")[0] for r in report] == ["", "", "inconsistent_with_child"]
    assert "best other child (IB-1)" in report[2]["reason"]
    assert run["counts"]["imported"] == 3 and run["counts"]["inconsistent"] == 1

    strict_rows = [("IS-1", "s0.jpg", photos.person(2, 0)), ("IS-1", "s1.jpg", photos.person(2, 1)),
                   ("IS-1", "ben-as-s.jpg", photos.person(1, 2))]
    run, report = _import(client, staff, strict_rows, strict="true")
    assert [r["status"] for r in report] == ["imported", "imported", "refused"]
    assert report[2]["reason"].startswith("inconsistent_with_child: ") and not report[2]["face_id"]
    assert run["counts"]["refused"] == 1 and run["counts"]["inconsistent"] == 1
    child = client.get("/children", params={"q": "IS-1"}, headers=staff).json()["items"][0]
    assert len(_faces(client, staff, child["id"])) == 2
