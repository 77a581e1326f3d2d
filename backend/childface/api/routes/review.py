"""The review queue (recognitions a person decides) and likely double enrollments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from childface.api.convert import child_public, face_public
from childface.api.deps import Enroller, Offset, PathId, Reader, RuntimeDep, Writer
from childface.api.schemas import (
    DismissalPublic,
    DismissRequest,
    DuplicatePair,
    DuplicateSide,
    DuplicatesResponse,
    ResolveRequest,
    ResolveResponse,
    ReviewCandidate,
    ReviewItemPublic,
    ReviewPage,
    ReviewSource,
)
from childface.db.models import ReviewStatus
from childface.services import children as children_service
from childface.services import dismissals, duplicates, review
from childface.services.children import MAX_PAGE

router = APIRouter(prefix="/review", tags=["review"])


def _source(queued_by: review.QueuedBy | None) -> ReviewSource | None:
    if queued_by is None:
        return None
    kind, _, name = queued_by.actor.partition(":")
    kind = kind if kind in ("user", "api_key") else "system"
    return ReviewSource(at=queued_by.at, actor=queued_by.actor, kind=kind, name=name)


def _item_public(view: review.ReviewView) -> ReviewItemPublic:
    item = view.item
    return ReviewItemPublic(
        id=item.id,
        status=item.status.value,
        face=face_public(view.face, view.image),
        image_width=view.image.width,
        image_height=view.image.height,
        source=_source(view.queued_by),
        candidates=[
            ReviewCandidate(
                child_id=c["child_id"],
                score=c["score"],
                external_id=view.names.get(c["child_id"], (None, None))[0],
                name=view.names.get(c["child_id"], (None, None))[1],
            )
            for c in item.candidates
        ],
        reasons=list(item.reasons or []),
        resolution=item.resolution,
        resolved_by=item.resolved_by,
        resolved_at=item.resolved_at,
        created_at=item.created_at,
    )


@router.get("/queue", response_model=ReviewPage)
def review_queue(
    _: Reader,
    runtime: RuntimeDep,
    status: ReviewStatus | None = ReviewStatus.open,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Offset = 0,
) -> ReviewPage:
    """Faces recognition could not decide, oldest first (`status=resolved` for the decided ones)."""
    page = review.list_queue(runtime=runtime, status=status, limit=limit, offset=offset)
    return ReviewPage(
        items=[_item_public(v) for v in page.items], total=page.total, limit=page.limit, offset=page.offset
    )


@router.get("/duplicates", response_model=DuplicatesResponse)
def review_duplicates(
    _: Enroller,
    runtime: RuntimeDep,
    threshold: Annotated[
        float | None, Query(ge=-1.0, le=1.0, description="Default: review threshold")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> DuplicatesResponse:
    """Pairs of different children whose templates are suspiciously similar (enrolled twice?).

    Staff only (the `enroll` permission: staff and admin users, API keys with the
    enroll or admin scope): it compares every child's face with every other's.
    Pairs dismissed as "not the same child" never come back. When one face alone
    makes a pair, `suspect_face_id` names it: move it rather than merge.
    """
    settings = runtime.current_settings()  # thresholds another process changed a moment ago count
    used = settings.review_threshold if threshold is None else threshold
    pairs = duplicates.find_duplicates(
        db=runtime.db, settings=settings, model_db_id=runtime.model_db_id, threshold=used, limit=limit
    )
    return DuplicatesResponse(
        threshold=used,
        pairs=[
            DuplicatePair(
                a=DuplicateSide(**p.a.__dict__),
                b=DuplicateSide(**p.b.__dict__),
                score=p.score,
                suspect_face_id=p.suspect_face_id,
                suspect_child_id=p.suspect_child_id,
            )
            for p in pairs
        ],
    )


@router.post("/duplicates/dismiss", response_model=DismissalPublic, status_code=201)
def dismiss_duplicate(body: DismissRequest, principal: Writer, runtime: RuntimeDep) -> DismissalPublic:
    """Record that two children are not the same child: the pair never appears in the duplicates again.

    Audited as `duplicates.dismissed` (in both children's histories); 409 `conflict` when the pair
    was dismissed before.
    """
    row = dismissals.dismiss_pair(
        db=runtime.db, actor=principal.actor, child_a_id=body.child_a_id, child_b_id=body.child_b_id
    )
    return DismissalPublic(
        child_a_id=row.child_a_id, child_b_id=row.child_b_id, dismissed_by=row.dismissed_by,
        dismissed_at=row.dismissed_at,
    )


@router.get("/{review_id}", response_model=ReviewItemPublic)
def get_review_item(review_id: PathId, _: Reader, runtime: RuntimeDep) -> ReviewItemPublic:
    return _item_public(review.get_review(runtime=runtime, review_id=review_id))


@router.post("/{review_id}/resolve", response_model=ResolveResponse)
def resolve_review_item(
    review_id: PathId, body: ResolveRequest, principal: Writer, runtime: RuntimeDep
) -> ResolveResponse:
    """Decide who the face is: confirm the best candidate, assign a child, create a child, or dismiss.

    With `add_as_template` the face (if it passed the quality gate) becomes a
    new template of that child, so recognition keeps up as children grow.
    """
    result = review.resolve(
        runtime=runtime,
        actor=principal.actor,
        review_id=review_id,
        action=body.action,
        child_id=body.child_id,
        new_child=body.new_child.model_dump() if body.new_child else None,
        add_as_template=body.add_as_template,
    )
    runtime.catch_up()
    child = None
    if result.child is not None:
        summary = children_service.get_child(db=runtime.db, child_id=result.child.id)
        child = child_public(summary.child, summary.n_faces, summary.thumbnail_face_id)
    return ResolveResponse(
        review=_item_public(result.view),
        child=child,
        template_added=result.template_added,
        template_refused_reasons=result.template_refused_reasons,
    )
