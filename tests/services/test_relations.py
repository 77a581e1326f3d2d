"""Siblings and twins (services.relations) on SQLite and PostgreSQL: marking, changing and unmarking in
both children's histories, refusals, erasure, each process's copy following the feed, the duplicates
report, and the CSV import's `sibling_of` / `twin_of` columns (real photos through the real pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, real photos
    Photos,
    jpeg,
    photos,
    pipeline,
)
from childface.config import Settings
from childface.db import Actor, Database
from childface.db.models import AuditEvent, Child, ChildRelation, RelationKind
from childface.services import audit_log, importing, relations
from childface.services.children import create_child
from childface.services.duplicates import find_duplicates
from childface.services.erasure import erase_child
from childface.services.errors import Conflict, InvalidInput, NotFound
from childface.services.media import MediaStore
from childface.services.merging import merge_children
from childface.services.runtime import Runtime

from .faces import add_child, add_face

STAFF = Actor("user", "anna")
NOWHERE = "is neither imported by this file nor in the database"


def _child(db: Database, external_id: str, name: str | None = None) -> int:
    return create_child(db=db, actor=STAFF, external_id=external_id, name=name or external_id).id


def _relation_events(db: Database, child_id: int) -> list[dict]:
    page = audit_log.query_events(db=db, child_id=child_id, action="child.relation*", limit=50)
    return [{"action": e.action, "child_id": e.child_id, "before": e.before, "after": e.after}
            for e in page.items]


def _head(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.max(AuditEvent.seq))) or 0


def test_marking_changing_and_unmarking_is_audited_in_both_histories(database: Database) -> None:
    ada, ben = _child(database, "C-ADA", "Ada"), _child(database, "C-BEN", "Ben")
    change = relations.set_relation(db=database, actor=STAFF, child_id=ben, other_id=ada, kind="sibling")
    assert change.created
    assert (change.relation.child_a_id, change.relation.child_b_id) == (ada, ben)  # smaller id first
    (relative,) = relations.list_relatives(db=database, child_id=ada)
    assert (relative.child.id, relative.kind, relative.created_by) == (ben, RelationKind.sibling, "user:anna")
    assert [r.child.id for r in relations.list_relatives(db=database, child_id=ben)] == [ada]
    with pytest.raises(Conflict) as again:
        relations.set_relation(db=database, actor=STAFF, child_id=ada, other_id=ben, kind="sibling")
    assert again.value.code == "relation_exists"

    changed = relations.set_relation(db=database, actor=Actor("user", "bo"), child_id=ada, other_id=ben,
                                     kind=RelationKind.twin)
    assert not changed.created
    (relative,) = relations.list_relatives(db=database, child_id=ben)
    assert (relative.kind, relative.created_by) == (RelationKind.twin, "user:bo")
    removed = relations.remove_relation(db=database, actor=STAFF, child_id=ada, other_id=ben)
    assert removed == RelationKind.twin
    assert relations.list_relatives(db=database, child_id=ada) == []
    with pytest.raises(NotFound):
        relations.remove_relation(db=database, actor=STAFF, child_id=ben, other_id=ada)

    # one event per change, newest first, in both histories, naming the children by id only
    expected = [
        {"action": "child.relation_removed", "child_id": ada, "before": {"kind": "twin"},
         "after": {"child_ids": [ada, ben]}},
        {"action": "child.relation_changed", "child_id": ada, "before": {"kind": "sibling"},
         "after": {"child_ids": [ada, ben], "kind": "twin"}},
        {"action": "child.relation_added", "child_id": ben, "before": None,
         "after": {"child_ids": [ada, ben], "kind": "sibling"}},
    ]
    assert _relation_events(database, ada) == expected
    assert _relation_events(database, ben) == expected


def test_refusals_change_nothing(database: Database) -> None:
    ada, ben, dup = (_child(database, ext) for ext in ("A", "B", "A-TWICE"))
    merge_children(db=database, actor=STAFF, source_id=dup, target_id=ada)
    head = _head(database)
    cases = [
        (InvalidInput, "invalid_input", dict(child_id=ada, other_id=ada, kind="sibling")),
        (NotFound, "not_found", dict(child_id=ada, other_id=10**9, kind="sibling")),
        (InvalidInput, "invalid_input", dict(child_id=ada, other_id=ben, kind="cousin")),
        (Conflict, "child_merged", dict(child_id=ben, other_id=dup, kind="twin")),
    ]
    for error, code, arguments in cases:
        with pytest.raises(error) as refused:
            relations.set_relation(db=database, actor=STAFF, **arguments)
        assert refused.value.code == code, arguments
    with pytest.raises(NotFound):
        relations.list_relatives(db=database, child_id=10**9)
    with database.session() as session:
        assert session.scalar(select(func.count(ChildRelation.id))) == 0
    assert _head(database) == head  # no event either


def test_erasure_takes_the_pairs_and_leaves_no_trace_of_the_child(
    database: Database, settings: Settings
) -> None:
    ada = _child(database, "C-ADA-77", "Adalbert Quill")
    ben = _child(database, "C-BEN-77", "Benedikta Rowe")
    cleo = _child(database, "C-CLEO-77", "Cleopatra Stone")
    relations.set_relation(db=database, actor=STAFF, child_id=ada, other_id=ben, kind="sibling")
    relations.set_relation(db=database, actor=STAFF, child_id=ben, other_id=cleo, kind="twin")
    erase_child(db=database, media=MediaStore(settings.media_dir), actor=STAFF, child_id=ben, confirm="ERASE")
    assert relations.list_relatives(db=database, child_id=ada) == []
    assert relations.list_relatives(db=database, child_id=cleo) == []
    with database.session() as session:
        assert session.scalar(select(func.count(ChildRelation.id))) == 0
        stored = [json.dumps([e.before, e.after]) for e in session.scalars(select(AuditEvent))]
    assert not any(value in text for text in stored for value in ("C-BEN-77", "Benedikta", "Rowe"))
    # the other children keep the events in their histories
    assert [e["action"] for e in _relation_events(database, ada)] == ["child.relation_added"]
    assert [e["after"]["child_ids"] for e in _relation_events(database, cleo)] == [[ben, cleo]]


def test_each_process_follows_the_relations_through_the_feed(database: Database, settings: Settings) -> None:
    ada, ben = _child(database, "A"), _child(database, "B")
    book = relations.RelationBook()
    before = _head(database)
    assert book.follow(database, before) == {}
    relations.set_relation(db=database, actor=STAFF, child_id=ada, other_id=ben, kind="twin")
    assert book.follow(database, before) == {}  # the feed has not been applied that far yet
    now = book.follow(database, _head(database))
    assert now == {ada: {ben: "twin"}, ben: {ada: "twin"}}
    _child(database, "C")  # an unrelated change: the copy is not read again
    assert book.follow(database, _head(database)) is now
    erase_child(db=database, media=MediaStore(settings.media_dir), actor=STAFF, child_id=ben, confirm="ERASE")
    assert book.follow(database, _head(database)) == {}


def test_the_duplicates_report_never_proposes_a_marked_pair(
    database: Database, settings: Settings, model_row: int, pipeline, photos: Photos  # noqa: ANN001, F811
) -> None:
    """One person enrolled as two children looks like a double enrollment, until they are marked."""
    first, second, other = (add_child(database, name) for name in ("first", "second", "other"))
    for child, person, variations in ((first, 2, (0, 1)), (second, 2, (2, 3)), (other, 4, (0, 1))):
        for n in variations:
            (face,) = pipeline.process([photos.person(person, n)])[0]
            add_face(database, child_id=child, model_row=model_row, vector=face.embedding)

    def pairs() -> set[tuple[int, int]]:
        found = find_duplicates(db=database, settings=settings, model_db_id=model_row)
        return {(p.a.child_id, p.b.child_id) for p in found}

    assert (first, second) in pairs()
    relations.set_relation(db=database, actor=STAFF, child_id=second, other_id=first, kind="sibling")
    assert (first, second) not in pairs()


# ---- the CSV import --------------------------------------------------------------------------------


def test_import_marks_siblings_and_twins_and_the_dry_run_says_so(
    database: Database, settings: Settings, pipeline, photos: Photos, tmp_path: Path  # noqa: ANN001, F811
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for person, child in enumerate("ABCDGP"):
        (images / f"{child}.jpg").write_bytes(photos.person(person))
    (images / "K.jpg").write_bytes(jpeg(np.full((200, 200, 3), 128, np.uint8)))  # no face: K is never created
    old = _child(database, "E-OLD")
    p_id, q_id = _child(database, "P"), _child(database, "Q")
    relations.set_relation(db=database, actor=STAFF, child_id=p_id, other_id=q_id, kind="twin")
    table = importing.read_table(
        "child_id,image,sibling_of,twin_of\n"
        "A,A.jpg,B,\n"              # line 2: siblings A-B
        "B,B.jpg,,C\n"              # 3: twins B-C
        "C,C.jpg,E-OLD|A,\n"        # 4: siblings C and a child already enrolled; C-A
        "D,D.jpg,Z,\n"              # 5: nobody is Z
        "E,missing.jpg,A,\n"        # 6: E's only row is refused: E is never created
        "F,F.jpg,F,\n"              # 7: the row names its own child: a bad row
        "G,G.jpg,B,B\n"             # 8: B named as sibling and as twin
        "P,P.jpg,Q,\n"              # 9: P-Q are marked twins already
        "K,K.jpg,A,\n"              # 10: K's photo shows no face
    )
    assert table.columns.sibling_of == "sibling_of" and table.columns.twin_of == "twin_of"
    errors = {r.line: r.error for r in table.rows if r.error}
    assert errors == {7: "sibling_of names the row's own child F"}
    source = importing.FolderSource(images, max_bytes=10_000_000)
    plan = importing.plan_import(db=database, table=table, source=source, max_pixels=40_000_000)
    planned = {(r.child_id, r.other_id): (r.kind, r.lines, r.action, r.reason) for r in plan.relations}
    assert planned == {
        ("A", "B"): ("sibling", [2], "add", ""),
        ("B", "C"): ("twin", [3], "add", ""),
        ("C", "E-OLD"): ("sibling", [4], "add", ""),
        ("C", "A"): ("sibling", [4], "add", ""),
        ("D", "Z"): ("sibling", [5], "refused", f"child Z {NOWHERE}"),
        ("E", "A"): ("sibling", [6], "refused", f"child E {NOWHERE}"),
        ("G", "B"): ("sibling", [8], "refused", "B and G are named both siblings and twins"),
        ("P", "Q"): ("sibling", [9], "exists",
                     "already marked as twins (an import does not change a marked pair)"),
        ("K", "A"): ("sibling", [10], "add", ""),
    }
    assert plan.summary()["relations"][0] == {"child_id": "A", "other_id": "B", "kind": "sibling",
                                              "lines": [2], "action": "add", "reason": ""}
    assert plan.counts()["to_import"] == 7
    with database.session() as session:  # the dry run changed nothing
        assert session.scalar(select(func.count(ChildRelation.id))) == 1

    runtime = Runtime(settings, db=database, pipeline=pipeline)
    runtime.start(autosave=False)
    try:
        result = importing.run_import(
            db=database, media=runtime.media, pipeline=pipeline, model_db_id=runtime.model_db_id,
            table=table, source=source, actor=STAFF, source_name="kin.csv",
            max_pixels=settings.max_image_pixels, after_commit=runtime.catch_up, plan=plan,
        )
    finally:
        runtime.close()
    assert result.counts["imported"] == 6, result.outcomes
    assert (result.counts["relations_added"], result.counts["relations_skipped"]) == (4, 1)  # K: no child
    with database.session() as session:
        ids = dict(session.execute(select(Child.external_id, Child.id)).all())
    kin = {(ext, r.child.external_id, r.kind.value)
           for ext in ("A", "C", "P") for r in relations.list_relatives(db=database, child_id=ids[ext])}
    assert kin == {("A", "B", "sibling"), ("A", "C", "sibling"), ("C", "A", "sibling"), ("C", "B", "twin"),
                   ("C", "E-OLD", "sibling"), ("P", "Q", "twin")}
    assert [e["action"] for e in _relation_events(database, old)] == ["child.relation_added"]
    # importing the same file again marks nothing new
    again = importing.plan_import(db=database, table=table, source=source, max_pixels=40_000_000)
    assert {(r.child_id, r.other_id) for r in again.relations if r.action == "exists"} == {
        ("A", "B"), ("B", "C"), ("C", "E-OLD"), ("C", "A"), ("P", "Q")}
