"""Moving a real gallery to another embedding model: reembed, switch (two runtimes on one DB), back, drop.

The gallery: children enrolled from real photos with the default dlib model. The new
model: a real ArcFace network (MobileFaceNet) with seeded random weights, saved to a
.pth by the test. Its scores mean nothing, so recognition under it is checked against
a direct search of its gallery, not against who the child is.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    Photos,
    photos,
    pipeline,
    runtime,
)
from childface.config import Settings
from childface.db.models import (
    AuditEvent,
    Embedding,
    EmbeddingModel,
    Face,
    Image,
    ModelState,
    ReembedJob,
    ReviewState,
    embedding_checksum,
)
from childface.index import snapshot_path
from childface.services import embedding_models, reembedding
from childface.services.enrollment import Photo, enroll_photos
from childface.services.errors import Conflict, InvalidInput, NotFound
from childface.services.gallery import ensure_embedding_model
from childface.services.photo_recognition import recognize_photo
from childface.services.recognition import identify
from childface.services.runtime import Runtime

from .models_support import STAFF, arcface_spec, enroll_children, save_arcface


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_arcface(tmp_path_factory.mktemp("arcface") / "backbone.pth")


def target_rows(rt: Runtime, key: str) -> dict[int, int]:
    """face id -> number of embeddings of model `key`."""
    with rt.db.session() as session:
        return dict(session.execute(
            select(Embedding.face_id, func.count())
            .join(EmbeddingModel, EmbeddingModel.id == Embedding.model_id)
            .where(EmbeddingModel.key == key).group_by(Embedding.face_id)
        ).all())


def test_reembed_switch_follow_recognise_switch_back_and_drop(
    runtime: Runtime, photos: Photos, pipeline, weights: Path  # noqa: ANN001, F811
) -> None:
    rt = runtime
    children = enroll_children(rt, photos)
    dlib_key = rt.model_key
    with rt.db.session() as session:
        faces = session.execute(select(Face.id, Image.path).join(Image).order_by(Face.id)).all()
        assert embedding_models.current_row(session).key == dlib_key  # the first start made it current
        # one face waits for review: it gets the new embedding too
        session.get(Face, faces[0].id).review_state = ReviewState.pending_review
        session.commit()
    # a second runtime on the same database: another API process
    other = Runtime(rt.settings, pipeline=pipeline)
    other.start(autosave=False)
    try:
        assert other.current_gallery().model_key == dlib_key
        # a photo lost from the media folder: its face cannot be embedded again
        lost = faces[-1]
        rt.media.absolute(lost.path).unlink()

        job = reembedding.reembed(rt.db, rt.media, rt.settings, arcface_spec(weights), STAFF, batch_size=3)
        key = job.model_key
        assert key.startswith("arcface-mbf:") and job.status == "finished"
        assert (job.total, job.done, job.failed) == (len(faces), len(faces) - 1, 1)
        assert job.failures == [(lost.id, "photo file missing")] and job.faces_per_s > 0
        assert target_rows(rt, key) == {f.id: 1 for f in faces[:-1]}  # exactly one each
        with rt.db.session() as session:
            model = session.scalar(select(EmbeddingModel).where(EmbeddingModel.key == key))
            assert model.state == ModelState.available and model.dim == 512
            assert model.spec == arcface_spec(weights)
            rows = session.scalars(select(Embedding).where(Embedding.model_id == model.id)).all()
            assert all(r.checksum == embedding_checksum(model.id, r.vector) for r in rows)
            batches = session.scalars(select(AuditEvent).where(AuditEvent.action == "model.reembedded")).all()
        assert len(batches) == 3
        assert sorted(f for e in batches for f in e.face_ids) == [f.id for f in faces[:-1]]
        # the stored vectors are the new model at the stored landmarks: recompute one from its photo
        with rt.db.session() as session:
            face = session.get(Face, faces[1].id)
            marks, path = np.asarray(face.landmarks, dtype=np.float32), face.image.path
        target = reembedding.load_target(rt.db, rt.settings, arcface_spec(weights))
        again = target.pipeline.embed_at([rt.media.read(path)], [0], marks[None])[0]
        stored = next(np.frombuffer(r.vector, "<f4") for r in rows if r.face_id == faces[1].id)
        assert np.allclose(again, stored, atol=1e-5)
        # recognition went on with the old model meanwhile
        assert rt.current_gallery().model_key == dlib_key

        listed = {m.key: m for m in embedding_models.list_models(rt.db)}
        assert listed[dlib_key].state == "current" and listed[key].state == "available"
        assert (listed[key].covered, listed[key].enrolled_faces) == (len(faces) - 2, len(faces) - 1)

        result = embedding_models.switch_model(rt.db, rt.media, STAFF, key, accept=0.5, review=0.3)
        assert (result.before, result.after, result.without_photo) == (dlib_key, key, [lost.id])
        assert result.thresholds == {"accept_threshold": 0.5, "review_threshold": 0.3}
        for process in (rt, other):  # both follow without a restart
            gallery = process.current_gallery()
            assert gallery.model_key == key and gallery.count == len(faces) - 2
            assert process.model_key == key and process.pipeline.model_id == key
            process.catch_up()  # ends this thread's pin to the pipeline's model (as a write would)
            assert (process.settings.accept_threshold, process.settings.review_threshold) == (0.5, 0.3)
        with rt.db.session() as session:
            (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "model.switched")).all()
            assert (event.before["model"], event.after["model"]) == (dlib_key, key)

        # recognise under the new model: the runtime's answer is a direct search of the new gallery
        probe = photos.person(2, 5)
        recognised = recognize_photo(runtime=other, actor=STAFF, data=probe, queue_review=False)
        assert recognised.model_id == key
        vectors = np.stack([f.embedding for f in target.pipeline.process([probe])[0]])
        assert vectors.shape[1] == 512
        direct = identify(other.current_gallery(), vectors, other.settings, k=other.settings.top_k)
        assert [(f.decision, [c.child_id for c in f.candidates]) for f in recognised.faces] == [
            (d.decision, [c.child_id for c in d.candidates]) for d in direct
        ]
        assert {c.child_id for f in recognised.faces for c in f.candidates} <= set(children)

        # enrollment now writes the new model's embeddings
        child = next(iter(children))
        (outcome,) = enroll_photos(runtime=other, actor=STAFF, child_id=child, confirm=True,
                                   photos=[Photo(data=photos.person(children[child], 7))])
        assert outcome.status == "enrolled", outcome.reasons
        new_face = outcome.enrolled_face_id
        assert target_rows(rt, key).get(new_face) == 1 and new_face not in target_rows(rt, dlib_key)

        # back to dlib: at once (its embeddings stayed); the one face enrolled meanwhile is topped up first
        with pytest.raises(Conflict) as refused:
            embedding_models.switch_model(rt.db, rt.media, STAFF, dlib_key)
        assert refused.value.code == "model_incomplete" and "1 enrolled face" in refused.value.message
        dlib = reembedding.Target(listed[dlib_key].id, dlib_key, pipeline)
        back = embedding_models.switch_model(
            rt.db, rt.media, STAFF, dlib_key,
            top_up=lambda ids: reembedding.embed_missing(rt.db, rt.media, rt.settings, dlib, STAFF, ids),
        )
        assert back.topped_up == 1 and target_rows(rt, dlib_key).get(new_face) == 1
        for process in (rt, other):
            assert process.current_gallery().model_key == dlib_key
            assert process.settings.accept_threshold == rt.configured_settings.accept_threshold
        rt.current_gallery().save()  # a snapshot of the dlib index; the arcface one is written below
        other_gallery_path = snapshot_path(rt.settings, key)
        other.close()
        assert other_gallery_path.exists()  # the arcface gallery's snapshot, saved when it was closed

        with pytest.raises(Conflict):
            embedding_models.drop_model(rt.db, STAFF, dlib_key, snapshot=snapshot_path(rt.settings, dlib_key))
        dropped = embedding_models.drop_model(rt.db, STAFF, key, snapshot=other_gallery_path, batch=4)
        assert dropped == len(faces)  # the reembedded faces and the one enrolled under arcface
        assert not other_gallery_path.exists() and target_rows(rt, key) == {}
        with rt.db.session() as session:
            assert session.scalar(select(EmbeddingModel).where(EmbeddingModel.key == key)) is None
            assert session.scalar(select(func.count()).select_from(ReembedJob)) == 0
            events = session.scalars(select(AuditEvent).where(AuditEvent.action == "model.dropped")).all()
        assert len(events) == 3 and events[-1].after["model_deleted"] is True
        with pytest.raises(NotFound):
            embedding_models.switch_model(rt.db, rt.media, STAFF, key)
        assert rt.current_gallery().model_key == dlib_key and rt.readiness().ready
    finally:
        other.close()


def test_switch_refuses_a_model_missing_faces_and_bad_thresholds(
    runtime: Runtime, photos: Photos, weights: Path  # noqa: F811
) -> None:
    rt = runtime
    enroll_children(rt, photos, people=2)
    target = reembedding.load_target(rt.db, rt.settings, arcface_spec(weights))
    before = rt.model_key
    with pytest.raises(Conflict) as refused:
        embedding_models.switch_model(rt.db, rt.media, STAFF, target.key)
    assert refused.value.code == "model_incomplete" and "4 enrolled face(s)" in refused.value.message
    with pytest.raises(InvalidInput):
        embedding_models.switch_model(rt.db, rt.media, STAFF, target.key, accept=0.3, review=0.5)
    with pytest.raises(InvalidInput):
        embedding_models.switch_model(rt.db, rt.media, STAFF, target.key, accept=0.3)
    with pytest.raises(Conflict) as already:
        embedding_models.switch_model(rt.db, rt.media, STAFF, before)
    assert already.value.code == "already_current"
    with pytest.raises(InvalidInput) as unloadable:
        reembedding.load_target(rt.db, rt.settings, arcface_spec(weights.with_name("missing.pth")))
    assert unloadable.value.code == "model_unloadable"
    assert rt.current_gallery().model_key == before
    with rt.db.session() as session:
        assert session.scalar(select(func.count()).where(AuditEvent.action == "model.switched")) == 0


def test_one_job_at_a_time_and_a_dead_owner_is_failed(runtime: Runtime, weights: Path) -> None:  # noqa: F811
    rt = runtime
    target = reembedding.load_target(rt.db, rt.settings, arcface_spec(weights))
    first = reembedding.start_job(rt.db, STAFF, target.model_id)
    with pytest.raises(Conflict) as running:
        reembedding.start_job(rt.db, STAFF, target.model_id)
    assert running.value.code == "reembed_running" and f"job {first}" in running.value.message
    # its process dies (an owner on this host whose pid no longer runs)
    with rt.db.transaction() as session:
        session.get(ReembedJob, first).owner = f"{socket.gethostname()}:999999"
    second = reembedding.start_job(rt.db, STAFF, target.model_id)
    assert second != first
    failed = reembedding.job(rt.db, first)
    assert failed.status == "failed" and "no longer running" in (failed.error or "")
    assert reembedding.latest_job(rt.db).id == second


def test_first_start_keeps_the_stored_model_when_the_configured_one_changed(
    settings: Settings, pipeline  # noqa: ANN001, F811
) -> None:
    """An upgrade that changes the configured model (flip TTA on by default): the stored faces' model stays
    current, its spec is reconstructed, and readiness says how to move (still ready)."""
    from childface.vision.embedders import load_embedder

    plain = load_embedder(settings.model_copy(update={"embedder_flip_tta": False}))
    flipped = load_embedder(settings.model_copy(update={"embedder_flip_tta": True}))
    assert plain.model_id != flipped.model_id
    configured = settings.model_copy(update={"embedder_flip_tta": True})
    rt = Runtime(configured, pipeline=pipeline)
    try:
        old = ensure_embedding_model(
            rt.db, key=plain.model_id, name=plain.name, weights_sha256=plain.weights_sha256, dim=plain.dim)
        _one_face(rt, old, plain.dim)
        rt.start(autosave=False)
        assert rt.model_key == plain.model_id
        with rt.db.session() as session:
            row = embedding_models.current_row(session)
            assert row.key == plain.model_id
            assert row.spec == {"embedder": "dlib-resnet", "weights": None, "arch": "r50", "flip": False}
        state = rt.readiness()
        assert state.ready and "childface reembed" in state.checks["model"]
    finally:
        rt.close()


def test_first_start_with_only_an_unknown_model_reports_it(
    settings: Settings, pipeline  # noqa: ANN001, F811
) -> None:
    rt = Runtime(settings, pipeline=pipeline)
    try:
        unknown = ensure_embedding_model(
            rt.db, key="arcface-r50:00000000deadbeef", name="arcface-r50", weights_sha256="0" * 64, dim=512)
        _one_face(rt, unknown, 512)
        rt.start(autosave=False)
        assert rt.model_key == pipeline.model_id  # serves the configured model, empty
        state = rt.readiness()
        assert not state.ready and "arcface-r50:00000000deadbeef" in state.checks["models"]
        with rt.db.session() as session:
            assert embedding_models.current_row(session) is None  # nothing decided: the next start decides
    finally:
        rt.close()


def _one_face(rt: Runtime, model_row: int, dim: int) -> None:
    """A stored face of one child with an embedding of `model_row` (as an earlier version wrote it)."""
    from childface.db.models import Child, ImageSource

    with rt.db.unit_of_work(STAFF) as uow:
        child = Child(external_id="OLD1", display_name="Old")
        image = Image(sha256="ab" * 32, path="ab/ab/x.jpg", width=10, height=10, source=ImageSource.api,
                      uploaded_by="test")
        uow.session.add_all([child, image])
        uow.session.flush()
        face = Face(image_id=image.id, child_id=child.id, box_x1=0, box_y1=0, box_x2=5, box_y2=5,
                    landmarks=[[1, 1]] * 5, detector_score=0.99, quality_score=0.9)
        uow.session.add(face)
        uow.session.flush()
        vector = np.ones(dim, dtype="<f4") / np.sqrt(dim)
        uow.session.add(Embedding.of(face_id=face.id, model_id=model_row, vector=vector.tobytes()))
        uow.audit("face.enrolled", target_type="face", target_id=face.id, child_id=child.id,
                  face_ids=[face.id])
