"""The DB-backed gallery: rebuild, indexability, snapshot + replay, out-of-order commits, threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import pytest

from childface.db import Database
from childface.db.models import Child, ChildStatus, EmbeddingModel, Face, ReviewState
from childface.index import snapshot_path
from childface.services.gallery import FeedPosition, Gallery, ensure_embedding_model

from .conftest import MODEL_KEY
from .faces import (
    DIM,
    TEST_ACTOR,
    add_child,
    add_face,
    delete_face,
    identity_samples,
    new_face,
    reassign_face,
    set_child_status,
    set_face_state,
)


def enroll(db: Database, model_row: int, samples: np.ndarray) -> tuple[list[int], list[list[int]]]:
    """One child per row of `samples` (children, per_child, dim); returns child ids and face ids."""
    children, faces = [], []
    for i, vectors in enumerate(samples):
        child = add_child(db, f"child{i}")
        children.append(child)
        faces.append([add_face(db, child_id=child, model_row=model_row, vector=v) for v in vectors])
    return children, faces


def same_as_rebuild(gallery: Gallery, make_gallery) -> None:
    fresh = make_gallery()
    fresh.rebuild()
    assert gallery._children.index.ids().tolist() == fresh._children.index.ids().tolist()
    mine, theirs = gallery._children.faces(), fresh._children.faces()
    np.testing.assert_array_equal(mine[0], theirs[0])
    np.testing.assert_array_equal(mine[1], theirs[1])
    assert gallery.check().clean


def test_ensure_embedding_model_is_idempotent_under_concurrency(database: Database) -> None:
    def register(_: int) -> int:
        return ensure_embedding_model(database, key="m:1", name="m", weights_sha256="a" * 64, dim=DIM)

    with ThreadPoolExecutor(6) as pool:
        ids = set(pool.map(register, range(12)))
    assert len(ids) == 1
    with database.session() as session:
        assert session.query(EmbeddingModel).filter_by(key="m:1").count() == 1
    with pytest.raises(ValueError, match="dim"):
        ensure_embedding_model(database, key="m:1", name="m", weights_sha256="a" * 64, dim=512)


def test_rebuild_search_and_check(database: Database, model_row: int, make_gallery) -> None:
    rng = np.random.default_rng(1)
    centres, samples = identity_samples(rng, 6, 3)
    children, faces = enroll(database, model_row, samples)
    gallery = make_gallery()
    assert "no snapshot" in gallery.start()
    assert gallery.count == 18
    results = gallery.search(centres, k=3)
    assert [r[0].child_id for r in results] == children
    best = results[0][0]
    assert best.n_templates == 3 and best.face_id in faces[0] and 0.8 < best.score <= 1.0
    assert results[0][0].score >= results[0][1].score >= results[0][2].score
    assert gallery.check().clean


def test_indexability_rules(database: Database, model_row: int, make_gallery) -> None:
    rng = np.random.default_rng(2)
    _, samples = identity_samples(rng, 3, 2)
    (a, b, c), faces = enroll(database, model_row, samples)
    pending = add_face(
        database, child_id=a, model_row=model_row, vector=samples[0, 0], state=ReviewState.pending_review
    )
    unassigned = add_face(database, child_id=None, model_row=model_row, vector=samples[1, 0])
    gallery = make_gallery()
    gallery.start()
    present = set(gallery._children.index.ids().tolist())
    assert pending not in present and unassigned not in present and len(present) == 6

    set_child_status(database, b, ChildStatus.archived)  # archived child drops out
    set_face_state(database, faces[0][0], ReviewState.rejected)  # rejected face drops out
    delete_face(database, faces[2][1])  # removed face drops out
    reassign_face(database, faces[2][0], a)  # reassigned face moves child
    set_face_state(database, pending, ReviewState.enrolled)  # accepted after review comes in
    assert gallery.catch_up() == 5
    assert set(gallery._children.index.ids().tolist()) == {faces[0][1], faces[2][0], pending}
    assert gallery._children.owners(np.asarray([faces[2][0]])).tolist() == [a]
    assert [c.child_id for c in gallery.search(samples[2, 0][None], k=2)[0]] == [a]
    same_as_rebuild(gallery, make_gallery)

    set_child_status(database, b, ChildStatus.active)  # restored child comes back
    gallery.catch_up()
    assert set(faces[1]) <= set(gallery._children.index.ids().tolist())
    same_as_rebuild(gallery, make_gallery)


def test_snapshot_then_replay_of_the_tail(database: Database, model_row: int, make_gallery, settings) -> None:
    rng = np.random.default_rng(3)
    _, samples = identity_samples(rng, 5, 2)
    children, faces = enroll(database, model_row, samples[:4])
    first = make_gallery()
    first.start()
    first.save()
    saved_at = first.watermark
    assert snapshot_path(settings, MODEL_KEY).is_file()

    # after the snapshot: a new child with two faces, an archive, a deletion
    enroll(database, model_row, samples[4:])
    set_child_status(database, children[1], ChildStatus.archived)
    delete_face(database, faces[0][0])
    tail = 1 + 2 + 1 + 1  # child.create, two face.add, archive, remove

    second = make_gallery()
    report = second.start()
    assert f"loaded snapshot at seq {saved_at}, replayed {tail} events" == report
    assert second.watermark == saved_at + tail
    same_as_rebuild(second, make_gallery)


def test_corrupt_or_foreign_snapshot_means_rebuild(
    database: Database, model_row: int, make_gallery, settings
) -> None:
    rng = np.random.default_rng(4)
    _, samples = identity_samples(rng, 3, 2)
    enroll(database, model_row, samples)
    path = snapshot_path(settings, MODEL_KEY)

    gallery = make_gallery()
    gallery.start()
    gallery.save()
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    report = make_gallery().start()
    assert report.startswith("snapshot unusable") and "checksum" in report and "rebuilt 6 faces" in report

    other = make_gallery(key="other-model:ffff")
    other.start()
    other.save()
    path.write_bytes(snapshot_path(settings, "other-model:ffff").read_bytes())
    report = make_gallery().start()
    assert report.startswith("snapshot unusable") and "other-model" in report and "rebuilt 6 faces" in report

    path.write_bytes(b"not a snapshot")
    assert "bad magic" in make_gallery().start()


def test_postgres_out_of_order_commit_is_not_skipped(
    database: Database, model_row: int, make_gallery
) -> None:
    if database.is_sqlite:
        pytest.skip("SQLite serialises writers: seq order is commit order, no out-of-order commits")
    rng = np.random.default_rng(5)
    _, samples = identity_samples(rng, 2, 2)
    child = add_child(database, "slow")
    gallery = make_gallery()
    gallery.start()

    with ExitStack() as stack:
        # A transaction takes the lower seq and stays open while a later one commits.
        uow = stack.enter_context(database.unit_of_work(TEST_ACTOR))
        slow = new_face(
            uow, child_id=child, model_row=model_row, vector=samples[0, 0], state=ReviewState.enrolled
        )
        low = uow.audit("face.add", target_type="face", target_id=slow.id, face_ids=[slow.id])
        uow.session.flush()
        fast = add_face(database, child_id=child, model_row=model_row, vector=samples[0, 1])
        assert gallery.catch_up() == 1
        present = set(gallery._children.index.ids().tolist())
        assert fast in present and slow.id not in present
        assert gallery.watermark == low.seq - 1  # the snapshot must not claim the open seq
        assert gallery.open_gaps == 1
    # now it commits, after a higher seq was already applied
    assert gallery.catch_up() == 1
    assert slow.id in set(gallery._children.index.ids().tolist())
    assert gallery.open_gaps == 0
    assert gallery.check().clean


def test_rolled_back_gap_is_dropped_after_its_transaction_ends(
    database: Database, model_row: int, make_gallery
) -> None:
    if database.is_sqlite:
        pytest.skip("SQLite reuses a rolled-back rowid: no gap to track")
    rng = np.random.default_rng(6)
    _, samples = identity_samples(rng, 1, 2)
    child = add_child(database, "c")
    gallery = make_gallery(gap_grace_s=0.2)
    gallery.start()
    with pytest.raises(RuntimeError, match="abandoned"), database.unit_of_work(TEST_ACTOR) as uow:
        face = new_face(
            uow, child_id=child, model_row=model_row, vector=samples[0, 0], state=ReviewState.enrolled
        )
        uow.audit("face.add", target_type="face", target_id=face.id, face_ids=[face.id])
        uow.session.flush()
        raise RuntimeError("abandoned")
    add_face(database, child_id=child, model_row=model_row, vector=samples[0, 1])
    gallery.catch_up()
    assert gallery.open_gaps == 1
    time.sleep(0.3)
    gallery.catch_up()
    assert gallery.open_gaps == 0 and gallery.watermark == gallery._position.high


def test_feed_position_gaps() -> None:
    position = FeedPosition(high=4, grace_s=0.0)
    position.advance([5, 8, 9, 12], xmax=100)
    assert [(g.lo, g.hi) for g in position.gaps] == [(6, 7), (10, 11)]
    assert position.safe_watermark == 5
    position.fill([7, 10])
    assert [(g.lo, g.hi) for g in position.gaps] == [(6, 6), (11, 11)]
    position.expire(xmin_now=99)  # a transaction from before the gaps still runs
    assert position.safe_watermark == 5
    position.expire(xmin_now=100)
    assert position.gaps == [] and position.safe_watermark == 12


def test_concurrent_catch_up_and_search(database: Database, model_row: int, make_gallery) -> None:
    rng = np.random.default_rng(7)
    centres, samples = identity_samples(rng, 8, 3)
    gallery = make_gallery()
    gallery.start()
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher() -> None:
        try:
            while not done.is_set():
                for row in gallery.search(centres, k=2):
                    assert all(c.n_templates >= 1 for c in row)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def catcher() -> None:
        try:
            while not done.is_set():
                gallery.catch_up()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (searcher, searcher, catcher, catcher)]
    for t in threads:
        t.start()
    try:
        children, faces = enroll(database, model_row, samples)
        for child_faces in faces[:3]:
            delete_face(database, child_faces[0])
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors
    gallery.catch_up()
    assert gallery.count == 24 - 3
    same_as_rebuild(gallery, make_gallery)


def test_check_reports_changes_the_feed_did_not_announce(
    database: Database, model_row: int, make_gallery
) -> None:
    rng = np.random.default_rng(8)
    _, samples = identity_samples(rng, 2, 2)
    children, faces = enroll(database, model_row, samples)
    gallery = make_gallery()
    gallery.start()
    gallery.save()
    # a buggy service: archives a child and deletes a face, but its audit events list no faces
    with database.unit_of_work(TEST_ACTOR) as uow:
        uow.session.get(Child, children[0]).status = ChildStatus.archived
        uow.audit("child.archive", target_type="child", target_id=children[0])
    with database.unit_of_work(TEST_ACTOR) as uow:
        uow.session.delete(uow.session.get(Face, faces[1][0]).image)
        uow.audit("face.remove", target_type="face", target_id=faces[1][0])
    restarted = make_gallery()
    assert restarted.start().endswith("replayed 2 events")
    differences = restarted.check()
    assert not differences.clean
    assert differences.extra == sorted([*faces[0], faces[1][0]]) and differences.missing == []
    assert "extra in the index" in differences.summary()
    # the face whose row is gone is never a search result; a rebuild is clean
    results = restarted.search(samples[1, 0][None], k=2)[0]
    assert faces[1][0] not in {c.face_id for c in results}
    assert next(c for c in results if c.child_id == children[1]).n_templates == 1
    restarted.rebuild()
    assert restarted.check().clean


@pytest.mark.parametrize("commits_during_rebuild", [True, False])
def test_postgres_rebuild_while_a_lower_seq_is_uncommitted(
    database: Database, model_row: int, make_gallery, commits_during_rebuild: bool
) -> None:
    if database.is_sqlite:
        pytest.skip("SQLite serialises writers: seq order is commit order, no out-of-order commits")
    rng = np.random.default_rng(9)
    _, samples = identity_samples(rng, 1, 2)
    child = add_child(database, "slow")
    gallery = make_gallery(rebuild_quiesce_s=5.0 if commits_during_rebuild else 0.2)
    with ExitStack() as stack:
        uow = stack.enter_context(database.unit_of_work(TEST_ACTOR))
        slow = new_face(
            uow, child_id=child, model_row=model_row, vector=samples[0, 0], state=ReviewState.enrolled
        )
        uow.audit("face.add", target_type="face", target_id=slow.id, face_ids=[slow.id])
        uow.session.flush()
        fast = add_face(database, child_id=child, model_row=model_row, vector=samples[0, 1])
        if commits_during_rebuild:
            # the rebuild waits for the open transaction, so its snapshot includes it
            timer = threading.Timer(0.3, stack.close)
            timer.start()
            gallery.rebuild()
            timer.join()
            assert {slow.id, fast} == set(gallery._children.index.ids().tolist())
            return
        gallery.rebuild()  # gives up waiting: tracks every gap of the feed instead
        assert set(gallery._children.index.ids().tolist()) == {fast} and gallery.open_gaps >= 1
    gallery.catch_up()
    assert {slow.id, fast} == set(gallery._children.index.ids().tolist())
    assert gallery.check().clean
