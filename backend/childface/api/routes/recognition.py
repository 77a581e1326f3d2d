"""Recognition for other systems: who is in this photo, is this that child, where are the faces."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from childface.api.convert import detected_public
from childface.api.deps import Recognizer, RuntimeDep
from childface.api.schemas import (
    MAX_ROW_ID,
    Candidate,
    DetectResponse,
    RecognizedFace,
    RecognizeResponse,
    VerifyResponse,
)
from childface.services import photo_recognition

router = APIRouter(tags=["recognition"])


@router.post("/recognize", response_model=RecognizeResponse)
def recognize(
    principal: Recognizer,
    runtime: RuntimeDep,
    file: Annotated[UploadFile, File(description="The photo (JPEG, PNG, WebP, ...).")],
    top_k: Annotated[
        int | None, Form(ge=1, le=100, description="Candidates per face (default: setting)")
    ] = None,
    queue_review: Annotated[bool, Form(description="Keep faces that end in `review` for a person")] = True,
) -> RecognizeResponse:
    """Every face in the photo with box, landmarks, quality, candidates (best first) and a decision.

    `match`: the best candidate is sure (score >= accept threshold, clear margin
    over the next child). `review`: plausible but unsure; the face is queued for
    staff (`review_id`); `review_queued` false with `review_not_queued_reason` when it
    was not (`queue_review` false, or this face of this photo is already on record).
    `unknown`: nobody enrolled is close. `reasons` says why a face is not a `match`
    (`below_accept`, `small_margin`, `sibling`, `twin`, `quality:blurred`, ...).
    """
    result = photo_recognition.recognize_photo(
        runtime=runtime, actor=principal.actor, data=file.file.read(), top_k=top_k, queue_review=queue_review
    )
    return RecognizeResponse(
        width=result.width,
        height=result.height,
        model_id=result.model_id,
        faces=[
            RecognizedFace(
                **detected_public(r.face).model_dump(),
                decision=r.decision,  # type: ignore[arg-type]
                reasons=r.reasons,
                candidates=[Candidate(**c.__dict__) for c in r.candidates],
                review_id=r.review_id,
                review_queued=r.review_queued,
                review_not_queued_reason=r.review_not_queued_reason,  # type: ignore[arg-type]
            )
            for r in result.faces
        ],
    )


@router.post("/verify", response_model=VerifyResponse)
def verify(
    _: Recognizer,
    runtime: RuntimeDep,
    file: Annotated[UploadFile, File(description="Photo of the person to check (largest face counts).")],
    child_id: Annotated[
        int | None, Form(ge=1, le=MAX_ROW_ID, description="Compare with this child's templates...")
    ] = None,
    file2: Annotated[
        UploadFile | None, File(description="...or with the largest face of this photo.")
    ] = None,
) -> VerifyResponse:
    """One-to-one: is this the child (or the person in the second photo)? Score and decision."""
    result = photo_recognition.verify_photo(
        runtime=runtime,
        data=file.file.read(),
        child_id=child_id,
        other=file2.file.read() if file2 is not None else None,
    )
    return VerifyResponse(
        decision=result.decision,  # type: ignore[arg-type]
        score=result.score,
        child_id=result.child_id,
        face=detected_public(result.face) if result.face is not None else None,
        other_face=detected_public(result.other_face) if result.other_face is not None else None,
        reasons=result.reasons,
    )


@router.post("/detect", response_model=DetectResponse)
def detect(
    _: Recognizer,
    runtime: RuntimeDep,
    file: Annotated[UploadFile, File(description="The photo.")],
) -> DetectResponse:
    """Faces only: box, landmarks, detector score and quality; nothing is searched or stored."""
    width, height, faces = photo_recognition.detect_photo(runtime=runtime, data=file.file.read())
    return DetectResponse(width=width, height=height, faces=[detected_public(f) for f in faces])
