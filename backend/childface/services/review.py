"""The review queue: recognitions a person has to decide, and how their answers feed the gallery.

A recognised face whose decision is `review` is kept: its photo (source
`recognition`), the face with its embedding (`child_id` empty, review state
`pending_review`, so it is not searchable) and a `ReviewItem` with the
candidates recognition proposed — one unit of work, one `review.queued` event.
The same photo recognised again reuses the open item of that face; a face of
the photo that is already on record without an open item (an enrolled
template, or a review already decided) is not queued again, and the caller
is told why (`Queued.not_queued_reason`).

Resolving an item (one unit of work, one `review.resolved` event listing the
face, so the gallery re-reads it):
- `confirm`: the face is the best candidate;
- `assign`: the face is `child_id`;
- `new_child`: the face is a child not enrolled yet, created here;
- `dismiss`: nobody we know (the face stays on record, not searchable).
A confirmed/assigned face that passed the quality gate becomes an enrolled
template of that child: this is how the gallery follows children as they
grow. With `add_as_template` true staff decide so themselves; by default
(None) the template policy decides (`services.templates`: `auto_templates`,
near-duplicates, siblings, the per-child cap) in a `face.auto_template` unit
of work right after this one; false: never. A face that is not added keeps its
child for the record with review state `rejected` (never searched).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from childface.db.models import (
    AuditEvent,
    Child,
    ChildStatus,
    Face,
    Image,
    ImageSource,
    ReviewItem,
    ReviewState,
    ReviewStatus,
)
from childface.db.session import Actor
from childface.services.children import MAX_PAGE, Page, clean_text, get_child_row, snapshot
from childface.services.enrollment import FaceAlreadyStored, Photo, persist_face, photo_taken, store_photo
from childface.services.errors import Conflict, InvalidInput, NotFound
from childface.services.file_journal import pending_writes

if TYPE_CHECKING:
    from childface.services.gallery import ChildCandidate
    from childface.services.runtime import Runtime
    from childface.vision.pipeline import DetectedFace

ACTIONS = ("confirm", "assign", "new_child", "dismiss")


def _children_still_there(
    session: Session, faces: list[tuple[DetectedFace, list[ChildCandidate]]]
) -> set[int]:
    """The proposed children that still exist, share-locked: an erasure that committed after the
    search (which read the index before this transaction) must not be proposed again."""
    proposed = sorted({c.child_id for _, candidates in faces for c in candidates})
    if not proposed:
        return set()
    query = select(Child.id).where(Child.id.in_(proposed)).with_for_update(read=True)
    return set(session.scalars(query))


def queue_for_review(
    *,
    runtime: Runtime,
    actor: Actor,
    photo: Photo,
    faces: list[tuple[DetectedFace, list[ChildCandidate]]],
    reasons: list[list[str]] | None = None,
) -> list[Queued]:
    """Store a probe photo's undecided faces and open one review item each.

    `reasons`: per face, why recognition did not decide it (`services.recognition` codes), stored
    with its item.

    Returns one outcome per face, in order: the open item, or (no item) why the
    face was not queued: `already_enrolled` (e.g. an enrollment photo sent to
    recognition), `already_decided` (its review was resolved before) or
    `candidates_erased` (every child it was proposed for was erased since).
    """
    assert photo.rgb is not None and photo.sha256 is not None
    height, width = photo.rgb.shape[:2]
    media = runtime.media
    _, relative = media.locate(photo.data)
    taken = photo_taken(photo, runtime.settings)  # read before the write lock (video crops come dated)
    # announced before it is written, settled after the commit: a crash strands no file
    with media.hold(photo.sha256), pending_writes(runtime.db, media, [(photo.sha256, relative)]):
        store_photo(media, photo.data)
        try:
            with runtime.db.unit_of_work(actor) as uow:
                session = uow.session
                item_ids: list[Queued] = []
                face_ids: list[int] = []
                alive = _children_still_there(session, faces)
                for n, (detected, found) in enumerate(faces):
                    candidates = [c for c in found if c.child_id in alive]
                    if found and not candidates:
                        # every child it was proposed for was erased since the search: most likely that
                        # child's face, and erasure must leave nothing of it
                        item_ids.append(Queued(None, "candidates_erased"))
                        continue
                    try:
                        face = persist_face(
                            session,
                            sha256=photo.sha256,
                            path=relative,
                            width=width,
                            height=height,
                            source=ImageSource.recognition,
                            uploaded_by=str(actor),
                            face=detected,
                            child_id=None,
                            model_db_id=runtime.model_db_id,
                            review_state=ReviewState.pending_review,
                            taken=taken,
                        )
                    except FaceAlreadyStored as existing:  # stored before (by anyone): its open item, if any
                        item_ids.append(_already_stored(session, existing.face_id))
                        continue
                    item = ReviewItem(
                        face_id=face.id,
                        candidates=[
                            {"child_id": c.child_id, "score": round(float(c.score), 6), "face_id": c.face_id}
                            for c in candidates
                        ],
                        reasons=list(reasons[n]) if reasons is not None else None,
                    )
                    session.add(item)
                    session.flush()
                    item_ids.append(Queued(item.id))
                    face_ids.append(face.id)
                if not face_ids:
                    raise _NothingToWrite(item_ids)  # all queued before: roll back, nothing to audit
                uow.audit(
                    "review.queued",
                    target_type="image",
                    target_id=photo.sha256[:16],
                    after={"review_ids": [q.review_id for q in item_ids], "faces": len(face_ids)},
                    face_ids=face_ids,
                )
        except _NothingToWrite as nothing:
            return nothing.item_ids
    return item_ids


@dataclass(frozen=True)
class Queued:
    """A face's place in the queue: its open item, or why it has none."""

    review_id: int | None
    not_queued_reason: str | None = None


def _already_stored(session: Any, face_id: int) -> Queued:
    open_item = session.scalar(
        select(ReviewItem.id).where(ReviewItem.face_id == face_id, ReviewItem.status == ReviewStatus.open)
    )
    if open_item is not None:
        return Queued(open_item)
    state = session.scalar(select(Face.review_state).where(Face.id == face_id))
    return Queued(None, "already_enrolled" if state == ReviewState.enrolled else "already_decided")


class _NothingToWrite(Exception):
    def __init__(self, item_ids: list[Queued]) -> None:
        super().__init__(item_ids)
        self.item_ids = item_ids


@dataclass(frozen=True)
class QueuedBy:
    """Who sent the photo that queued an item, and when (its `review.queued` event)."""

    at: datetime
    actor: str


@dataclass
class ReviewView:
    item: ReviewItem
    face: Face
    image: Image
    #: child_id -> (external_id, name) for the candidates that still exist
    names: dict[int, tuple[str, str]] = field(default_factory=dict)
    queued_by: QueuedBy | None = None


def _queued_by(session: Any, rows: list[tuple[ReviewItem, Image]]) -> dict[int, QueuedBy]:
    """item id -> its queuing event, found by the photo the event names (an indexed target lookup)."""
    targets = {image.sha256[:16] for _, image in rows}
    if not targets:
        return {}
    events = session.execute(
        select(AuditEvent.at, AuditEvent.actor, AuditEvent.after).where(
            AuditEvent.target_type == "image",
            AuditEvent.target_id.in_(targets),
            AuditEvent.action == "review.queued",
        )
    )
    found: dict[int, QueuedBy] = {}
    for at, actor, after in events:
        for review_id in (after or {}).get("review_ids") or ():
            if isinstance(review_id, int):
                found[review_id] = QueuedBy(at=at, actor=actor)
    return found


def _names(session: Any, child_ids: set[int]) -> dict[int, tuple[str, str]]:
    if not child_ids:
        return {}
    rows = session.execute(
        select(Child.id, Child.external_id, Child.display_name).where(Child.id.in_(child_ids))
    )
    return {row.id: (row.external_id, row.display_name) for row in rows}


def list_queue(
    *, runtime: Runtime, status: ReviewStatus | None = ReviewStatus.open, limit: int = 50, offset: int = 0
) -> Page:
    """Review items, oldest first (a queue), with their face and candidate names."""
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    conditions = [] if status is None else [ReviewItem.status == status]
    with runtime.db.session() as session:
        total = session.scalar(select(func.count(ReviewItem.id)).where(*conditions)) or 0
        rows = session.execute(
            select(ReviewItem, Face, Image)
            .join(Face, ReviewItem.face_id == Face.id)
            .join(Image, Face.image_id == Image.id)
            .where(*conditions)
            .order_by(ReviewItem.id)
            .limit(limit)
            .offset(offset)
        ).all()
        names = _names(session, {c["child_id"] for item, _, _ in rows for c in item.candidates})
        sources = _queued_by(session, [(item, image) for item, _, image in rows])
    return Page(
        items=[ReviewView(item, face, image, names, sources.get(item.id)) for item, face, image in rows],
        total=int(total),
        limit=limit,
        offset=offset,
    )


def get_review(*, runtime: Runtime, review_id: int) -> ReviewView:
    with runtime.db.session() as session:
        item = session.get(ReviewItem, review_id)
        if item is None:
            raise NotFound(f"no review item with id {review_id}")
        face = session.get(Face, item.face_id)
        image = session.get(Image, face.image_id)
        names = _names(session, {c["child_id"] for c in item.candidates})
        source = _queued_by(session, [(item, image)]).get(item.id)
    return ReviewView(item, face, image, names, source)


@dataclass
class Resolution:
    view: ReviewView
    child: Child | None
    template_added: bool
    template_refused_reasons: list[str]


def resolve(
    *,
    runtime: Runtime,
    actor: Actor,
    review_id: int,
    action: str,
    child_id: int | None = None,
    new_child: dict[str, Any] | None = None,
    add_as_template: bool | None = None,
) -> Resolution:
    """Decide who a queued face is (see the module docstring); then run `runtime.catch_up()`.

    `add_as_template`: True: staff want the face as a template (added if it passed the quality
    gate); False: never; None: the template policy decides (`services.templates`,
    `auto_templates`), in a `face.auto_template` unit of work after this one.
    """
    if action not in ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}")
    if action == "assign" and child_id is None:
        raise InvalidInput("action 'assign' needs child_id")
    if action == "new_child" and not new_child:
        raise InvalidInput("action 'new_child' needs new_child with external_id and name")
    with runtime.db.unit_of_work(actor) as uow:
        session = uow.session
        item = session.scalar(select(ReviewItem).where(ReviewItem.id == review_id).with_for_update())
        if item is None:
            raise NotFound(f"no review item with id {review_id}")
        if item.status != ReviewStatus.open:
            raise Conflict(f"review item {review_id} was already resolved ({item.resolution})")
        face = session.get(Face, item.face_id)
        target = _target_child(session, action, item, child_id, new_child)
        before = {
            "status": item.status.value,
            "face_state": face.review_state.value,
            "child_id": face.child_id,
        }
        refused: list[str] = []
        added = by_policy = False
        if target is None:
            face.child_id = None
            face.review_state = ReviewState.rejected
        else:
            face.child_id = target.id
            details = face.quality_details or {}
            if add_as_template is False:
                refused = ["not_requested"]
            elif not details.get("passed", False):
                refused = list(details.get("reasons", [])) or ["low_quality"]
            elif add_as_template is None and runtime.settings.auto_templates == "off":
                refused = ["auto_templates_off"]
            by_policy = add_as_template is None and not refused
            added = not refused and not by_policy
            # a face the policy will decide on stays out of the search until it does
            face.review_state = ReviewState.enrolled if added else ReviewState.rejected
        item.status = ReviewStatus.resolved
        item.resolution = action
        item.resolved_by = str(actor)
        item.resolved_at = datetime.now(UTC)
        session.flush()
        after: dict[str, Any] = {
            "resolution": action,
            "child_id": face.child_id,
            "template_added": added,
            "face_state": face.review_state.value,
        }
        if action == "new_child" and target is not None:
            after["new_child"] = snapshot(target)
        if by_policy:
            after["template_by_policy"] = True  # its `face.auto_template` event follows, or none
        uow.audit(
            "review.resolved",
            target_type="review",
            target_id=item.id,
            child_id=target.id if target is not None else None,
            before=before,
            after=after,
            face_ids=[face.id],
        )
        names = _names(session, {c["child_id"] for c in item.candidates})
        image = session.get(Image, face.image_id)
        source = _queued_by(session, [(item, image)]).get(item.id)
    view = ReviewView(item, face, image, names, source)
    if by_policy:
        from childface.services.templates import promote_reviewed

        assert target is not None
        outcome = promote_reviewed(
            runtime=runtime, actor=actor, face_id=face.id, child_id=target.id, review_id=review_id
        )
        added, refused = outcome.added, [] if outcome.added else [outcome.reason]
        view = get_review(runtime=runtime, review_id=review_id)  # the face as the policy left it
    return Resolution(view=view, child=target, template_added=added, template_refused_reasons=refused)


def _target_child(
    session: Any, action: str, item: ReviewItem, child_id: int | None, new_child: dict[str, Any] | None
) -> Child | None:
    if action == "dismiss":
        return None
    if action == "new_child":
        assert new_child is not None
        external_id = clean_text("external_id", new_child.get("external_id"), required=True)
        if session.scalar(select(Child.id).where(Child.external_id == external_id)):
            raise Conflict(f"a child with external_id {external_id!r} already exists")
        child = Child(
            external_id=external_id,
            display_name=clean_text("display_name", new_child.get("name"), required=True),
            group_name=clean_text("group_name", new_child.get("group"), required=False),
            notes=new_child.get("notes"),
            status=ChildStatus.active,
        )
        session.add(child)
        session.flush()
        return child
    if action == "confirm":
        if not item.candidates:
            raise InvalidInput("this item has no candidate to confirm; use assign or new_child")
        child_id = int(item.candidates[0]["child_id"])
    child = get_child_row(session, int(child_id))  # type: ignore[arg-type]
    if child.status != ChildStatus.active:
        raise Conflict(f"child {child.id} is archived; unarchive it first")
    return child
