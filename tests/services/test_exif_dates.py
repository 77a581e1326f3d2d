"""When a photo was taken: EXIF DateTimeOriginal when plausible, else the upload time, on every path
that stores a photo (enrollment, CSV import, the review queue, video crops).

Real photos (people from insightface's group photo, JPEG-encoded) are given
EXIF by the test with Pillow's `Image.Exif`; rows land in SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import select

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    Photos,
    photos,
    pipeline,
    runtime,
)
from childface.db import Actor
from childface.db.models import Face, Image, ReviewItem, Sighting
from childface.services import importing
from childface.services.children import create_child
from childface.services.enrollment import Photo, enroll_photos
from childface.services.photo_recognition import recognize_photo
from childface.services.runtime import Runtime
from childface.services.sightings import record_track
from childface.vision.exif import PhotoDate, exif_taken_at, photo_date

from .tracks import track

STAFF = Actor("user", "teacher")
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
#: a real face of an enrolled child that the rule cannot accept: review
TOO_STRICT = {"accept_threshold": 0.9999, "review_threshold": 0.5}


def with_exif(jpeg: bytes, stamp: str | None, offset: str | None = None, fmt: str = "JPEG") -> bytes:
    """The photo re-saved with DateTimeOriginal (and OffsetTimeOriginal) in its Exif IFD."""
    exif = PILImage.Exif()
    ifd = exif.get_ifd(0x8769)
    if stamp is not None:
        ifd[36867] = stamp
    if offset is not None:
        ifd[36881] = offset
    out = io.BytesIO()
    PILImage.open(io.BytesIO(jpeg)).save(out, fmt, exif=exif, quality=95)
    return out.getvalue()


def test_a_plausible_date_is_kept_anything_else_is_the_upload_time(photos: Photos) -> None:  # noqa: F811
    photo = photos.person(2, 0)
    berlin = {"local_zone": "Europe/Berlin", "now": NOW}
    local = photo_date(with_exif(photo, "2024:05:17 14:03:59"), **berlin)
    assert local == PhotoDate(datetime(2024, 5, 17, 12, 3, 59, tzinfo=UTC), "exif")  # CEST: no offset given
    offset = photo_date(with_exif(photo, "2024:05:17 14:03:59", "-05:00"), **berlin)
    assert offset == PhotoDate(datetime(2024, 5, 17, 19, 3, 59, tzinfo=UTC), "exif")  # the camera's offset
    heic = with_exif(photo, "2023:01:02 03:04:05", fmt="HEIF")
    assert photo_date(heic, now=NOW) == PhotoDate(datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC), "exif")
    # an hour ahead of our clock is skew, not the future
    assert photo_date(with_exif(photo, "2026:11:26 10:00:00"), now=NOW).source == "exif"
    for stamp in ("2031:01:01 00:00:00", "1999:12:31 23:59:59", "1970:01:01 00:00:00", "0000:00:00 00:00:00",
                  "2024:13:40 25:61:00", "garbage", "    :  :     :  :  ", None):
        assert photo_date(with_exif(photo, stamp), now=NOW) == PhotoDate(NOW, "upload"), stamp
    assert photo_date(photo, now=NOW) == PhotoDate(NOW, "upload")  # no EXIF at all
    assert photo_date(b"\xff\xd8 not a photo", now=NOW) == PhotoDate(NOW, "upload")
    # the raw reading says what the camera wrote, plausible or not
    assert exif_taken_at(with_exif(photo, "2031:01:01 00:00:00", "+01:00")) == \
        datetime(2030, 12, 31, 23, 0, tzinfo=UTC)


def _taken(rt: Runtime, face_id: int) -> tuple[datetime | None, str | None]:
    with rt.db.session() as session:
        row = session.execute(
            select(Image.taken_at, Image.taken_at_source).join(Face, Face.image_id == Image.id)
            .where(Face.id == face_id)
        ).one()
    return row[0], row[1]


def test_enrollment_and_review_store_the_date(runtime: Runtime, photos: Photos) -> None:  # noqa: F811
    ann = create_child(db=runtime.db, actor=STAFF, external_id="ANN", name="Ann")
    before = datetime.now(UTC)
    outcomes = enroll_photos(runtime=runtime, actor=STAFF, child_id=ann.id, photos=[
        Photo(data=with_exif(photos.person(0, 0), "2024:05:17 14:03:59", "+02:00")),
        Photo(data=with_exif(photos.person(0, 1), "2099:01:01 00:00:00")),  # in the future
    ])
    assert [o.status for o in outcomes] == ["enrolled", "enrolled"]
    kept = datetime(2024, 5, 17, 12, 3, 59, tzinfo=UTC)
    assert _taken(runtime, outcomes[0].enrolled_face_id) == (kept, "exif")
    when, source = _taken(runtime, outcomes[1].enrolled_face_id)
    assert source == "upload" and before <= when <= datetime.now(UTC)

    # a recognition that ends in review keeps its photo: dated from its EXIF too
    runtime.settings = runtime.settings.model_copy(update=TOO_STRICT)
    result = recognize_photo(runtime=runtime, actor=STAFF,
                             data=with_exif(photos.person(0, 2), "2025:02:03 04:05:06"))
    (face,) = result.faces
    assert face.decision == "review" and face.review_id is not None
    with runtime.db.session() as session:
        queued = session.scalar(select(ReviewItem.face_id).where(ReviewItem.id == face.review_id))
    assert _taken(runtime, queued) == (datetime(2025, 2, 3, 4, 5, 6, tzinfo=UTC), "exif")


def test_video_crops_are_dated_when_seen(runtime: Runtime, photos: Photos) -> None:  # noqa: F811
    ann = create_child(db=runtime.db, actor=STAFF, external_id="ANN", name="Ann")
    enroll_photos(runtime=runtime, actor=STAFF, child_id=ann.id, photos=[Photo(data=photos.person(0, 0))])
    runtime.catch_up()
    seen = datetime(2026, 3, 4, 7, 30, tzinfo=UTC)
    match = track(runtime, photos.person(0, 3), track_id="t-match", at=seen)
    assert match.decision == "match"
    record_track(runtime, match)
    runtime.settings = runtime.settings.model_copy(update=TOO_STRICT)
    review = track(runtime, photos.person(0, 4), track_id="t-review", at=seen)
    assert review.decision == "review"
    record_track(runtime, review)
    with runtime.db.session() as session:
        crops = session.execute(
            select(Sighting.track_id, Image.taken_at, Image.taken_at_source)
            .join(Image, Image.path == Sighting.best_crop_path)
        ).all()
    assert sorted(tuple(c) for c in crops) == [
        ("t-match", match.last_seen, "upload"), ("t-review", review.last_seen, "upload")
    ]


def test_import_stores_the_date(runtime: Runtime, photos: Photos, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "old.jpg").write_bytes(with_exif(photos.person(1, 0), "2023:09:01 08:00:00"))
    (folder / "bad.jpg").write_bytes(with_exif(photos.person(1, 1), "not a date"))
    table = importing.read_table("external_id,name,image\nBEN,Ben,old.jpg\nBEN,Ben,bad.jpg\n")
    started = datetime.now(UTC) - timedelta(seconds=1)
    result = importing.run_import(
        db=runtime.db, media=runtime.media, pipeline=runtime.pipeline, model_db_id=runtime.model_db_id,
        table=table, source=importing.FolderSource(folder, max_bytes=10_000_000), actor=STAFF,
        source_name="dates.csv", max_pixels=runtime.settings.max_image_pixels, local_zone="Asia/Tokyo",
    )
    assert result.counts["imported"] == 2, result.counts
    old, bad = (o.face_id for o in result.outcomes)
    assert _taken(runtime, old) == (datetime(2023, 9, 1, 8, 0, tzinfo=timezone(timedelta(hours=9))), "exif")
    when, source = _taken(runtime, bad)
    assert source == "upload" and when >= started

