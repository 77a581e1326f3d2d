"""Identity changes for gallery tests: each is one unit of work with its audit event and face ids.

They write rows the way the domain services do (DESIGN.md invariant 2: one
transaction, one audit event listing the faces whose indexability changed), so
the gallery tests do not depend on the API layer. Also imported by the kill
test's child process (tests/services/kill_enroller.py), hence plain functions.
"""

from __future__ import annotations

import secrets

import numpy as np
from sqlalchemy import select

from childface.db import Actor, Database
from childface.db.models import Child, ChildStatus, Embedding, Face, Image, ImageSource, ReviewState

TEST_ACTOR = Actor("system", "gallery-test")
DIM = 128


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / np.linalg.norm(vector, axis=-1, keepdims=True)


def identity_samples(rng: np.random.Generator, n_children: int, per_child: int, spread: float = 0.35):
    """Face-like geometry: one random centre per child, samples at cosine ~0.9 to it, ~0 across."""
    centres = unit(rng.standard_normal((n_children, DIM)))
    noise = rng.standard_normal((n_children, per_child, DIM)) * spread / np.sqrt(DIM)
    return centres, unit(centres[:, None, :] + noise)


def add_child(db: Database, name: str) -> int:
    with db.unit_of_work(TEST_ACTOR) as uow:
        child = Child(external_id=f"{name}-{secrets.token_hex(4)}", display_name=name)
        uow.session.add(child)
        uow.session.flush()
        uow.audit("child.create", target_type="child", target_id=child.id, child_id=child.id)
        return child.id


def new_face(uow, *, child_id: int | None, model_row: int, vector: np.ndarray, state: ReviewState) -> Face:
    """Add an image, a face and its embedding inside an open unit of work (no audit yet)."""
    image = Image(
        sha256=secrets.token_hex(32),
        path="test/none.jpg",
        width=100,
        height=100,
        source=ImageSource.api,
        uploaded_by=str(TEST_ACTOR),
    )
    face = Face(
        image=image,
        child_id=child_id,
        box_x1=0.0,
        box_y1=0.0,
        box_x2=50.0,
        box_y2=50.0,
        landmarks=[[0.0, 0.0]] * 5,
        detector_score=0.99,
        quality_score=0.9,
        review_state=state,
    )
    uow.session.add(face)
    uow.session.flush()
    blob = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    uow.session.add(Embedding.of(face_id=face.id, model_id=model_row, vector=blob))
    return face


def add_face(
    db: Database,
    *,
    child_id: int | None,
    model_row: int,
    vector: np.ndarray,
    state: ReviewState = ReviewState.enrolled,
) -> int:
    with db.unit_of_work(TEST_ACTOR) as uow:
        face = new_face(uow, child_id=child_id, model_row=model_row, vector=vector, state=state)
        uow.audit("face.add", target_type="face", target_id=face.id, child_id=child_id, face_ids=[face.id])
        return face.id


def set_child_status(db: Database, child_id: int, status: ChildStatus) -> None:
    with db.unit_of_work(TEST_ACTOR) as uow:
        child = uow.session.get(Child, child_id)
        child.status = status
        faces = list(uow.session.scalars(select(Face.id).where(Face.child_id == child_id)))
        uow.audit(f"child.{status.value}", target_type="child", target_id=child_id, face_ids=faces)


def set_face_state(db: Database, face_id: int, state: ReviewState) -> None:
    with db.unit_of_work(TEST_ACTOR) as uow:
        uow.session.get(Face, face_id).review_state = state
        uow.audit("face.review", target_type="face", target_id=face_id, face_ids=[face_id])


def reassign_face(db: Database, face_id: int, child_id: int) -> None:
    with db.unit_of_work(TEST_ACTOR) as uow:
        uow.session.get(Face, face_id).child_id = child_id
        uow.audit("face.reassign", target_type="face", target_id=face_id, face_ids=[face_id])


def delete_face(db: Database, face_id: int) -> None:
    with db.unit_of_work(TEST_ACTOR) as uow:
        face = uow.session.get(Face, face_id)
        uow.session.delete(face.image)
        uow.audit("face.remove", target_type="face", target_id=face_id, face_ids=[face_id])
