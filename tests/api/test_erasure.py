"""Erasure: everything of the child goes (photos, faces, embeddings, index entries, review faces that
propose it, children merged into it, identifying values in earlier audit events, import reports and
logs); the audit keeps a tombstone with ids, counts, who and when."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from childface.db import Actor
from childface.db.models import AuditEvent, Child, Embedding, Face, Image, RemovedFace, ReviewItem
from childface.services import importing

from .support import Photos, box_text, create_child, enroll, recognize

ERASE = {"confirm": "ERASE"}


def _files(runtime) -> set[str]:  # noqa: ANN001
    return {p.name for p in runtime.settings.media_dir.rglob("*") if p.is_file()}


def _count(runtime, model, *where) -> int:  # noqa: ANN001
    with runtime.db.session() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _tombstones(client: TestClient, headers: dict[str, str]) -> list[dict]:
    return client.get("/audit", params={"action": "child.erased"}, headers=headers).json()["items"]


def _review_probe(client: TestClient, headers: dict[str, str], photo: bytes, child_id: int) -> dict:
    """Recognise a photo that must end in review proposing `child_id`; returns its review item."""
    (face,) = recognize(client, headers, photo)["faces"]
    assert face["decision"] == "review" and face["review_id"] is not None, face
    item = client.get(f"/review/{face['review_id']}", headers=headers).json()
    assert child_id in [c["child_id"] for c in item["candidates"]], item
    return item


def test_erase_child(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff, admin = auth("staff"), auth("admin")
    eileen = create_child(client, staff, "E-42", "Eileen Collins")
    tom = create_child(client, staff, "T-1", "Tom")
    own = enroll(client, staff, eileen, photos.person(7, 0), photos.person(7, 1))
    group_faces = client.post(
        "/detect", files={"file": ("t1.jpg", photos.group, "image/jpeg")}, headers=staff
    ).json()["faces"]
    shared_e = enroll(client, staff, eileen, photos.group, hint_box=box_text(group_faces[0]["box"]))
    shared_t = enroll(client, staff, tom, photos.group, hint_box=box_text(group_faces[1]["box"]))
    _review_probe(client, staff, photos.person(3, 0), eileen)  # a review face proposing Eileen
    eileen_faces = [p["enrolled_face_id"] for p in own["photos"] + shared_e["photos"]]
    own_files = {f"{p['sha256']}.jpg" for p in own["photos"]}
    assert own_files <= _files(runtime)

    assert client.post(f"/children/{eileen}/erase", json=ERASE, headers=staff).status_code == 403
    unconfirmed = client.post(f"/children/{eileen}/erase", json={"confirm": "yes"}, headers=admin)
    assert unconfirmed.status_code == 400 and unconfirmed.json()["error"]["code"] == "confirmation_required"
    erased = client.post(f"/children/{eileen}/erase", json=ERASE, headers=admin)
    assert erased.status_code == 200, erased.text
    # her three faces and the review face that proposed her, with their photos (not the group photo)
    assert erased.json() == {
        "child_id": eileen,
        "external_id": "E-42",
        "faces_deleted": 4,
        "images_deleted": 3,
        "files_deleted": 3,
    }

    # files of her own photos are gone; the group photo stays for Tom's face
    assert not own_files & _files(runtime)
    assert f"{shared_t['photos'][0]['sha256']}.jpg" in _files(runtime)
    assert _count(runtime, Face, Face.id.in_(eileen_faces)) == 0
    assert _count(runtime, Embedding, Embedding.face_id.in_(eileen_faces)) == 0
    assert _count(runtime, Image) == 1  # the group photo
    assert not any(runtime.gallery._children.index.contains(f) for f in eileen_faces)  # noqa: SLF001
    assert runtime.gallery.check().clean
    assert client.get(f"/children/{eileen}", headers=staff).status_code == 404
    (face,) = recognize(client, staff, photos.person(7, 5))["faces"]
    assert eileen not in [c["child_id"] for c in face["candidates"]]
    assert client.post(f"/children/{eileen}/erase", json=ERASE, headers=admin).status_code == 404

    # the tombstone: who and when, the child ids and counts; no external id, name, photo or geometry
    history = client.get(f"/children/{eileen}/history", headers=staff).json()["items"]
    tombstone = history[0]
    assert tombstone["action"] == "child.erased" and tombstone["actor"] == "user:admin"
    assert tombstone["before"] is None
    assert tombstone["after"] == {
        "erased": True,
        "child_ids": [eileen],
        "faces_deleted": 4,
        "images_deleted": 3,
    }
    assert set(eileen_faces) < set(tombstone["face_ids"])
    text = json.dumps(tombstone)
    assert "Eileen" not in text and "E-42" not in text and "sha" not in text and "box" not in text


def test_erasure_deletes_review_faces_that_propose_the_child(
    client: TestClient,
    auth,
    photos: Photos,
    runtime,  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    eileen = create_child(client, staff, "E-42", "Eileen Collins")
    tom = create_child(client, staff, "T-1", "Tom")
    enroll(client, staff, eileen, photos.person(7, 0), photos.person(7, 1))
    enroll(client, staff, tom, photos.person(0, 0), photos.person(0, 1))
    pending = _review_probe(client, staff, photos.person(3, 0), eileen)
    decided = _review_probe(client, staff, photos.person(3, 2), eileen)
    resolved = client.post(f"/review/{decided['id']}/resolve", json={"action": "dismiss"}, headers=staff)
    assert resolved.status_code == 200, resolved.text
    pending_face = pending["face"]["id"]
    assert client.get(f"/faces/{pending_face}/thumbnail", headers=staff).status_code == 200
    files_before = len(_files(runtime))

    erased = client.post(f"/children/{eileen}/erase", json=ERASE, headers=admin)
    assert erased.status_code == 200, erased.text

    # the pending face went with its embedding, review item and photo (its only face)
    assert client.get(f"/faces/{pending_face}/thumbnail", headers=staff).status_code == 404
    assert client.get(f"/faces/{pending_face}", headers=staff).status_code == 404
    assert client.get(f"/review/{pending['id']}", headers=staff).status_code == 404
    assert _count(runtime, Embedding, Embedding.face_id == pending_face) == 0
    assert erased.json()["files_deleted"] == 3 and len(_files(runtime)) == files_before - 3
    assert pending_face in _tombstones(client, staff)[0]["face_ids"]
    # nothing in the queue proposes her any more; the decided item stays, without her as a candidate
    for status in ("open", "resolved"):
        queue = client.get("/review/queue", params={"status": status}, headers=staff).json()["items"]
        assert all(eileen not in [c["child_id"] for c in item["candidates"]] for item in queue)
    kept = client.get(f"/review/{decided['id']}", headers=staff).json()
    assert kept["status"] == "resolved" and eileen not in [c["child_id"] for c in kept["candidates"]]
    assert client.get(f"/faces/{decided['face']['id']}/thumbnail", headers=staff).status_code == 200
    with runtime.db.session() as session:
        for item in session.scalars(select(ReviewItem)):
            assert eileen not in [c["child_id"] for c in item.candidates]


def test_erasure_purges_the_childs_removed_faces_and_their_photos(
    client: TestClient, auth, photos: Photos, runtime  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    eileen = create_child(client, staff, "E-42", "Eileen Collins")
    tom = create_child(client, staff, "T-1", "Tom")
    own = enroll(client, staff, eileen, photos.person(7, 0), photos.person(7, 1))
    group_faces = client.post(
        "/detect", files={"file": ("t1.jpg", photos.group, "image/jpeg")}, headers=staff
    ).json()["faces"]
    shared_e = enroll(client, staff, eileen, photos.group, hint_box=box_text(group_faces[0]["box"]),
                      confirm="true")
    shared_t = enroll(client, staff, tom, photos.group, hint_box=box_text(group_faces[1]["box"]))
    tom_own = enroll(client, staff, tom, photos.person(1, 2))
    pending = _review_probe(client, staff, photos.person(3, 0), eileen)
    # removed, kept for undo: a face of her own photo, hers on the group photo, a review face proposing
    # her, and one of Tom's
    hers = [p["enrolled_face_id"] for p in (own["photos"][0], shared_e["photos"][0])]
    hers.append(pending["face"]["id"])
    toms = tom_own["photos"][0]["enrolled_face_id"]
    assert None not in (*hers, toms)
    for face in (*hers, toms):
        assert client.delete(f"/faces/{face}", headers=staff).status_code == 200
    removals = {
        int(e["target_id"]): e["seq"]
        for e in client.get("/audit", params={"action": "face.removed"}, headers=staff).json()["items"]
    }
    review_file = f"{hashlib.sha256(photos.person(3, 0)).hexdigest()}.jpg"
    assert review_file in _files(runtime)
    kept_file = f"{own['photos'][0]['sha256']}.jpg"
    assert kept_file in _files(runtime) and _count(runtime, RemovedFace) == 4

    erased = client.post(f"/children/{eileen}/erase", json=ERASE, headers=admin)
    assert erased.status_code == 200, erased.text
    # her live face and the three removed ones; her two photos and the review photo (not the group photo)
    assert erased.json()["faces_deleted"] == 4
    assert erased.json()["images_deleted"] == erased.json()["files_deleted"] == 3

    with runtime.db.session() as session:
        assert list(session.scalars(select(RemovedFace.face_id))) == [toms]
    assert not {f"{p['sha256']}.jpg" for p in own["photos"]} & _files(runtime)
    assert review_file not in _files(runtime)
    assert f"{shared_t['photos'][0]['sha256']}.jpg" in _files(runtime)
    assert set(hers) <= set(_tombstones(client, staff)[0]["face_ids"])
    # her removals cannot be undone any more: erasure is irreversible; Tom's still can
    for face in hers:
        answer = client.post(f"/audit/{removals[face]}/undo", headers=staff)
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "irreversible", answer.text
    assert client.post(f"/audit/{removals[toms]}/undo", headers=staff).status_code == 200
    assert client.get(f"/faces/{toms}", headers=staff).status_code == 200
    assert runtime.gallery.check().clean


def test_erasure_takes_the_children_merged_into_it(
    client: TestClient,
    auth,
    photos: Photos,
    runtime,  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    keeper = create_child(client, staff, "K-1", "Kept Child")
    a = create_child(client, staff, "A-1", "Ada First")
    b = create_child(client, staff, "B-1", "Bea Second")
    c = create_child(client, staff, "C-1", "Cleo Third")
    enroll(client, staff, keeper, photos.person(0, 0))
    enroll(client, staff, a, photos.person(7, 0))
    enroll(client, staff, b, photos.person(5, 0))
    enroll(client, staff, c, photos.person(4, 0))
    # a chain: C into B, then B into A
    for target, source in ((b, c), (a, b)):
        merged = client.post(f"/children/{target}/merge", json={"source_id": source}, headers=staff)
        assert merged.status_code == 200, merged.text
    faces = [f["id"] for f in client.get(f"/children/{a}/faces", headers=staff).json()]
    assert len(faces) == 3
    events_before = client.get("/audit", headers=staff).json()["total"]

    erased = client.post(f"/children/{a}/erase", json=ERASE, headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["faces_deleted"] == 3 and erased.json()["files_deleted"] == 3

    for child in (a, b, c):
        assert client.get(f"/children/{child}", headers=staff).status_code == 404
    assert client.get(f"/children/{keeper}", headers=staff).status_code == 200
    assert _count(runtime, Child) == 1
    assert _count(runtime, Face) == 1 and _count(runtime, Image) == 1
    # one unit of work, one event, listing every child and face it erased
    assert client.get("/audit", headers=staff).json()["total"] == events_before + 1
    (tombstone,) = _tombstones(client, staff)
    assert tombstone["after"]["child_ids"] == [a, b, c]
    assert tombstone["face_ids"] == sorted(faces)
    for child in (b, c):  # each erased child's history shows the erasure
        history = client.get(f"/children/{child}/history", headers=staff).json()["items"]
        assert history[0]["seq"] == tombstone["seq"]
    export = client.get("/audit.csv", headers=staff).text + client.get("/audit?limit=500", headers=staff).text
    for secret in ("A-1", "B-1", "C-1", "Ada First", "Bea Second", "Cleo Third"):
        assert secret not in export, secret
    assert "Kept Child" in export
    assert runtime.gallery.check().clean


def test_no_identifying_value_survives_in_audit_reports_or_logs(
    client: TestClient,
    auth,
    photos: Photos,
    runtime,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    caplog.set_level(logging.DEBUG)
    staff, admin = auth("staff"), auth("admin")
    secrets = [
        "ZQ-77",
        "ZQ-old",
        "Zelda Quincy",
        "Zelda Old-Name",
        "Hedgehogs-17",
        "allergic to kiwi",
        "Ms Consentgiver",
        "Žofie Nováková",
    ]
    created = client.post(
        "/children",
        json={
            "external_id": "ZQ-old",
            "name": "Zelda Old-Name",
            "group": "Hedgehogs-17",
            "notes": "allergic to kiwi",
            "consent_recorded_by": "Ms Consentgiver",
        },
        headers=staff,
    )
    assert created.status_code == 201, created.text
    zelda = created.json()["id"]
    changed = client.patch(
        f"/children/{zelda}", json={"external_id": "ZQ-77", "name": "Zelda Quincy"}, headers=staff
    )
    assert changed.status_code == 200, changed.text
    twin = create_child(client, staff, "ZN-2", "Žofie Nováková")  # a duplicate record, merged into Zelda
    assert client.post(f"/children/{zelda}/merge", json={"source_id": twin}, headers=staff).status_code == 200
    for action in ("archive", "unarchive"):
        assert client.post(f"/children/{zelda}/{action}", headers=staff).status_code == 200
    keeper = create_child(client, staff, "KEEP-1", "Kept Child")

    # a real import whose stored report has a line of Zelda's and one of another child
    images = tmp_path / "images"
    images.mkdir()
    (images / "z.jpg").write_bytes(photos.person(7, 0))
    (images / "k.jpg").write_bytes(photos.person(0, 0))
    report = tmp_path / "report.csv"
    result = importing.run_import(
        db=runtime.db,
        media=runtime.media,
        pipeline=runtime.pipeline,
        model_db_id=runtime.model_db_id,
        table=importing.read_table("child_id,image\nZQ-77,z.jpg\nKEEP-1,k.jpg\n"),
        source=importing.FolderSource(images, max_bytes=20 * 1024 * 1024),
        actor=Actor("user", "importer"),
        source_name="children.csv",
        max_pixels=runtime.settings.max_image_pixels,
        report_path=report,
        after_commit=runtime.catch_up,
    )
    assert result.counts["imported"] == 2, result
    assert "ZQ-77" in report.read_text()
    with runtime.db.session() as session:
        seqs_before = list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))

    erased = client.post(f"/children/{zelda}/erase", json=ERASE, headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["external_id"] == "ZQ-77"  # the caller is told what it erased

    listing = client.get("/audit?limit=500", headers=staff)
    export = (
        client.get("/audit.csv", headers=staff).text + client.get("/audit?format=csv", headers=staff).text
    )
    history = client.get(f"/children/{zelda}/history?limit=500", headers=staff).text
    with runtime.db.session() as session:
        rows = json.dumps(
            [[e.target_id, e.before, e.after] for e in session.scalars(select(AuditEvent))],
            ensure_ascii=False,
        )
        seqs_after = list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
    lines = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        for where, text in (
            ("listing", listing.text),
            ("export", export),
            ("history", history),
            ("rows", rows),
            ("report", report.read_text()),
            ("log", lines),
        ):
            assert secret not in text and json.dumps(secret)[1:-1] not in text, (secret, where)
    # history keeps its shape: every event is still there, redacted in place, plus the tombstone
    assert seqs_after[:-1] == seqs_before
    items = listing.json()["items"]
    created_event = next(e for e in items if e["action"] == "child.created" and e["child_id"] == zelda)
    assert created_event["after"]["name"] == "[erased]" and created_event["actor"] == "user:staff"
    assert created_event["after"]["status"] == "active"
    assert any(e["action"] == "child.merged" for e in items)
    # the other child's line stays in the report, and its name in the audit
    report_rows = list(csv.DictReader(io.StringIO(report.read_text())))
    assert [r["child_id"] for r in report_rows] == ["KEEP-1"]
    assert "Kept Child" in listing.text
    assert client.get(f"/children/{keeper}", headers=staff).json()["name"] == "Kept Child"


def test_any_event_that_mentions_the_child_is_redacted_but_a_namesake_is_not(
    client: TestClient,
    auth,
    runtime,  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    zelda = create_child(client, staff, "ZQ-77", "Zelda Quincy")
    namesake = create_child(client, staff, "ZQ-78", "Zelda Quincy")  # another child, same name
    # an event that belongs to no child but mentions her (e.g. a note from a future kind of event)
    with runtime.db.unit_of_work(Actor("system", "test")) as uow:
        uow.audit(
            "note.added",
            target_type="note",
            after={
                "text": "photo day: Zelda Quincy came late",
                "who": "ZQ-77",
                "other": {"external_id": "ZQ-78", "name": "Zelda Quincy"},
                "count": 2,
            },
        )

    assert client.post(f"/children/{zelda}/erase", json=ERASE, headers=admin).status_code == 200

    (note,) = client.get("/audit", params={"action": "note.added"}, headers=staff).json()["items"]
    assert note["after"] == {
        "text": "[erased]",
        "who": "[erased]",
        "other": {"external_id": "ZQ-78", "name": "Zelda Quincy"},
        "count": 2,
    }
    history = client.get(f"/children/{namesake}/history", headers=staff).json()["items"]
    assert history[-1]["after"]["name"] == "Zelda Quincy"
