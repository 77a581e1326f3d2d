"""Model constraints and the unit of work, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from childface.db import Actor, Database
from childface.db.models import (
    AuditEvent,
    Child,
    ChildStatus,
    Embedding,
    EmbeddingModel,
    Face,
    Image,
    ImageSource,
)

STAFF = Actor("user", "alice")


def _image(sha: str) -> Image:
    return Image(sha256=sha, path=f"{sha[:2]}/{sha}.jpg", width=640, height=480,
                 source=ImageSource.api, uploaded_by=str(STAFF))


def _audit_count(database: Database) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent))


def test_child_created_with_its_audit_event(database: Database) -> None:
    with database.unit_of_work(STAFF) as uow:
        child = Child(external_id="c-001", display_name="Ada", group_name="Sunflowers")
        uow.session.add(child)
        uow.session.flush()
        uow.audit("child.created", target_type="child", target_id=child.id, child_id=child.id,
                  after={"external_id": "c-001"})
    with database.session() as session:
        stored = session.scalar(select(Child))
        event = session.scalar(select(AuditEvent))
    assert stored.status is ChildStatus.active
    assert event.actor == "user:alice"
    assert event.action == "child.created"
    assert event.target_id == str(stored.id)
    assert event.after == {"external_id": "c-001"}


def test_duplicate_external_id_is_refused(database: Database) -> None:
    with database.unit_of_work(STAFF) as uow:
        uow.session.add(Child(external_id="c-001", display_name="Ada"))
        uow.audit("child.created", target_type="child")
    with pytest.raises(IntegrityError, match="(?i)unique|duplicate"), database.unit_of_work(STAFF) as uow:
        uow.session.add(Child(external_id="c-001", display_name="Someone else"))
        uow.audit("child.created", target_type="child")
    assert _audit_count(database) == 1


def test_duplicate_image_sha256_is_refused(database: Database) -> None:
    sha = "ab" * 32
    with database.unit_of_work(STAFF) as uow:
        uow.session.add(_image(sha))
        uow.audit("image.added", target_type="image")
    with pytest.raises(IntegrityError, match="(?i)unique|duplicate"), database.unit_of_work(STAFF) as uow:
        uow.session.add(_image(sha))
        uow.audit("image.added", target_type="image")
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1


def test_failed_change_leaves_no_audit_row(database: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"), database.unit_of_work(STAFF) as uow:
        uow.session.add(Child(external_id="c-002", display_name="Bo"))
        uow.audit("child.created", target_type="child")
        uow.session.flush()
        raise RuntimeError("boom")
    assert _audit_count(database) == 0
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Child)) == 0


def test_change_without_audit_event_never_commits(database: Database) -> None:
    with pytest.raises(RuntimeError, match="audit event"), database.unit_of_work(STAFF) as uow:
        uow.session.add(Child(external_id="c-003", display_name="Cy"))
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Child)) == 0


def test_one_audit_event_per_unit_of_work(database: Database) -> None:
    with pytest.raises(RuntimeError, match="already audited"), database.unit_of_work(STAFF) as uow:
        uow.audit("child.created", target_type="child")
        uow.audit("child.updated", target_type="child")
    assert _audit_count(database) == 0


def test_face_embedding_round_trip_and_cascade(database: Database) -> None:
    vector = np.random.default_rng(0).normal(size=128).astype(np.float32)
    vector /= np.linalg.norm(vector)
    with database.unit_of_work(STAFF) as uow:
        child = Child(external_id="c-004", display_name="Di")
        model = EmbeddingModel(key="dlib-resnet:0123", name="dlib-resnet", weights_sha256="0" * 64, dim=128)
        image = _image("cd" * 32)
        face = Face(image=image, child=child, box_x1=1, box_y1=2, box_x2=50, box_y2=60,
                    landmarks=[[10.0, 20.0]] * 5, detector_score=0.99, quality_score=0.8,
                    mask=False, arousal=0.4, valence=0.6)
        face.embeddings.append(Embedding(model=model, vector=vector.tobytes()))
        uow.session.add_all([child, model, image, face])
        uow.session.flush()
        uow.audit("image.added", target_type="image", target_id=image.id, face_ids=[face.id])
    with database.session() as session:
        stored = session.scalar(select(Embedding))
        np.testing.assert_array_equal(np.frombuffer(stored.vector, dtype=np.float32), vector)
        assert session.scalar(select(AuditEvent.face_ids)) == [face.id]
    # deleting the image removes its faces and their embeddings (DB-level cascade)
    with database.unit_of_work(STAFF) as uow:
        uow.session.delete(uow.session.get(Image, image.id))
        uow.audit("image.removed", target_type="image", target_id=image.id, face_ids=[face.id])
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Face)) == 0
        assert session.scalar(select(func.count()).select_from(Embedding)) == 0


def test_audit_sequence_increases(database: Database) -> None:
    for n in range(3):
        with database.unit_of_work(STAFF) as uow:
            uow.audit("child.updated", target_type="child", target_id=n)
    with database.session() as session:
        seqs = session.scalars(select(AuditEvent.seq).order_by(AuditEvent.at, AuditEvent.seq)).all()
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
