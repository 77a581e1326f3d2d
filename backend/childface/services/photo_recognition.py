"""Recognition requests end to end: photo bytes -> faces with candidates and decisions.

`recognize_photo`: check the header (per-photo and per-request pixel limits,
before any decoding), decode, run the pipeline (through its micro-batcher:
concurrent requests share one model call), search the gallery and decide
(`services.recognition.identify`, with the marked siblings and twins and each
face's quality: every decision carries its reasons), add names from the DB, and queue the faces
that ended in `review` (`services.review.queue_for_review`). `detect_photo`
stops after detection and quality. `verify_photo` scores one photo's face
against one child, or against another photo's face.

Faces are reported whatever their quality (the caller sees why a face may be
unreliable); only faces that ended in `review` are stored, and, under
`auto_templates = "confident"`, matches far above the accept threshold that
the template policy takes as new templates (`services.templates`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from childface.db.models import Child, ChildStatus
from childface.db.session import Actor
from childface.services.enrollment import Photo, decode_photos, read_headers
from childface.services.errors import Conflict, InvalidImage, InvalidInput, NotFound
from childface.services.recognition import UnknownChild, identify, quality_flaws, verify
from childface.services.workload import pin_request_thread

if TYPE_CHECKING:
    from childface.services.runtime import Runtime
    from childface.vision.pipeline import DetectedFace


@dataclass
class NamedCandidate:
    child_id: int
    external_id: str
    name: str
    score: float
    face_id: int | None


@dataclass
class RecognizedFace:
    face: DetectedFace
    decision: str
    candidates: list[NamedCandidate] = field(default_factory=list)
    #: why the decision is not a match (`services.recognition` reason codes); empty for a match
    reasons: list[str] = field(default_factory=list)
    review_id: int | None = None
    #: decision review only: whether the face waits in the queue, and why not (`services.review.Queued`)
    review_queued: bool | None = None
    review_not_queued_reason: str | None = None


@dataclass
class PhotoRecognition:
    width: int
    height: int
    model_id: str
    faces: list[RecognizedFace]


def _checked(runtime: Runtime, *datas: bytes) -> list[Photo]:
    """The request's photos, checked from their headers (per photo and for the request together)."""
    photos = [Photo(data=data) for data in datas]
    read_headers(photos, runtime.settings)
    for photo in photos:
        _raise_for(photo)
    return photos


def _decode(runtime: Runtime, photo: Photo) -> np.ndarray:
    decode_photos([photo], max_pixels=runtime.settings.max_image_pixels)
    _raise_for(photo)
    assert photo.rgb is not None
    return photo.rgb


def _raise_for(photo: Photo) -> None:
    if photo.error is not None:
        raise InvalidImage(photo.error[1], code=photo.error[0])


def detect_photo(*, runtime: Runtime, data: bytes) -> tuple[int, int, list[DetectedFace]]:
    """(width, height, faces with box, landmarks, quality) of one photo, without embeddings or search."""
    (photo,) = _checked(runtime, data)
    rgb = _decode(runtime, photo)
    height, width = rgb.shape[:2]
    return width, height, runtime.pipeline.detect_only([rgb])[0]


def recognize_photo(
    *, runtime: Runtime, actor: Actor, data: bytes, top_k: int | None = None, queue_review: bool = True
) -> PhotoRecognition:
    from childface.services.review import queue_for_review

    (photo,) = _checked(runtime, data)
    pipeline = runtime.pipeline
    with pipeline.batcher.expecting():  # a batch being gathered waits for this photo while it decodes
        faces = pipeline.process_concurrent(_decode(runtime, photo))
    assert photo.rgb is not None  # kept: the review queue stores the photo's size with undecided faces
    height, width = photo.rgb.shape[:2]
    results: list[RecognizedFace] = []
    if faces:
        vectors = np.stack([f.embedding for f in faces]).astype(np.float32)
        pin_request_thread()
        gallery = runtime.current_gallery()  # first: it also brings in thresholds changed at run time
        k = top_k or runtime.settings.top_k
        identifications = identify(
            gallery, vectors, runtime.settings, k=k, kin=runtime.current_relations(),
            quality=[quality_flaws(f.quality) for f in faces],
        )
        names = _names(runtime, {c.child_id for ident in identifications for c in ident.candidates[:k]})
        for face, ident in zip(faces, identifications, strict=True):
            candidates = [
                NamedCandidate(c.child_id, *names[c.child_id], score=float(c.score), face_id=c.face_id)
                for c in ident.candidates[:k]
                if c.child_id in names
            ]
            results.append(RecognizedFace(face, ident.decision, candidates, reasons=ident.reasons))
    undecided = [r for r in results if r.decision == "review"]
    for result in undecided:
        result.review_queued, result.review_not_queued_reason = False, "not_requested"
    if queue_review and undecided:
        queued = queue_for_review(
            runtime=runtime,
            actor=actor,
            photo=photo,
            faces=[(r.face, r.candidates) for r in undecided],  # type: ignore[misc]
            reasons=[r.reasons for r in undecided],
        )
        for result, outcome in zip(undecided, queued, strict=True):
            result.review_id = outcome.review_id
            result.review_queued = outcome.review_id is not None
            result.review_not_queued_reason = outcome.not_queued_reason
    if faces and runtime.settings.auto_templates == "confident":
        from childface.services.templates import consider_recognition

        for face, ident in zip(faces, identifications, strict=True):  # matches far above the threshold
            consider_recognition(
                runtime=runtime, actor=actor, photo=photo, face=face, identification=ident,
                settings=runtime.settings,
            )
    # the model that made these vectors (after a switch meanwhile, runtime.pipeline is the new one)
    return PhotoRecognition(width=width, height=height, model_id=pipeline.model_id, faces=results)


def _names(runtime: Runtime, child_ids: set[int]) -> dict[int, tuple[str, str]]:
    if not child_ids:
        return {}
    with runtime.db.session() as session:
        rows = session.execute(
            select(Child.id, Child.external_id, Child.display_name).where(Child.id.in_(child_ids))
        )
        return {row.id: (row.external_id, row.display_name) for row in rows}


@dataclass
class Verification:
    decision: str
    score: float | None
    child_id: int | None
    face: DetectedFace | None
    other_face: DetectedFace | None
    reasons: list[str]


def _main_face(faces: list[DetectedFace]) -> DetectedFace | None:
    """The largest face: a verification photo shows one person up front."""
    if not faces:
        return None
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def verify_photo(
    *, runtime: Runtime, data: bytes, child_id: int | None = None, other: bytes | None = None
) -> Verification:
    """Is the main face of `data` this child (or the main face of `other`)? Score and decision."""
    if (child_id is None) == (other is None):
        raise InvalidInput("send either child_id or a second photo (file2)")
    photos = _checked(runtime, data, *([other] if other is not None else []))
    detected: list[list[DetectedFace]] = []
    pipeline = runtime.pipeline
    for photo in photos:  # one at a time: only one photo's pixels are held
        with pipeline.batcher.expecting():
            detected.append(pipeline.process_concurrent(_decode(runtime, photo)))
        photo.rgb = None
    face = _main_face(detected[0])
    reasons = [] if face is not None else ["no_face"]
    if child_id is not None:
        with runtime.db.session() as session:
            child = session.get(Child, child_id)
            if child is None:
                raise NotFound(f"no child with id {child_id}")
            if child.status != ChildStatus.active:
                raise Conflict(f"child {child_id} is archived", code="child_not_active")
        if face is None:
            return Verification("unknown", None, child_id, None, None, reasons)
        pin_request_thread()
        gallery = runtime.current_gallery()
        try:
            result = verify(
                face.embedding, runtime.settings, gallery=gallery, child_id=child_id,
                kin=runtime.current_relations(), quality=quality_flaws(face.quality),
            )
        except UnknownChild:
            return Verification("unknown", None, child_id, face, None, ["child_has_no_templates"])
        return Verification(result.decision, result.score, child_id, face, None, result.reasons)
    other_face = _main_face(detected[1])
    if other_face is None:
        reasons.append("no_face_in_second_photo")
    if face is None or other_face is None:
        return Verification("unknown", None, None, face, other_face, reasons)
    flaws = sorted({*quality_flaws(face.quality), *quality_flaws(other_face.quality)})
    result = verify(face.embedding, runtime.current_settings(), reference=other_face.embedding, quality=flaws)
    return Verification(result.decision, result.score, None, face, other_face, result.reasons)
