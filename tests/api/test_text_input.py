"""Text and imports over HTTP: one text check for every field, hostile imports, one import at a time.

Both back ends (the `settings` fixture runs each test on SQLite and PostgreSQL),
real photos through the real pipeline, zips built here.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from childface.db.models import Face, Image
from childface.services import importing
from services.zips import ZIP_ROWS, damaged_zip

from .support import Photos


def test_every_text_field_is_normalised_and_checked(client: TestClient, auth) -> None:  # noqa: ANN001
    staff, admin = auth("staff"), auth("admin")
    reversed_name = client.post("/children", json={"external_id": "B1", "name": "\u202eadA"}, headers=staff)
    assert reversed_name.status_code == 400
    assert reversed_name.json()["error"] == {
        "code": "invalid_input",
        "message": "display_name contains U+202E (right-to-left override) at position 1",
    }
    for body in ({"external_id": "B\u20662", "name": "Ada"}, {"external_id": "B3", "name": "Ada\x1b[31m"},
                 {"external_id": "B4", "name": "Ada", "group": "A\u2028B"},
                 {"external_id": "B5", "name": "Ada", "notes": "fine\n\tthen \x00"},
                 {"external_id": "B6", "name": "Ada", "consent_recorded_by": "Mr\u200b X"}):
        response = client.post("/children", json=body, headers=staff)
        assert response.status_code in {400, 422}, body
        assert response.json()["error"]["code"] == "invalid_input"

    # NFKC: a full-width id is the same id as the ASCII one
    wide = client.post("/children", json={"external_id": "\uff23\uff10\uff10\uff11", "name": "Ｃｌｅｏ",
                                          "notes": "line one\r\n\tline two"}, headers=staff)
    assert wide.status_code == 201, wide.text
    assert (wide.json()["external_id"], wide.json()["name"]) == ("C001", "Cleo")
    assert wide.json()["notes"] == "line one\n\tline two"  # notes keep line feeds and tabs
    same = client.post("/children", json={"external_id": "C001", "name": "Cleo"}, headers=staff)
    assert same.status_code == 409
    renamed = client.patch(f"/children/{wide.json()['id']}", json={"name": "Cl\u202eeo"}, headers=staff)
    assert renamed.status_code == 400 and "U+202E" in renamed.json()["error"]["message"]

    user = client.post("/admin/users", json={"username": "ev\u202eil", "password": "long enough pw"},
                       headers=admin)
    assert user.status_code == 400 and user.json()["error"]["code"] == "invalid_username"
    key = client.post("/admin/api-keys", json={"name": "door\u200f", "scopes": ["recognize"]}, headers=admin)
    assert key.status_code == 400 and key.json()["error"]["code"] == "invalid_name"


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _upload(csv_text: str, archive: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"csv": ("children.csv", csv_text.encode(), "text/csv"),
            "photos": ("photos.zip", archive, "application/zip")}


def _wait(client: TestClient, headers: dict[str, str], run_id: int) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = client.get(f"/imports/{run_id}", headers=headers).json()
        if run["status"] != "running":
            return run
        time.sleep(0.2)
    raise AssertionError(f"import run {run_id} did not end")


def test_nul_in_csv_is_a_refused_row_not_a_server_error(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    archive = _zip({"a.jpg": photos.person(0, 0), "b.jpg": photos.person(1, 0), "c.jpg": photos.person(2, 0)})
    csv_text = "child_id,image,name\nN\x001,a.jpg,Ada\nN2,b.jpg,B\x00en\nN3,c.jpg,Cleo\n"
    check = client.post("/imports/check", files=_upload(csv_text, archive), headers=staff)
    assert check.status_code == 200, check.text
    rows = check.json()["rows"]
    assert [r["action"] for r in rows] == ["refused", "refused", "import"]
    assert rows[0]["child_id"] == "N\\x001" and "child id contains U+0000" in rows[0]["reason"]
    assert "name contains U+0000" in rows[1]["reason"]

    started = client.post("/imports", files=_upload(csv_text, archive), headers=staff)
    assert started.status_code == 202, started.text
    run = _wait(client, staff, started.json()["id"])
    assert run["status"] == "finished"
    assert (run["counts"]["imported"], run["counts"]["refused"]) == (1, 2)


def test_damaged_zip_members_are_refused_rows_over_http(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    csv_text = "child_id,image\n" + "".join(f"Z{i},{name}.jpg\n" for i, name in enumerate(ZIP_ROWS))
    check = client.post("/imports/check", files=_upload(csv_text, damaged_zip(photos.person(3, 0))),
                        headers=staff)
    assert check.status_code == 200, check.text
    actions = {r["image"]: (r["action"], r["reason"]) for r in check.json()["rows"]}
    assert actions.pop("good.jpg")[0] == "import"
    assert all(action == "refused" and reason for action, reason in actions.values()), actions


def test_three_simultaneous_imports_one_runs(
    client: TestClient, auth, photos: Photos, runtime, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    staff = auth("staff")
    files = {f"p{i}.jpg": photos.person(i, i) for i in range(6)}
    csv_text = "child_id,image\n" + "".join(f"K{i},p{i}.jpg\n" for i in range(6))
    archive = _zip(files)
    # the three requests reach the start of their run together (after their dry runs)
    together = threading.Barrier(3, timeout=60)
    real_start: Callable[..., int] = importing.start_run

    def start_together(**kwargs: object) -> int:
        together.wait()
        return real_start(**kwargs)

    monkeypatch.setattr(importing, "start_run", start_together)
    answers: list = []

    def post() -> None:
        answers.append(client.post("/imports", files=_upload(csv_text, archive), headers=staff))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202, 409, 409], [a.text for a in answers]
    refused = [a.json()["error"] for a in answers if a.status_code == 409]
    assert {e["code"] for e in refused} == {"import_running"}
    assert all("another import is running" in e["message"] for e in refused)
    (accepted,) = [a.json() for a in answers if a.status_code == 202]
    assert _wait(client, staff, accepted["id"])["counts"]["imported"] == 6
    with runtime.db.session() as session:
        assert session.scalar(select(func.count(Face.id))) == 6  # one template per photo
        assert session.scalar(select(func.count(Image.id))) == 6
