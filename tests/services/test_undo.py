"""Undo on the real pipeline and database (both back ends): each undoable change, undone, leaves exactly the
rows and search results it found; the undo is audited and undoing it redoes; a later change to the same
child or face, an earlier undo, a purge or an erasure make it refuse, naming why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    Photos,
    photos,
    pipeline,
    runtime,
)
from childface.db import Actor
from childface.db.models import (
    AuditEvent,
    Child,
    ChildStatus,
    Embedding,
    Face,
    Image,
    RemovedFace,
    ReviewItem,
    ReviewStatus,
)
from childface.services import audit_log, integrity
from childface.services.children import create_child, set_child_status, update_child
from childface.services.enrollment import Photo, enroll_photos
from childface.services.erasure import erase_child
from childface.services.faces import reassign_face, reject_face, remove_face
from childface.services.merging import merge_children
from childface.services.photo_recognition import recognize_photo
from childface.services.recovery import Housekeeper
from childface.services.removed_faces import PURGE_ACTION, row_to_json
from childface.services.review import resolve
from childface.services.runtime import Runtime
from childface.services.undo import UNDO_ACTION, UndoRefused, undo

STAFF = Actor("user", "teacher")
OTHER = Actor("user", "anna")
#: every face of an enrolled child goes to review, proposing that child first
TOO_STRICT = {"accept_threshold": 0.9999, "review_threshold": 0.5}


@pytest.fixture
def kids(runtime: Runtime, photos: Photos) -> dict[str, int]:  # noqa: F811
    """ann (two photos of person 0), ben (two of person 1), cat (one of person 2)."""
    ids = {}
    for name, person, n in (("ann", 0, 2), ("ben", 1, 2), ("cat", 2, 1)):
        child = create_child(db=runtime.db, actor=STAFF, external_id=name.upper(), name=name.title())
        outcomes = enroll_photos(runtime=runtime, actor=STAFF, child_id=child.id,
                                 photos=[Photo(data=photos.person(person, i)) for i in range(n)])
        assert [o.status for o in outcomes] == ["enrolled"] * n
        ids[name] = child.id
    runtime.catch_up()
    return ids


# ---- the state compared before and after -----------------------------------------------------------


def _rows(rt: Runtime, *, photos_too: bool = False) -> dict[str, Any]:
    """Full rows of children (but `updated_at`, which records the undo), faces, embeddings and review
    items; with `photos_too` also images and removed faces."""
    models: list[type] = [Child, Face, Embedding, ReviewItem]
    if photos_too:
        models += [Image, RemovedFace]
    out: dict[str, Any] = {}
    with rt.db.session() as session:
        for model in models:
            (key,) = model.__table__.primary_key.columns
            rows = out[model.__tablename__] = {}
            for row in session.scalars(select(model)):
                values = row_to_json(row)
                values.pop("updated_at", None)
                rows[values[key.key]] = values
    return out


def _probes(rt: Runtime) -> np.ndarray:
    with rt.db.session() as session:
        blobs = list(session.scalars(select(Embedding.vector).order_by(Embedding.id)))
    return np.stack([np.frombuffer(b, dtype="<f4") for b in blobs])


def _search(rt: Runtime, probes: np.ndarray) -> list[list[tuple[int, float]]]:
    found = rt.current_gallery().search(probes, 3)
    return [[(c.child_id, round(float(c.score), 5)) for c in row] for row in found]


def _last_seq(rt: Runtime, action: str | None = None) -> int:
    query = select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    with rt.db.session() as session:
        return int(session.scalar(query))


def _event(rt: Runtime, seq: int) -> AuditEvent:
    with rt.db.session() as session:
        event = session.get(AuditEvent, seq)
        assert event is not None
        return event


def _faces(rt: Runtime, child_id: int) -> list[int]:
    with rt.db.session() as session:
        return list(session.scalars(select(Face.id).where(Face.child_id == child_id).order_by(Face.id)))


def _undo(rt: Runtime, seq: int, actor: Actor = STAFF) -> int:
    result = undo(db=rt.db, actor=actor, seq=seq)
    rt.catch_up()
    return result.seq


def _refused(rt: Runtime, seq: int) -> UndoRefused:
    with pytest.raises(UndoRefused) as refused:
        undo(db=rt.db, actor=STAFF, seq=seq)
    return refused.value


# ---- merge -------------------------------------------------------------------------------------------


def test_unmerge_restores_both_children_and_undoing_the_undo_merges_again(
    runtime: Runtime, kids: dict[str, int]  # noqa: F811
) -> None:
    ann, ben, cat = kids["ann"], kids["ben"], kids["cat"]
    probes = _probes(runtime)
    before, found_before = _rows(runtime), _search(runtime, probes)
    ben_faces = _faces(runtime, ben)

    merged = merge_children(db=runtime.db, actor=STAFF, source_id=ben, target_id=ann)
    runtime.catch_up()
    merge_seq = _last_seq(runtime)
    merged_rows, found_merged = _rows(runtime), _search(runtime, probes)
    assert merged.moved_face_ids == ben_faces and found_merged != found_before

    undo_seq = _undo(runtime, merge_seq)
    assert _rows(runtime) == before and _search(runtime, probes) == found_before
    assert _faces(runtime, ann) != _faces(runtime, ben) and _faces(runtime, ben) == ben_faces
    event = _event(runtime, undo_seq)
    assert (event.action, event.actor, event.target_id) == (UNDO_ACTION, "user:teacher", str(merge_seq))
    assert event.after["undoes"] == merge_seq and event.after["action"] == "child.merged"
    assert set(ben_faces) <= set(event.face_ids)
    for child in (ann, ben):  # both children's histories show the undo
        history = audit_log.query_events(db=runtime.db, child_id=child).items
        assert history[0].seq == undo_seq

    # undone once: a second undo names the first
    again = _refused(runtime, merge_seq)
    assert again.code == "already_undone" and f"change {undo_seq}" in again.message
    assert again.details[0]["seq"] == undo_seq

    # undoing the undo merges again, exactly as the merge left them
    redo_seq = _undo(runtime, undo_seq)
    assert _rows(runtime) == merged_rows and _search(runtime, probes) == found_merged
    assert "redid it" in _refused(runtime, merge_seq).message

    # a later change to a moved face: the undo is refused and names it; nothing changes
    reassign_face(db=runtime.db, actor=OTHER, face_id=ben_faces[0], child_id=cat)
    reassigned = _last_seq(runtime)
    state = _rows(runtime)
    refused = _refused(runtime, redo_seq)
    assert refused.code == "changed_since"
    assert refused.details == [{"seq": reassigned, "action": "face.reassigned",
                                "at": _event(runtime, reassigned).at.isoformat(), "actor": "user:anna"}]
    assert f"change {reassigned} (face.reassigned" in refused.message and "user:anna" in refused.message
    assert _rows(runtime) == state and _last_seq(runtime) == reassigned


# ---- faces and status ------------------------------------------------------------------------------


def test_reassign_reject_archive_and_unarchive_undone_exactly(
    runtime: Runtime, kids: dict[str, int]  # noqa: F811
) -> None:
    ann, ben = kids["ann"], kids["ben"]
    probes = _probes(runtime)
    before, found_before = _rows(runtime), _search(runtime, probes)
    face = _faces(runtime, ann)[0]

    for change in (
        lambda: reassign_face(db=runtime.db, actor=STAFF, face_id=face, child_id=ben),
        lambda: reject_face(db=runtime.db, actor=STAFF, face_id=face),
        lambda: set_child_status(db=runtime.db, actor=STAFF, child_id=ann, status=ChildStatus.archived),
    ):
        change()
        runtime.catch_up()
        assert _search(runtime, probes) != found_before
        _undo(runtime, _last_seq(runtime))
        assert _rows(runtime) == before and _search(runtime, probes) == found_before

    # archived (at a known time), renamed (a change an undo never restores), then active again: undoing
    # the unarchive archives the child again, with the time it was archived at first (retention counts
    # from it)
    set_child_status(db=runtime.db, actor=STAFF, child_id=ann, status=ChildStatus.archived)
    archived_at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    with runtime.db.transaction() as session:
        session.execute(update(Child).where(Child.id == ann).values(archived_at=archived_at))
    update_child(db=runtime.db, actor=STAFF, child_id=ann, changes={"name": "Ann Renamed"})
    archived = _rows(runtime)
    set_child_status(db=runtime.db, actor=STAFF, child_id=ann, status=ChildStatus.active)
    runtime.catch_up()
    _undo(runtime, _last_seq(runtime))
    assert _rows(runtime) == archived
    with runtime.db.session() as session:
        row = session.get(Child, ann)
        assert (row.display_name, row.archived_at) == ("Ann Renamed", archived_at)
    assert all(c != ann for row in _search(runtime, probes) for c, _ in row)

    # a later change to one of the child's faces: the unarchive before it can no longer be undone
    set_child_status(db=runtime.db, actor=STAFF, child_id=ann, status=ChildStatus.active)
    unarchive_seq = _last_seq(runtime)
    face_gone = _faces(runtime, ann)[1]
    reject_face(db=runtime.db, actor=OTHER, face_id=face_gone)
    refused = _refused(runtime, unarchive_seq)
    assert refused.code == "changed_since" and refused.details[0]["action"] == "face.rejected"


# ---- removal -----------------------------------------------------------------------------------------


def test_removed_face_is_restored_within_the_window_and_refused_once_purged(
    runtime: Runtime, kids: dict[str, int], photos: Photos  # noqa: F811
) -> None:
    ann, cat = kids["ann"], kids["cat"]
    probes = _probes(runtime)
    before, found_before = _rows(runtime, photos_too=True), _search(runtime, probes)
    face = _faces(runtime, ann)[0]
    with runtime.db.session() as session:
        image = session.get(Image, session.get(Face, face).image_id)
    photo_file = runtime.media.absolute(image.path)

    remove_face(db=runtime.db, media=runtime.media, actor=STAFF, face_id=face, keep_days=30)
    runtime.catch_up()
    removal = _last_seq(runtime)
    removed_rows = _rows(runtime, photos_too=True)
    assert face not in removed_rows["faces"] and face in removed_rows["removed_faces"]
    assert image.id in removed_rows["images"] and photo_file.exists()  # kept for the undo
    scan = integrity.scan_media(runtime.db, runtime.media)  # what `childface verify` checks: no orphan
    assert scan.files_without_rows == [] and scan.rows_without_files == []
    assert all(f.face_id != face for row in runtime.current_gallery().search(probes, 3) for f in row)
    assert _event(runtime, removal).after["kept_until"].startswith(
        (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    )

    restored = _undo(runtime, removal)
    assert _rows(runtime, photos_too=True) == before and _search(runtime, probes) == found_before
    assert face in _event(runtime, restored).face_ids

    # undoing the undo removes it again, kept again (under the redo's own event)
    redo = _undo(runtime, restored)
    again_removed = _rows(runtime, photos_too=True)
    for table in ("children", "faces", "embeddings", "review_items", "images"):
        assert again_removed[table] == removed_rows[table], table
    assert again_removed["removed_faces"][face]["payload"] == removed_rows["removed_faces"][face]["payload"]
    assert again_removed["removed_faces"][face]["seq"] == redo

    # the same photo enrolled again for another child: the removed face has a face in its place
    (again,) = enroll_photos(runtime=runtime, actor=STAFF, child_id=cat, confirm=True,
                             photos=[Photo(data=photos.person(0, 0))])
    assert again.status == "enrolled" and again.image_id == image.id  # the kept photo row, a new face
    replaced = _refused(runtime, redo)
    assert replaced.code == "face_replaced" and f"face {again.enrolled_face_id}" in replaced.message
    remove_face(db=runtime.db, media=runtime.media, actor=STAFF, face_id=again.enrolled_face_id, keep_days=0)
    assert photo_file.exists()  # still kept for the first removed face

    # past the window the housekeeper purges it with its photo; the undo then says when
    with runtime.db.transaction() as session:
        session.execute(update(RemovedFace).values(removed_at=datetime.now(UTC) - timedelta(days=31)))
    Housekeeper(settings=runtime.settings, db=runtime.db, media=runtime.media).round()
    with runtime.db.session() as session:
        assert session.get(RemovedFace, face) is None and session.get(Image, image.id) is None
        purge = session.scalar(select(AuditEvent).where(AuditEvent.action == PURGE_ACTION))
    assert not photo_file.exists() and face in purge.face_ids and purge.actor == "system:housekeeping"
    purged = _refused(runtime, redo)
    assert purged.code == "purged" and f"purged on {purge.at.date().isoformat()}" in purged.message

    # removed_faces_keep_days = 0: deleted for good at once, as before undo existed
    other = _faces(runtime, ann)[0]
    remove_face(db=runtime.db, media=runtime.media, actor=STAFF, face_id=other, keep_days=0)
    gone = _refused(runtime, _last_seq(runtime))
    assert gone.code == "purged" and "deleted for good" in gone.message


# ---- review ------------------------------------------------------------------------------------------


def test_every_review_resolution_is_undone_to_the_open_item(
    runtime: Runtime, kids: dict[str, int], photos: Photos  # noqa: F811
) -> None:
    ben = kids["ben"]
    runtime.settings = runtime.settings.model_copy(update=TOO_STRICT)
    (face,) = recognize_photo(runtime=runtime, actor=STAFF, data=photos.person(0, 3)).faces
    assert face.decision == "review" and face.review_id is not None
    item = face.review_id
    probes = _probes(runtime)
    before, found_before = _rows(runtime), _search(runtime, probes)

    def decided(**how: object) -> int:
        resolve(runtime=runtime, actor=STAFF, review_id=item, **how)  # type: ignore[arg-type]
        return _last_seq(runtime)

    for how in ({"action": "dismiss"}, {"action": "assign", "child_id": ben, "add_as_template": True}):
        _undo(runtime, decided(**how))
        assert _rows(runtime) == before and _search(runtime, probes) == found_before

    # a new child made by the resolution goes again; undoing the undo brings it back, same id
    seq = decided(action="new_child", new_child={"external_id": "NEW-1", "name": "Newt"},
                  add_as_template=True)
    created = _rows(runtime)
    new_id = _event(runtime, seq).child_id
    undo_seq = _undo(runtime, seq)
    assert _rows(runtime) == before and _search(runtime, probes) == found_before
    redo = _undo(runtime, undo_seq)
    assert _rows(runtime) == created and _search(runtime, probes) != found_before
    with runtime.db.session() as session:
        assert session.get(Child, new_id).external_id == "NEW-1"
    _undo(runtime, redo)
    assert _rows(runtime) == before

    with runtime.db.session() as session:
        row = session.get(ReviewItem, item)
        assert (row.status, row.resolution, row.resolved_by) == (ReviewStatus.open, None, None)


def test_automatic_template_undone_before_the_confirmation_it_followed(
    runtime: Runtime, kids: dict[str, int], photos: Photos  # noqa: F811
) -> None:
    ann = kids["ann"]
    # ann's first photo is old enough to retire; the policy keeps two searched templates
    with runtime.db.transaction() as session:
        oldest = min(_faces(runtime, ann))
        old = datetime.now(UTC) - timedelta(days=400)
        session.execute(update(Face).where(Face.id == oldest).values(created_at=old))
        image_id = session.get(Face, oldest).image_id
        session.execute(update(Image).where(Image.id == image_id).values(taken_at=old, created_at=old))
    runtime.settings = runtime.settings.model_copy(
        update={**TOO_STRICT, "auto_templates": "confirmed", "auto_template_max_similarity": 1.0,
                "max_templates_per_child": 2}
    )
    (face,) = recognize_photo(runtime=runtime, actor=STAFF, data=photos.person(0, 3)).faces
    probes = _probes(runtime)
    before, found_before = _rows(runtime), _search(runtime, probes)

    resolution = resolve(runtime=runtime, actor=STAFF, review_id=face.review_id, action="confirm")
    runtime.catch_up()
    assert resolution.template_added
    template, resolved = _last_seq(runtime), _last_seq(runtime, "review.resolved")
    event = _event(runtime, template)
    assert event.action == "face.auto_template" and event.after["retired_face_ids"] == [oldest]
    confirmed, found_confirmed = _rows(runtime), _search(runtime, probes)

    # the resolution first: refused, the template event named
    refused = _refused(runtime, resolved)
    assert refused.code == "changed_since" and refused.details[0]["seq"] == template

    # the template: the face is kept as confirmed but not searched, the retired face is searched again
    undo_template = _undo(runtime, template)
    with runtime.db.session() as session:
        added = session.get(Face, event.after["face_id"])
        assert added.review_state.value == "rejected" and added.child_id == ann
        assert session.get(Face, oldest).retired_at is None
    undo_resolution = _undo(runtime, resolved)
    assert _rows(runtime) == before and _search(runtime, probes) == found_before

    # the whole way back: redo the resolution, then the template
    _undo(runtime, undo_resolution)
    _undo(runtime, undo_template)
    assert _rows(runtime) == confirmed and _search(runtime, probes) == found_confirmed


def test_erasure_is_irreversible_and_blocks_undo_of_earlier_changes(
    runtime: Runtime, kids: dict[str, int]  # noqa: F811
) -> None:
    ann = kids["ann"]
    set_child_status(db=runtime.db, actor=STAFF, child_id=ann, status=ChildStatus.archived)
    archived = _last_seq(runtime)
    erase_child(db=runtime.db, media=runtime.media, actor=STAFF, child_id=ann, confirm="ERASE")
    erased = _last_seq(runtime)
    refused = _refused(runtime, erased)
    assert refused.code == "irreversible" and "irreversible by design" in refused.message
    earlier = _refused(runtime, archived)
    assert earlier.code == "irreversible" and earlier.details[0]["seq"] == erased
    created = _refused(runtime, _last_seq(runtime, "child.created"))  # not an undoable action
    assert created.code == "not_undoable"
