"""Children: create, list, read, edit, archive, merge, erase, enroll photos, list faces."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile

from childface.api.convert import child_public, face_public, photo_public
from childface.api.deps import Enroller, Eraser, Offset, PathId, Reader, RuntimeDep, Writer
from childface.api.schemas import (
    ChildCreate,
    ChildPage,
    ChildPublic,
    ChildUpdate,
    EnrollResponse,
    EraseRequest,
    ErasureResult,
    FacePublic,
    MergeRequest,
    MergeResult,
    NeedsNewPhotos,
    PhotoAgePublic,
)
from childface.db.models import ChildStatus, ImageSource, ReviewState
from childface.services import children as children_service
from childface.services import enrollment, erasure, faces, merging, templates
from childface.services.errors import InvalidInput

router = APIRouter(prefix="/children", tags=["children"])

PAGE_LIMIT = Query(50, ge=1, le=children_service.MAX_PAGE)


def _public(runtime: RuntimeDep, child_id: int) -> ChildPublic:
    summary = children_service.get_child(db=runtime.db, child_id=child_id)
    return child_public(summary.child, summary.n_faces, summary.thumbnail_face_id)


@router.post("", response_model=ChildPublic, status_code=201)
def create_child(body: ChildCreate, principal: Enroller, runtime: RuntimeDep) -> ChildPublic:
    """Register a child. `external_id` is your system's key for the child and must be unique."""
    child = children_service.create_child(
        db=runtime.db,
        actor=principal.actor,
        external_id=body.external_id,
        name=body.name,
        group=body.group,
        notes=body.notes,
        consent_recorded_by=body.consent_recorded_by,
        consent_recorded_at=body.consent_recorded_at,
    )
    return child_public(child, 0)


@router.get("", response_model=ChildPage)
def list_children(
    _: Reader,
    runtime: RuntimeDep,
    q: Annotated[str | None, Query(max_length=200, description="Part of the name or external id")] = None,
    external_id: Annotated[
        str | None, Query(min_length=1, max_length=128, description="Exactly this external id")
    ] = None,
    group: Annotated[str | None, Query(max_length=100)] = None,
    status: ChildStatus | None = None,
    sort: Annotated[
        Literal["name", "external_id", "created", "faces"],
        Query(description="name, external_id, created (date added) or faces (enrolled faces)"),
    ] = "name",
    order: Literal["asc", "desc"] = "asc",
    limit: int = PAGE_LIMIT,
    offset: Offset = 0,
) -> ChildPage:
    """One page of children with each one's enrolled-face count and picture (`thumbnail_face_id`)."""
    page = children_service.list_children(
        db=runtime.db, query=q, external_id=external_id, group=group, status=status, sort=sort,
        descending=order == "desc", limit=limit, offset=offset,
    )
    return ChildPage(
        items=[child_public(s.child, s.n_faces, s.thumbnail_face_id) for s in page.items],
        total=page.total,
        limit=page.limit,
        offset=page.offset,
    )


# before /{child_id}: "needs-new-photos" is not a child id
@router.get("/needs-new-photos", response_model=NeedsNewPhotos)
def needs_new_photos(
    _: Reader,
    runtime: RuntimeDep,
    group: Annotated[str | None, Query(max_length=100, description="Only this group")] = None,
) -> NeedsNewPhotos:
    """Active children whose newest template's photo was taken more than `stale_template_days` ago
    (`stale`), and active children with no template at all (`no_photos`)."""
    needs = templates.children_needing_photos(db=runtime.db, settings=runtime.settings, group=group)

    def public(age: templates.PhotoAge) -> PhotoAgePublic:
        return PhotoAgePublic(
            child_id=age.child_id, external_id=age.external_id, name=age.name, group=age.group,
            newest_taken_at=age.newest_taken_at, newest_taken_at_source=age.newest_taken_at_source,
            age_days=age.age_days, n_templates=age.templates,
        )

    return NeedsNewPhotos(
        stale_template_days=needs.stale_days,
        as_of=needs.as_of,
        stale=[public(a) for a in needs.stale],
        no_photos=[public(a) for a in needs.no_photos],
    )


@router.get("/{child_id}", response_model=ChildPublic)
def get_child(child_id: PathId, _: Reader, runtime: RuntimeDep) -> ChildPublic:
    return _public(runtime, child_id)


@router.patch("/{child_id}", response_model=ChildPublic)
def update_child(child_id: PathId, body: ChildUpdate, principal: Writer, runtime: RuntimeDep) -> ChildPublic:
    """Change the given fields; omitted fields stay as they are."""
    changes = body.model_dump(exclude_unset=True)
    for required in ("external_id", "name"):
        if required in changes and changes[required] is None:
            raise InvalidInput(f"{required} cannot be removed")
    if not changes:
        raise InvalidInput("nothing to change")
    children_service.update_child(db=runtime.db, actor=principal.actor, child_id=child_id, changes=changes)
    return _public(runtime, child_id)


@router.post("/{child_id}/archive", response_model=ChildPublic)
def archive_child(child_id: PathId, principal: Writer, runtime: RuntimeDep) -> ChildPublic:
    """Stop recognising the child (its faces leave the search); reversible."""
    children_service.set_child_status(
        db=runtime.db, actor=principal.actor, child_id=child_id, status=ChildStatus.archived
    )
    runtime.catch_up()
    return _public(runtime, child_id)


@router.post("/{child_id}/unarchive", response_model=ChildPublic)
def unarchive_child(child_id: PathId, principal: Writer, runtime: RuntimeDep) -> ChildPublic:
    children_service.set_child_status(
        db=runtime.db, actor=principal.actor, child_id=child_id, status=ChildStatus.active
    )
    runtime.catch_up()
    return _public(runtime, child_id)


@router.post("/{child_id}/erase", response_model=ErasureResult)
def erase_child(
    child_id: PathId, body: EraseRequest, principal: Eraser, runtime: RuntimeDep
) -> ErasureResult:
    """Irreversibly erase the child and every child merged into it (admin only).

    Their photos, faces, embeddings, index entries and review items go, and so do
    faces waiting for review that propose them; earlier audit events keep no name
    or external id of theirs. The body must be `{"confirm": "ERASE"}`. The audit
    trail keeps a tombstone (child ids, counts, who, when).
    """
    report = erasure.erase_child(
        db=runtime.db, media=runtime.media, actor=principal.actor, child_id=child_id, confirm=body.confirm
    )
    runtime.catch_up()
    return ErasureResult(**report.__dict__)


@router.post("/{child_id}/merge", response_model=MergeResult)
def merge_into(child_id: PathId, body: MergeRequest, principal: Writer, runtime: RuntimeDep) -> MergeResult:
    """Merge child `source_id` into this child: its faces move here, it is archived with a pointer."""
    result = merging.merge_children(
        db=runtime.db, actor=principal.actor, source_id=body.source_id, target_id=child_id
    )
    runtime.catch_up()
    return MergeResult(
        child=_public(runtime, child_id),
        merged_child=_public(runtime, body.source_id),
        moved_face_ids=result.moved_face_ids,
    )


@router.post("/{child_id}/images", response_model=EnrollResponse)
def enroll_images(
    child_id: PathId,
    principal: Enroller,
    runtime: RuntimeDep,
    files: Annotated[list[UploadFile], File(description="One or more photos of the child.")],
    hint_box: Annotated[
        list[str] | None,
        Form(
            description="x1,y1,x2,y2 of the child's face in a photo with several faces; one for all "
            "photos, or one per photo in order."
        ),
    ] = None,
    mask: Annotated[bool | None, Form()] = None,
    arousal: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
    valence: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
    confirm: Annotated[
        bool,
        Form(description="Enroll faces that do not look like the child's other photos too "
             "(after a person checked them: see status needs_confirmation)."),
    ] = False,
) -> EnrollResponse:
    """Detect, quality-gate, embed and store the child's face in each photo.

    Every photo gets its own result: `enrolled` (with the new face id),
    `duplicate` (this photo's face is already stored), `refused` with reason
    codes (`no_face`, `several_faces_no_hint`, `too_small`, `blurred`, ...), or
    `needs_confirmation` (reason `inconsistent_with_child`: the face looks less
    like the child's templates than like another child's, or far from all of
    them; scores in `consistency`; nothing stored): send that photo again with
    `confirm=true` to enroll it. A child without templates is never checked.
    Photos whose pixels together (from their headers) exceed `max_request_pixels`
    are refused as a whole, before any decoding: 413 `too_many_pixels`.
    """
    hints = [enrollment.parse_box(h) for h in (hint_box or []) if h.strip()]
    if hints and len(hints) not in (1, len(files)):
        raise InvalidInput(f"send one hint box for all photos or one per photo ({len(files)})")
    photos = [
        enrollment.Photo(
            data=upload.file.read(),
            filename=upload.filename,
            hint_box=(hints[0] if len(hints) == 1 else hints[i]) if hints else None,
        )
        for i, upload in enumerate(files)
    ]
    outcomes = enrollment.enroll_photos(
        runtime=runtime,
        actor=principal.actor,
        child_id=child_id,
        photos=photos,
        source=ImageSource.admin_upload if principal.kind == "user" else ImageSource.api,
        mask=mask,
        arousal=arousal,
        valence=valence,
        confirm=confirm,
    )
    return EnrollResponse(
        child_id=child_id,
        enrolled=sum(o.status == "enrolled" for o in outcomes),
        photos=[photo_public(o) for o in outcomes],
    )


@router.get("/{child_id}/faces", response_model=list[FacePublic])
def list_faces(
    child_id: PathId, _: Reader, runtime: RuntimeDep, state: ReviewState | None = None
) -> list[FacePublic]:
    """The child's faces (templates), each with a link to its thumbnail."""
    return [face_public(f) for f in faces.list_faces(db=runtime.db, child_id=child_id, state=state)]
