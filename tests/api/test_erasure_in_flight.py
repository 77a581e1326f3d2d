"""Erasure against work in flight: a search that ran before it, an import that is still running."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from childface.db.models import Image, ReviewItem
from childface.services.enrollment import Photo, decode_photos, read_headers
from childface.services.erasure import erase_child
from childface.services.gallery import ChildCandidate
from childface.services.review import queue_for_review

from .support import TEST_ACTOR, Photos, create_child, enroll


def _probe(runtime, data: bytes):  # noqa: ANN001, ANN202 - (Photo, its one detected face)
    photo = Photo(data=data, filename="probe.jpg")
    read_headers([photo], runtime.settings)
    decode_photos([photo], max_pixels=runtime.settings.max_image_pixels)
    (face,) = runtime.pipeline.process([photo.rgb])[0]
    return photo, face


def test_review_queued_after_an_erasure_drops_the_erased_child(
    client: TestClient, auth, photos: Photos, runtime  # noqa: ANN001
) -> None:
    staff = auth("staff")
    erased = create_child(client, staff, "R-1", "Rosa")
    kept = create_child(client, staff, "R-2", "Remy")
    erased_face = enroll(client, staff, erased, photos.person(0, 0))["photos"][0]["enrolled_face_id"]
    kept_face = enroll(client, staff, kept, photos.person(1, 0))["photos"][0]["enrolled_face_id"]
    # the search ran before the erasure: its candidates still name the erased child
    only_erased = [ChildCandidate(erased, 0.93, erased_face, 1)]
    both = [ChildCandidate(erased, 0.93, erased_face, 1), ChildCandidate(kept, 0.91, kept_face, 1)]
    first, first_face = _probe(runtime, photos.person(0, 3))
    second, second_face = _probe(runtime, photos.person(1, 3))
    erase_child(db=runtime.db, media=runtime.media, actor=TEST_ACTOR, child_id=erased, confirm="ERASE")

    queued = queue_for_review(
        runtime=runtime, actor=TEST_ACTOR, photo=first, faces=[(first_face, only_erased)]
    )
    assert [(q.review_id, q.not_queued_reason) for q in queued] == [(None, "candidates_erased")]
    (second_queued,) = queue_for_review(
        runtime=runtime, actor=TEST_ACTOR, photo=second, faces=[(second_face, both)]
    )

    with runtime.db.session() as session:
        stored = select(func.count()).select_from(Image).where(Image.sha256 == first.sha256)
        assert session.scalar(stored) == 0
        item = session.get(ReviewItem, second_queued.review_id)
        assert [c["child_id"] for c in item.candidates] == [kept]
    assert not list(runtime.media.root.rglob(f"{first.sha256}.*"))


def test_erasure_waits_for_a_running_import(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    """A running import holds its children in memory and writes its report at the end: erasure waits."""
    from childface.db.models import ImportRun, ImportStatus

    child = create_child(client, auth("staff"), "W-1", "Wanda")
    with runtime.db.transaction() as session:
        run = ImportRun(source_name="w.csv", status=ImportStatus.running, started_by="test")
        session.add(run)
        session.flush()
        run_id = run.id
    admin = auth("admin")
    refused = client.post(f"/children/{child}/erase", json={"confirm": "ERASE"}, headers=admin)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "import_running"
    assert client.get(f"/children/{child}", headers=admin).status_code == 200
    with runtime.db.transaction() as session:
        session.get(ImportRun, run_id).status = ImportStatus.finished
    erased = client.post(f"/children/{child}/erase", json={"confirm": "ERASE"}, headers=admin)
    assert erased.status_code == 200
