"""`verify` finds each kind of damage, `--repair` repairs what it can, `/readyz` tells (both back ends).

A small real deployment: four children, two enrolled photos each (real faces through the real
pipeline). Damage is done the way it happens, behind the application's back: bytes flipped in a
stored photo, raw SQL on the embeddings table, a photo file deleted.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    Photos,
    photos,
    pipeline,
    runtime,
)
from childface.api.app import create_app
from childface.db import Actor
from childface.db.models import AuditEvent, Embedding, Face, Image, embedding_checksum
from childface.services import integrity
from childface.services.children import create_child
from childface.services.enrollment import Photo, enroll_photos
from childface.services.gallery import ensure_embedding_model
from childface.services.photo_recognition import recognize_photo
from childface.services.runtime import Runtime

STAFF = Actor("user", "teacher")
#: every enrolled face is in the recompute sample
ALL = 1000


@dataclass
class Deployment:
    face_ids: list[int]  # two per child, child by child
    child_ids: list[int]
    photos: list[bytes]  # the enrolled photo of each face

    def recognitions(self, rt: Runtime) -> list[tuple[int | None, str, float]]:
        """Each enrolled photo recognised again: (best child, decision, score to 3 places)."""
        out = []
        for data in self.photos:
            (face,) = recognize_photo(runtime=rt, actor=STAFF, data=data, queue_review=False).faces
            best = face.candidates[0] if face.candidates else None
            out.append((best and best.child_id, face.decision, round(best.score, 3) if best else 0.0))
        return out


def deploy(rt: Runtime, faces_of: Photos) -> Deployment:
    faces, children, datas = [], [], []
    for person in range(4):
        child = create_child(db=rt.db, actor=STAFF, external_id=f"C{person}", name=f"Child {person}")
        children.append(child.id)
        for n in range(2):
            data = faces_of.person(person, n)
            (outcome,) = enroll_photos(runtime=rt, actor=STAFF, child_id=child.id, photos=[Photo(data)],
                                       confirm=True)
            assert outcome.status == "enrolled", outcome
            faces.append(outcome.enrolled_face_id)
            datas.append(data)
    return Deployment(faces, children, datas)


def embedding_row(rt: Runtime, face_id: int) -> tuple[int, int, bytes]:
    """(embedding id, model id, vector) of a face's embedding."""
    with rt.db.session() as session:
        row = session.execute(
            select(Embedding.id, Embedding.model_id, Embedding.vector).where(Embedding.face_id == face_id)
        ).one()
    return row.id, row.model_id, bytes(row.vector)


def raw_update(rt: Runtime, face_id: int, **values: object) -> None:
    """UPDATE embeddings behind the application's back (no unit of work, no audit event)."""
    columns = ", ".join(f"{name} = :{name}" for name in values)
    with rt.db.engine.begin() as connection:
        connection.execute(text(f"UPDATE embeddings SET {columns} WHERE face_id = :face"),  # noqa: S608
                           {**values, "face": face_id})


def photo_path(rt: Runtime, face_id: int) -> str:
    with rt.db.session() as session:
        return session.scalar(
            select(Image.path).join(Face, Face.image_id == Image.id).where(Face.id == face_id)
        )


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_verify_finds_each_damage_and_repair_restores_recognition(
    runtime: Runtime, photos: Photos  # noqa: F811
) -> None:
    deployment = deploy(runtime, photos)
    baseline = deployment.recognitions(runtime)
    assert all(score == 1.0 for _, _, score in baseline)  # an enrolled photo matches its own template
    clean = integrity.verify(runtime.settings, runtime.db, runtime.media, sample=ALL)
    assert clean.clean, clean.findings
    assert clean.recompute.compared == 8 and not clean.recompute.mismatches

    photo_damaged, flipped, unchecked, moved, photo_missing, swapped, scaled, _ = deployment.face_ids
    media = runtime.media
    damaged_file = media.absolute(photo_path(runtime, photo_damaged))
    damaged_file.write_bytes(flip_byte(damaged_file.read_bytes(), 1000))
    _, model_id, vector = embedding_row(runtime, flipped)
    raw_update(runtime, flipped, vector=flip_byte(vector, 0))  # lowest mantissa byte: still unit length
    raw_update(runtime, unchecked, checksum=None)
    other = ensure_embedding_model(runtime.db, key="other-model:0000", name="other", weights_sha256="0" * 64,
                                   dim=128)
    raw_update(runtime, moved, model_id=other)
    media.absolute(photo_path(runtime, photo_missing)).unlink()
    _, _, another = embedding_row(runtime, deployment.face_ids[0])  # another child's face
    raw_update(runtime, swapped, vector=another, checksum=embedding_checksum(model_id, another))
    doubled = (np.frombuffer(embedding_row(runtime, scaled)[2], dtype="<f4") * 2).astype("<f4").tobytes()
    raw_update(runtime, scaled, vector=doubled, checksum=embedding_checksum(model_id, doubled))

    # the gallery leaves corrupt rows out: after a rebuild the damage shows in recognition
    runtime.gallery.rebuild()
    assert runtime.gallery.count == 8 - 3  # flipped (checksum), moved (no current embedding), scaled (norm)
    assert deployment.recognitions(runtime) != baseline

    found = integrity.verify(runtime.settings, runtime.db, runtime.media, sample=ALL)
    assert found.findings == {
        "rows_without_files": 1,
        "content_mismatches": 1,
        "embeddings_unchecked": 1,
        "embeddings_checksum_mismatch": 1,
        "embeddings_moved_model": 1,
        "embeddings_not_unit": 1,
        "embeddings_recompute_mismatch": 1,
    }
    by_face = {f.face_id: f for f in found.embedding_findings()}
    assert by_face[flipped].problems == ["checksum_mismatch"]
    assert by_face[unchecked].problems == ["unchecked"]
    assert by_face[moved].problems == ["moved_model"] and by_face[moved].source_model_id == model_id
    assert by_face[scaled].problems == ["not_unit"]
    assert by_face[swapped].problems == ["recompute_mismatch"] and by_face[swapped].cosine < 0.95
    assert found.recompute.skipped == {"photo_damaged": 1, "photo_missing": 1}
    assert found.repair is None and found.remaining == found.findings

    repaired = integrity.verify(runtime.settings, runtime.db, runtime.media, sample=ALL, repair=True)
    assert repaired.repair is not None
    assert sorted(f.face_id for f in repaired.repair.repaired) == sorted([flipped, unchecked, moved, swapped,
                                                                          scaled])
    assert {(u.face_id, u.reason) for u in repaired.repair.unrepaired} == {
        (photo_damaged, "photo_damaged"), (photo_missing, "photo_missing")
    }
    assert repaired.remaining == {"rows_without_files": 1, "content_mismatches": 1}
    with runtime.db.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "integrity.repaired")).all()
    assert len(events) == 1 and events[0].actor == "system:verify"
    assert events[0].face_ids == sorted([flipped, unchecked, moved, swapped, scaled])
    assert events[0].after["problems"] == {"unchecked": 1, "checksum_mismatch": 1, "moved_model": 1,
                                           "not_unit": 1, "recompute_mismatch": 1}
    assert embedding_row(runtime, moved)[1] == model_id  # back under its model

    runtime.catch_up()  # the event lists the repaired faces: the running index re-reads them
    assert runtime.gallery.count == 8
    assert deployment.recognitions(runtime) == baseline
    again = integrity.verify(runtime.settings, runtime.db, runtime.media, sample=ALL)
    assert again.findings == {"rows_without_files": 1, "content_mismatches": 1}


def test_repair_of_a_model_that_cannot_be_loaded_is_reported(
    runtime: Runtime, photos: Photos  # noqa: F811
) -> None:
    deployment = deploy(runtime, photos)
    other = ensure_embedding_model(runtime.db, key="other-model:0000", name="other", weights_sha256="0" * 64,
                                   dim=4)
    face = deployment.face_ids[3]
    with runtime.db.unit_of_work(STAFF) as uow:
        blob = np.full(4, 0.5, dtype="<f4").tobytes()  # a unit vector of the other model
        uow.session.add(Embedding(face_id=face, model_id=other, vector=blob, checksum=None))
        uow.audit("test.embedding", target_type="face", target_id=face, face_ids=[face])
    report = integrity.verify(runtime.settings, runtime.db, runtime.media, sample=0, repair=True)
    assert report.findings == {"embeddings_unchecked": 1}
    (left,) = report.repair.unrepaired
    assert (left.face_id, left.reason) == (face, "model_not_loadable")
    assert left.message == "cannot repair: model other-model:0000 not loadable"
    assert report.remaining == {"embeddings_unchecked": 1} and not report.repair.repaired


def wait_for_integrity(client: TestClient, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get("/readyz").json()
        if body["checks"]["integrity"] != "checking" or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_readyz_warns_of_a_damaged_deployment_and_is_ok_after_repair(
    runtime: Runtime, photos: Photos, pipeline  # noqa: ANN001, F811
) -> None:
    deployment = deploy(runtime, photos)
    corrupt, lost = deployment.face_ids[2], deployment.face_ids[5]
    _, _, vector = embedding_row(runtime, corrupt)
    raw_update(runtime, corrupt, vector=flip_byte(vector, 100))
    lost_file = runtime.media.absolute(photo_path(runtime, lost))
    kept = lost_file.read_bytes()
    lost_file.unlink()

    fresh = Runtime(runtime.configured_settings, pipeline=pipeline)  # a server starting on the damage
    with closing(fresh), TestClient(create_app(fresh.settings, fresh)) as client:
        body = wait_for_integrity(client)
        assert client.get("/readyz").status_code == 200 and body["ready"] is True
        message = "1 corrupt embedding(s), 1 missing photo(s): run childface verify --repair"
        assert body["checks"]["integrity"] == message
        assert body["warnings"] == [f"integrity: {message}"]
        assert fresh.current_gallery().count == 7  # the corrupt row is not searched

        lost_file.write_bytes(kept)  # restored from a backup
        report = integrity.verify(fresh.settings, fresh.db, fresh.media, sample=0, repair=True)
        assert [f.face_id for f in report.repair.repaired] == [corrupt] and not report.remaining
        body = wait_for_integrity(client)  # the repair event starts the check again
        assert body["checks"]["integrity"] == "ok" and body["warnings"] == []
        assert fresh.current_gallery().count == 8
