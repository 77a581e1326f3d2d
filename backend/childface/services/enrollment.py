"""Enrollment: photos of a known child -> detected, quality-gated, embedded, stored faces.

First the headers of all photos of the request are checked (type, pixels
per photo, and `max_request_pixels` for the request: 413 `too_many_pixels`)
before anything is decoded. Then, one group of photos at a time
(`pixel_groups`: at most GROUP_PIXELS decoded pixels, or one larger photo),
per photo: decode, detect + align + assess + embed (the pipeline, one batch per
group), choose the face (the only one, or the one a hint box points at), apply
the quality gate, then store photo, face and embedding in one unit of work with
one `face.enrolled` audit event; the group's pixels are freed before the next
group is decoded. The caller then runs the gallery's `catch_up`
(`Runtime.catch_up`), which indexes the new face.

Outcome per photo (`PhotoOutcome.status`):
- `enrolled`: a new template; `enrolled_face_id` says which.
- `duplicate`: this photo's face is already stored (same sha256 and an
  overlapping face), for this child or another; nothing changes.
- `needs_confirmation`: the face passed every gate but does not look like the
  child's existing templates (`services/consistency.py`, reason
  `inconsistent_with_child`, scores in `consistency`); nothing stored. Sent
  again with `confirm=True` it is enrolled, and its `face.enrolled` event
  records the scores it was confirmed despite.
- `refused`: nothing stored; `reasons` says why: `invalid_image` (or the
  decoder's code, e.g. `too_many_pixels`), `no_face`, `several_faces_no_hint`,
  `hint_matches_no_face`, `child_not_active`, or the quality gate's codes
  (`too_small`, `blurred`, `profile`, `tilted`, `low_detector_score`,
  `low_quality`).

Only the chosen face of a photo is stored: other people in a group photo are
not enrolled and leave no biometric data behind.

Reusable pieces (the CSV import uses the same rules): `select_face`,
`store_photo` (content-addressed file), `persist_face` (photo row + face +
embedding inside a caller's unit of work), `photo_taken` (when the photo was
taken: its EXIF date when plausible, else the upload time; `vision/exif.py`),
stored with every new photo row as `images.taken_at` / `taken_at_source`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from childface.db.models import ChildStatus, Embedding, Face, Image, ImageSource, ReviewState
from childface.db.session import Actor, UnitOfWork
from childface.services.children import get_child_row
from childface.services.consistency import REASON as INCONSISTENT
from childface.services.consistency import ConsistencyCheck, Verdict
from childface.services.errors import Conflict, InvalidInput, PayloadTooLarge
from childface.services.file_journal import pending_writes
from childface.services.media import MediaStore

if TYPE_CHECKING:
    from childface.config import Settings
    from childface.services.runtime import Runtime
    from childface.vision.exif import PhotoDate
    from childface.vision.pipeline import DetectedFace

#: a hint box selects the detected face it overlaps most, if at least this much (IoU)
MIN_HINT_IOU = 0.3
#: a new face overlapping a stored face of the same photo this much is the same face
SAME_FACE_IOU = 0.5
#: decoded pixels a request holds at once (one group of photos; a larger photo alone): 48 MB as RGB
GROUP_PIXELS = 16_000_000

Box = tuple[float, float, float, float]


@dataclass
class Photo:
    """One uploaded photo: its bytes, its header's pixel count and, while it is processed, the RGB pixels."""

    data: bytes
    filename: str | None = None
    hint_box: Box | None = None
    rgb: np.ndarray | None = None
    sha256: str | None = None
    pixels: int | None = None  # width * height from the header (`read_headers`)
    error: tuple[str, str] | None = None  # (code, message) when it cannot be decoded
    taken: PhotoDate | None = None  # when it was taken (`photo_taken`); read once, before any write lock


@dataclass
class FaceVerdict:
    index: int
    face: DetectedFace
    enrolled: bool = False
    face_id: int | None = None
    refused_reasons: list[str] = field(default_factory=list)


@dataclass
class PhotoOutcome:
    filename: str | None
    status: str  # enrolled | duplicate | refused | needs_confirmation
    reasons: list[str]
    message: str
    sha256: str | None = None
    image_id: int | None = None
    width: int | None = None
    height: int | None = None
    faces: list[FaceVerdict] = field(default_factory=list)
    enrolled_face_id: int | None = None
    #: the consistency check's scores when the face failed it (needs_confirmation, or enrolled confirmed)
    consistency: Verdict | None = None


def iou(a: Box | list[float], b: Box | list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def parse_box(text: str) -> Box:
    """'x1,y1,x2,y2' (or a JSON list) -> a box; InvalidInput when malformed."""
    cleaned = text.strip().strip("[]()")
    try:
        values = [float(v) for v in cleaned.replace(";", ",").split(",")]
    except ValueError:
        raise InvalidInput(f"hint box {text!r} must be four numbers x1,y1,x2,y2") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InvalidInput(f"hint box {text!r} must be four numbers x1,y1,x2,y2")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise InvalidInput(f"hint box {text!r} must have x2 > x1 and y2 > y1")
    return (x1, y1, x2, y2)


def select_face(faces: list[DetectedFace], hint_box: Box | None) -> tuple[int | None, list[str]]:
    """Which detected face a photo enrolls: (index, []) or (None, reason codes)."""
    if not faces:
        return None, ["no_face"]
    if hint_box is None:
        if len(faces) > 1:
            return None, ["several_faces_no_hint"]
        return 0, []
    overlaps = [iou(hint_box, [float(v) for v in face.box]) for face in faces]
    best = int(np.argmax(overlaps))
    if overlaps[best] < MIN_HINT_IOU:
        return None, ["hint_matches_no_face"]
    return best, []


def read_headers(photos: list[Photo], settings: Settings) -> None:
    """Check one request's photos from their headers alone, before anything is decoded.

    Fills each photo's `sha256` and `pixels`, or its `error` (type and
    per-photo pixel checks). Raises PayloadTooLarge (`too_many_pixels`) when
    the readable photos together exceed `settings.max_request_pixels`; each
    photo counts at least the detector's working size (detector_input_size
    squared: a tiny photo is scaled up to it), so the budget bounds a
    request's detection work as well as its memory.
    """
    from childface.services.media import sha256_hex
    from childface.vision.decode import ImageDecodeError, image_header

    floor = settings.detector_input_size**2
    total = 0
    for photo in photos:
        photo.sha256 = sha256_hex(photo.data)
        try:
            photo.pixels = image_header(photo.data, settings.max_image_pixels).pixels
        except ImageDecodeError as exc:
            photo.error = (decode_error_code(exc.code), exc.message)
            continue
        total += max(photo.pixels, floor)
    if total > settings.max_request_pixels:
        raise PayloadTooLarge(
            f"the {len(photos)} photo(s) of this request have {total:,} pixels in all (width x height, "
            f"each counted as at least {floor:,}); the limit per request is {settings.max_request_pixels:,} "
            "(setting max_request_pixels): send fewer or smaller photos per request",
            code="too_many_pixels",
        )


def decode_photos(photos: list[Photo], *, max_pixels: int) -> None:
    """Fill the `rgb` of each photo that has no `error` yet, or set its `error` (corrupt pixel data).

    Call `read_headers` first; decode only as many photos as the caller means
    to hold at once (`pixel_groups`).
    """
    from childface.vision.decode import ImageDecodeError, decode_image

    for photo in photos:
        if photo.error is not None:
            continue
        try:
            photo.rgb = decode_image(photo.data, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            photo.error = (decode_error_code(exc.code), exc.message)


def pixel_groups(photos: list[Photo], budget: int = GROUP_PIXELS) -> list[list[Photo]]:
    """Consecutive photos in groups of at most `budget` header pixels and DETECT_BATCH photos.

    A photo larger than the budget is a group of its own: one group's decoded
    pixels are all a request holds at a time, while small photos still share
    the detector's batches.
    """
    from childface.vision.pipeline import DETECT_BATCH

    groups: list[list[Photo]] = []
    size = 0
    for photo in photos:
        pixels = photo.pixels or 0
        if not groups or len(groups[-1]) >= DETECT_BATCH or size + pixels > budget:
            groups.append([])
            size = 0
        groups[-1].append(photo)
        size += pixels
    return groups


def decode_error_code(decoder_code: str) -> str:
    """The API's reason code for a decoder failure: `too_many_pixels`, else `invalid_image`."""
    return "too_many_pixels" if decoder_code == "too_many_pixels" else "invalid_image"


def store_photo(media: MediaStore, data: bytes) -> tuple[str, str]:
    """Write the photo's bytes to the media store: (sha256, path relative to the media folder).

    Idempotent. Call it inside `media.hold(sha)` and `file_journal.pending_writes`,
    which also hold the unit of work that references it.
    """
    return media.put(data)


def persist_face(
    session: Session,
    *,
    sha256: str,
    path: str,
    width: int,
    height: int,
    source: ImageSource,
    uploaded_by: str,
    face: DetectedFace,
    child_id: int | None,
    model_db_id: int,
    review_state: ReviewState = ReviewState.enrolled,
    mask: bool | None = None,
    arousal: float | None = None,
    valence: float | None = None,
    taken: PhotoDate | None = None,
) -> Face:
    """Add one face (and its embedding) of a photo inside the caller's transaction.

    One face per (photo, box), across processes: the photo's row is locked for
    the rest of the caller's transaction (`SELECT ... FOR UPDATE` on PostgreSQL;
    SQLite writers hold the database's write lock from BEGIN IMMEDIATE), then a
    stored face overlapping this one (IoU >= SAME_FACE_IOU) raises
    `FaceAlreadyStored` before anything of this face is written. The photo's row
    is reused when the same bytes are already stored (a group photo can enroll
    several children); a concurrent first insert of the same photo loses on the
    unique sha256 inside a savepoint and then sees the winner's row.
    `taken`: when a new photo row's picture was taken (`photo_taken`); None: now, as "upload".
    Returns the flushed Face (it has an id).
    """
    image = _locked_image(session, sha256)
    if image is None:
        try:
            with session.begin_nested():
                session.add(Image(sha256=sha256, path=path, width=width, height=height, source=source,
                                  uploaded_by=uploaded_by, **taken_columns(taken)))
        except IntegrityError:
            pass  # another writer committed this photo first: use its row
        image = _locked_image(session, sha256)
        assert image is not None
    x1, y1, x2, y2 = (float(v) for v in face.box)
    existing = _overlapping_face(session, image.id, [x1, y1, x2, y2])
    if existing is not None:
        raise FaceAlreadyStored(existing.id, existing.child_id, existing.image_id, existing.review_state)
    row = Face(
        image_id=image.id,
        child_id=child_id,
        box_x1=x1,
        box_y1=y1,
        box_x2=x2,
        box_y2=y2,
        landmarks=[[float(x), float(y)] for x, y in np.asarray(face.landmarks).reshape(5, 2)],
        detector_score=float(face.score),
        quality_score=float(face.quality.score),
        quality_details=face.quality.to_dict(),
        mask=mask,
        arousal=arousal,
        valence=valence,
        review_state=review_state,
    )
    session.add(row)
    session.flush()
    vector = np.ascontiguousarray(face.embedding, dtype="<f4").reshape(-1)
    session.add(Embedding.of(face_id=row.id, model_id=model_db_id, vector=vector.tobytes()))
    session.flush()
    return row


def photo_taken(photo: Photo, settings: Settings) -> PhotoDate:
    """When the photo was taken (EXIF DateTimeOriginal when plausible, else now as "upload"), read from
    its header once and kept on the photo: callers read it before they take a write lock."""
    if photo.taken is None:
        from childface.vision.exif import photo_date

        photo.taken = photo_date(photo.data, local_zone=settings.attendance_timezone)
    return photo.taken


def taken_columns(taken: PhotoDate | None) -> dict[str, Any]:
    """The `images` columns `taken_at` and `taken_at_source` for a new photo row."""
    if taken is None:
        return {"taken_at": datetime.now(UTC), "taken_at_source": "upload"}
    return {"taken_at": taken.at, "taken_at_source": taken.source}


def _locked_image(session: Session, sha256: str) -> Image | None:
    # FOR UPDATE: writers of faces on one photo queue here (SQLite ignores it: one writer at a time)
    query = select(Image).where(Image.sha256 == sha256).with_for_update()
    return session.scalar(query.execution_options(populate_existing=True))


def _overlapping_face(session: Session, image_id: int, box: list[float]) -> Face | None:
    for stored in session.scalars(select(Face).where(Face.image_id == image_id).order_by(Face.id)):
        if iou(stored.box, box) >= SAME_FACE_IOU:
            return stored
    return None


class FaceAlreadyStored(Exception):
    """`persist_face` found this face on the photo already; nothing of it was written."""

    def __init__(
        self, face_id: int, child_id: int | None, image_id: int, review_state: ReviewState | None = None
    ) -> None:
        super().__init__(f"face {face_id} of image {image_id} is already stored")
        self.face_id, self.child_id, self.image_id = face_id, child_id, image_id
        self.review_state = review_state


def _refused(photo: Photo, reasons: list[str], message: str, **extra: Any) -> PhotoOutcome:
    return PhotoOutcome(
        filename=photo.filename,
        status="refused",
        reasons=reasons,
        message=message,
        sha256=photo.sha256,
        **extra,
    )


def enroll_photos(
    *,
    runtime: Runtime,
    actor: Actor,
    child_id: int,
    photos: list[Photo],
    source: ImageSource = ImageSource.api,
    mask: bool | None = None,
    arousal: float | None = None,
    valence: float | None = None,
    confirm: bool = False,
) -> list[PhotoOutcome]:
    """Enroll photos of one child; one outcome per photo, in order (see the module docstring).

    `confirm`: enroll faces that fail the consistency check too (the caller has looked at them).
    """
    if not photos:
        raise InvalidInput("send at least one photo")
    for name, value in (("arousal", arousal), ("valence", valence)):
        if value is not None and not (np.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidInput(f"{name} must be between 0 and 1")
    read_headers(photos, runtime.settings)  # may refuse the whole request before any decoding
    with runtime.db.session() as session:
        child = get_child_row(session, child_id)
        if child.status != ChildStatus.active:
            raise Conflict(
                f"child {child_id} is archived; unarchive it before enrolling photos", code="child_not_active"
            )
    done: dict[int, PhotoOutcome] = {}
    try:
        for group in pixel_groups([p for p in photos if p.error is None]):
            decode_photos(group, max_pixels=runtime.settings.max_image_pixels)
            readable = [p for p in group if p.rgb is not None]
            detected = run_pipeline(runtime, [p.rgb for p in readable])
            for photo, faces in zip(readable, detected, strict=True):
                done[id(photo)] = _enroll_one(
                    runtime, actor, child_id, photo, faces, source, mask, arousal, valence, confirm
                )
                photo.rgb = None  # stored or refused: free its pixels before the next group is decoded
    finally:
        if any(o.status == "enrolled" for o in done.values()):
            runtime.catch_up()
    outcomes: list[PhotoOutcome] = []
    for photo in photos:
        if id(photo) not in done:
            assert photo.error is not None
            done[id(photo)] = _refused(photo, [photo.error[0]], photo.error[1])
        outcomes.append(done[id(photo)])
    return outcomes


def run_pipeline(runtime: Runtime, images: list[np.ndarray]) -> list[list[DetectedFace]]:
    """The pipeline on decoded images (it serialises its own model calls); pass one `pixel_groups`
    group at a time so a request never holds more decoded pixels than that."""
    return runtime.pipeline.process(images) if images else []


def _enroll_one(
    runtime: Runtime,
    actor: Actor,
    child_id: int,
    photo: Photo,
    faces: list[DetectedFace],
    source: ImageSource,
    mask: bool | None,
    arousal: float | None,
    valence: float | None,
    confirm: bool,
) -> PhotoOutcome:
    assert photo.rgb is not None and photo.sha256 is not None
    height, width = photo.rgb.shape[:2]
    verdicts = [FaceVerdict(index=i, face=f) for i, f in enumerate(faces)]
    extra = {"width": width, "height": height, "faces": verdicts}
    index, reasons = select_face(faces, photo.hint_box)
    if index is None:
        messages = {
            "no_face": "no face was found in the photo",
            "several_faces_no_hint": f"{len(faces)} faces in the photo: send a hint box to say which one",
            "hint_matches_no_face": "the hint box overlaps no detected face",
        }
        return _refused(photo, reasons, messages[reasons[0]], **extra)
    chosen = verdicts[index]
    quality = chosen.face.quality
    if not quality.passed or chosen.face.embedding is None:
        chosen.refused_reasons = list(quality.reasons) or ["low_quality"]
        return _refused(
            photo,
            chosen.refused_reasons,
            "the face did not pass the quality gate: " + ", ".join(chosen.refused_reasons),
            **extra,
        )
    stored = _stored_face(runtime, photo.sha256, chosen.face.box)
    if stored is not None:  # said before the consistency check: a stored face is never stored twice
        chosen.face_id = stored.face_id
        return _duplicate(runtime, photo, child_id, stored, **extra)
    verdict = ConsistencyCheck.for_runtime(runtime).check(child_id, chosen.face.embedding)
    if verdict is not None and verdict.consistent:
        verdict = None  # from here on: the failed check, if any
    if verdict is not None and not confirm:
        return PhotoOutcome(
            filename=photo.filename,
            status="needs_confirmation",
            reasons=[INCONSISTENT],
            message="this face does not look like the child's other photos ("
            + verdict.words() + "): check it, then send it again with confirm=true to enroll it anyway",
            sha256=photo.sha256,
            consistency=verdict,
            **extra,
        )
    media = runtime.media
    _, relative = media.locate(photo.data)
    photo_taken(photo, runtime.settings)  # the EXIF date is read here, not under the write lock
    # the file is announced before it is written and settled after the commit: a crash strands nothing
    with media.hold(photo.sha256), pending_writes(runtime.db, media, [(photo.sha256, relative)]):
        store_photo(media, photo.data)
        try:
            face = _store_face(
                runtime, actor, child_id, photo, relative, chosen.face, source, mask, arousal, valence,
                verdict,
            )
        except FaceAlreadyStored as dup:  # stored meanwhile by another writer
            chosen.face_id = dup.face_id
            return _duplicate(runtime, photo, child_id, dup, **extra)
    chosen.enrolled, chosen.face_id = True, face.id
    return PhotoOutcome(
        filename=photo.filename,
        status="enrolled",
        reasons=[],
        message="enrolled",
        sha256=photo.sha256,
        image_id=face.image_id,
        width=width,
        height=height,
        faces=verdicts,
        enrolled_face_id=face.id,
        consistency=verdict,
    )


def _stored_face(runtime: Runtime, sha256: str, box: Any) -> FaceAlreadyStored | None:
    """The stored face of this photo that `box` overlaps, if any (a read; `persist_face` decides)."""
    with runtime.db.session() as session:
        image = session.scalar(select(Image).where(Image.sha256 == sha256))
        stored = None if image is None else _overlapping_face(session, image.id, [float(v) for v in box])
        if stored is None:
            return None
        return FaceAlreadyStored(stored.id, stored.child_id, stored.image_id, stored.review_state)


def _duplicate(
    runtime: Runtime, photo: Photo, child_id: int, dup: FaceAlreadyStored, **extra: Any
) -> PhotoOutcome:
    """The outcome for a face that is stored already, said for staff: whose it is, not its ids."""
    if dup.child_id == child_id:
        with runtime.db.session() as session:
            name = get_child_row(session, child_id).display_name
        where = f"enrolled for {name}"
    elif dup.child_id is not None:
        where = "enrolled for another child"
    elif dup.review_state == ReviewState.rejected:
        where = "in the system and was rejected in review"
    else:
        where = "waiting in the review queue"
    return PhotoOutcome(
        filename=photo.filename,
        status="duplicate",
        reasons=["duplicate_image"],
        message=f"this photo is already {where}",
        sha256=photo.sha256,
        image_id=dup.image_id,
        **extra,
    )


def _store_face(
    runtime: Runtime,
    actor: Actor,
    child_id: int,
    photo: Photo,
    relative: str,
    detected: DetectedFace,
    source: ImageSource,
    mask: bool | None,
    arousal: float | None,
    valence: float | None,
    confirmed: Verdict | None,
) -> Face:
    """One unit of work: the face, its embedding and `face.enrolled`; FaceAlreadyStored (nothing written,
    no audit event: leaving by the exception rolls back) when the photo has this face already.
    `confirmed`: the failed consistency check the caller confirmed, recorded in the event."""
    assert photo.rgb is not None and photo.sha256 is not None
    height, width = photo.rgb.shape[:2]
    with runtime.db.unit_of_work(actor) as uow:
        # locked: an erasure of the child in flight ends before this face is written (then 404)
        if get_child_row(uow.session, child_id, lock=True).status != ChildStatus.active:
            raise Conflict(f"child {child_id} was archived meanwhile", code="child_not_active")
        face = persist_face(
            uow.session,
            sha256=photo.sha256,
            path=relative,
            width=width,
            height=height,
            source=source,
            uploaded_by=str(actor),
            face=detected,
            child_id=child_id,
            model_db_id=runtime.model_db_id,
            mask=mask,
            arousal=arousal,
            valence=valence,
            taken=photo.taken,
        )
        _audit_enrolled(uow, face, source, confirmed)
    return face


def _audit_enrolled(uow: UnitOfWork, face: Face, source: ImageSource, confirmed: Verdict | None) -> None:
    after: dict[str, Any] = {
        "face_id": face.id,
        "image_id": face.image_id,
        "source": source.value,
        "quality_score": round(face.quality_score, 4),
    }
    if confirmed is not None:
        after["confirmed_despite_check"] = confirmed.to_dict()
    uow.audit(
        "face.enrolled",
        target_type="face",
        target_id=face.id,
        child_id=face.child_id,
        after=after,
        face_ids=[face.id],
    )
