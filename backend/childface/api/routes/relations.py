"""Siblings and twins: mark, list and unmark relations between children (`services.relations`)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from childface.api.deps import PathId, Reader, RuntimeDep, Writer
from childface.api.schemas_relations import RelationCreate, RelationPublic
from childface.services import relations

router = APIRouter(prefix="/children", tags=["children"])


def _public(relative: relations.Relative) -> RelationPublic:
    child = relative.child
    return RelationPublic(
        child_id=child.id,
        external_id=child.external_id,
        name=child.display_name,
        status=child.status.value,
        kind=relative.kind.value,
        created_by=relative.created_by,
        created_at=relative.created_at,
    )


def _relative(runtime: RuntimeDep, child_id: int, other_id: int) -> RelationPublic:
    found = relations.list_relatives(db=runtime.db, child_id=child_id)
    return _public(next(r for r in found if r.child.id == other_id))


@router.get("/{child_id}/relations", response_model=list[RelationPublic])
def list_relations(child_id: PathId, _: Reader, runtime: RuntimeDep) -> list[RelationPublic]:
    """The child's marked siblings and twins (twins first, then by name)."""
    return [_public(r) for r in relations.list_relatives(db=runtime.db, child_id=child_id)]


@router.post(
    "/{child_id}/relations",
    response_model=RelationPublic,
    status_code=201,
    responses={200: {"model": RelationPublic, "description": "The pair was marked before: its kind changed"}},
)
def add_relation(
    child_id: PathId, body: RelationCreate, principal: Writer, runtime: RuntimeDep, response: Response
) -> RelationPublic:
    """Mark the child and `child_id` as siblings or twins (audited: `child.relation_added`).

    A pair marked before with the other kind changes kind (200, `child.relation_changed`).
    Recognition then asks a match to lead a sibling by `sibling_margin` and a twin by
    `twin_margin` (else `review`, reason `sibling` / `twin`); the duplicates report
    leaves the pair out. 404 for an unknown child, 400 for the child itself, 409
    `relation_exists` when the pair already has this kind, 409 `child_merged` for a
    child that was merged into another.
    """
    change = relations.set_relation(
        db=runtime.db, actor=principal.actor, child_id=child_id, other_id=body.child_id, kind=body.kind
    )
    if not change.created:
        response.status_code = 200
    return _relative(runtime, child_id, body.child_id)


@router.delete("/{child_id}/relations/{other_id}", status_code=204)
def remove_relation(child_id: PathId, other_id: PathId, principal: Writer, runtime: RuntimeDep) -> Response:
    """Unmark the pair (audited: `child.relation_removed`); 404 when it is not marked."""
    relations.remove_relation(db=runtime.db, actor=principal.actor, child_id=child_id, other_id=other_id)
    return Response(status_code=204)
