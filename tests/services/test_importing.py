"""The CSV import service: parsing and the box rule, dry run, import, duplicates, resume, zip input.

Real parts throughout: the example set is made from insightface's and
scikit-image's photos by `build_example_dataset`, faces go through the real
pipeline (CPU), rows land in SQLite and PostgreSQL (`database` runs each test
on both), and the gallery index is caught up from the audit feed.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from childface.config import Settings
from childface.db import Actor, Database
from childface.db.models import AuditEvent, Child, ChildStatus, Face, ImportRun, ImportStatus
from childface.services import importing
from childface.services.enrollment import iou
from childface.services.runtime import Runtime
from childface.services.sample_data import ExampleDataset, build_example_dataset
from childface.vision.pipeline import FacePipeline

ACTOR = Actor("user", "importer")


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    return FacePipeline.from_settings(Settings(_env_file=None, device="cpu"))


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory, pipeline: FacePipeline) -> ExampleDataset:
    return build_example_dataset(tmp_path_factory.mktemp("example"), pipeline.detector)


@pytest.fixture
def runtime(settings: Settings, database: Database, pipeline: FacePipeline) -> Iterator[Runtime]:
    runtime = Runtime(settings, db=database, pipeline=pipeline)
    runtime.start()
    yield runtime
    runtime.close()


def run(runtime: Runtime, table: importing.ImportTable, source: importing.PhotoSource, **options: object):
    return importing.run_import(
        db=runtime.db,
        media=runtime.media,
        pipeline=runtime.pipeline,
        model_db_id=runtime.model_db_id,
        table=table,
        source=source,
        actor=ACTOR,
        source_name="test.csv",
        max_pixels=runtime.settings.max_image_pixels,
        after_commit=runtime.catch_up,
        **options,
    )


def folder(example: ExampleDataset) -> importing.FolderSource:
    return importing.FolderSource(example.images_dir, max_bytes=20 * 1024 * 1024)


# ---- parsing: no database -------------------------------------------------------------------------


def test_columns_are_matched_by_alias_and_box_columns_decide_the_format() -> None:
    corners = importing.read_table("Child;File;Left;Top;Right;Bottom;Arousal\nA1;a.jpg;10;20;110;160;0.5\n")
    assert corners.columns.box_format == "xyxy"
    assert corners.rows[0].box == (10, 20, 110, 160) and corners.rows[0].arousal == 0.5

    sized = importing.read_table("\ufeffID,Image_Path,x,y,w,h,Mask\nA1,a.jpg,10,20,100,140,1\n")
    assert sized.columns.box_format == "xywh"
    assert sized.rows[0].box == (10, 20, 110, 160) and sized.rows[0].mask is True

    bare = importing.read_table('child_id,image,box\nA1,a.jpg,"[10, 20, 110, 160]"\nA2,b.jpg,5 5 50 60\n')
    assert bare.columns.box_format == "xyxy" and "detected as x1,y1,x2,y2" in bare.columns.box_rule
    # one row whose numbers cannot be corners makes the whole file x, y, w, h
    bare_sized = importing.read_table(
        'child_id,image,bbox\nA1,a.jpg,"10,20,100,140"\nA2,b.jpg,"50,60,40,30"\n'
    )
    assert bare_sized.columns.box_format == "xywh"
    assert [r.box for r in bare_sized.rows] == [(10, 20, 110, 160), (50, 60, 90, 90)]

    none = importing.read_table("external_id,filename\nA1,a.jpg\n")
    assert none.columns.box_format is None and none.rows[0].box is None and none.rows[0].error is None


def test_bad_rows_keep_their_reason_and_bad_files_are_refused_whole() -> None:
    table = importing.read_table(
        "child_id,image,x,y,w,h,mask,arousal,valence\n"
        ",a.jpg,,,,,0,0.1,0.2\n"
        "A2,b.jpg,1,2,,,0,0.1,0.2\n"
        "A3,c.jpg,,,,,maybe,1.5,0.2\n"
        "A4,d.jpg,1,2,0,5,,,\n"
        "A5,e.jpg,,,,,,,\n"
    )
    errors = {row.line: row.error for row in table.rows}
    assert "child id must not be empty" in errors[2]
    assert "incomplete" in errors[3]
    assert "mask 'maybe'" in errors[4] and "arousal 1.5 is outside 0..1" in errors[4]
    assert "no area" in errors[5]
    assert errors[6] is None

    with pytest.raises(importing.ImportFormatError, match="no image"):
        importing.read_table("child_id,name\nA1,Ada\n")
    with pytest.raises(importing.ImportFormatError, match="empty"):
        importing.read_table(b"")
    with pytest.raises(importing.ImportFormatError, match="UTF-8"):
        importing.read_table(b"child_id,image\n\xff\xfe\x00bad\n")


def test_photo_paths_cannot_leave_the_images_folder(tmp_path: Path) -> None:
    source = importing.FolderSource(tmp_path, max_bytes=1024)
    for name in ("../secret.jpg", "/etc/passwd", "a/../../b.jpg"):
        with pytest.raises(ValueError, match="inside the images folder"):
            source.read(name)


# ---- dry run and import: SQLite and PostgreSQL ---------------------------------------------------


def test_dry_run_reports_everything_and_changes_nothing(database: Database, example: ExampleDataset) -> None:
    table = importing.read_table(example.csv_path.read_bytes())
    plan = importing.plan_import(db=database, table=table, source=folder(example), max_pixels=40_000_000)
    counts = plan.counts()
    assert counts == {
        "rows": 34,
        "to_import": 31,
        "already_imported": 0,
        "duplicate": 1,
        "refused": 2,
        "new_children": 8,
        "new_photos": 26,
    }
    assert plan.new_children == [f"C00{i}" for i in range(1, 9)]
    reasons = {p.row.line: (p.action, p.reason) for p in plan.rows if p.action != "import"}
    assert reasons[33] == ("duplicate", "same photo and face as line 3")
    assert reasons[34] == ("refused", "arousal 1.4 is outside 0..1")
    assert reasons[35] == ("refused", "c004/missing.jpg is not in the images folder")
    with database.session() as session:
        assert session.scalar(select(func.count(Child.id))) == 0
        assert session.scalar(select(func.count(AuditEvent.seq))) == 0


def test_import_example_set_then_resume_from_a_zip(runtime: Runtime, example: ExampleDataset) -> None:
    table = importing.read_table(example.csv_path.read_bytes())
    batches = 0

    def stop_after_first_batch(progress: importing.ImportProgress) -> None:
        nonlocal batches
        if progress.counts["imported"]:
            batches += 1
            raise KeyboardInterrupt  # the operator pressed Ctrl-C after the first commit

    with pytest.raises(KeyboardInterrupt):
        run(runtime, table, folder(example), batch_size=4, progress=stop_after_first_batch)
    db = runtime.db
    with db.session() as session:
        first = session.scalars(select(ImportRun)).one()
        assert first.status == ImportStatus.failed
        partial = session.scalar(select(func.count(Face.id)))
    assert batches == 1 and 0 < partial < 30

    report = runtime.settings.media_dir.parent / "report.csv"
    source = importing.open_source(zip_file=example.zip_path, max_bytes=20 * 1024 * 1024)
    try:
        result = run(runtime, table, source, batch_size=4, report_path=report)
    finally:
        source.close()

    # every row has its outcome; the rows of the interrupted run count as imported, not twice
    by_line = {o.line: o for o in result.outcomes}
    assert len(by_line) == 34
    assert Counter(o.status for o in result.outcomes) == {"imported": 30, "duplicate": 1, "refused": 3}
    resumed = [o for o in result.outcomes if o.reason.startswith("already imported")]
    assert len(resumed) == partial
    assert by_line[32].reason == "no face found in the photo"
    assert by_line[33].status == "duplicate"
    with db.session() as session:
        faces = {f.id: f for f in session.scalars(select(Face))}
        children = {c.id: c for c in session.scalars(select(Child))}
        runs = list(session.scalars(select(ImportRun).order_by(ImportRun.id)))
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert len(faces) == 30 and len(children) == 8
    assert {c.external_id: c.display_name for c in children.values()}["C003"] == "Cleo"
    assert all(c.status == ChildStatus.active for c in children.values())
    assert runs[-1].status == ImportStatus.finished and runs[-1].counts["imported"] == 30

    # the box picked each child's own face out of the six-face group photo
    csv_rows = list(csv.DictReader(io.StringIO(example.csv_path.read_text())))
    group_faces = []
    for line, row in enumerate(csv_rows, start=2):
        if row["image"] != "group/t1.jpg":
            continue
        x, y, w, h = (float(row[k]) for k in "xywh")
        face = faces[by_line[line].face_id]
        assert children[face.child_id].external_id == row["child_id"]
        assert iou(face.box, [x, y, x + w, y + h]) > 0.5
        group_faces.append(face)
    assert len(group_faces) == 6 and len({f.image_id for f in group_faces}) == 1
    assert {f.mask for f in faces.values()} == {False} and all(0 <= f.arousal <= 1 for f in faces.values())

    # audit: started/finished per run, one child.created per child, batches list exactly the new faces
    actions = Counter(e.action for e in events)
    assert actions["child.created"] == 8
    assert (actions["import.started"], actions["import.failed"], actions["import.finished"]) == (2, 1, 1)
    batch_faces = [f for e in events if e.action == "import.batch" for f in e.face_ids]
    assert sorted(batch_faces) == sorted(faces)
    assert all(e.actor == "user:importer" for e in events)
    # the index caught up from those events: every imported face is searchable
    assert runtime.gallery.count == 30

    written = list(csv.DictReader(report.open()))
    assert [int(r["line"]) for r in written] == list(range(2, 36))
    assert {r["status"] for r in written} == {"imported", "duplicate", "refused"}


def test_box_and_face_count_rules_in_a_group_photo(runtime: Runtime, example: ExampleDataset) -> None:
    # the detected faces of t1.jpg, left to right, as the example set wrote them (x, y, w, h)
    group_rows = [
        r for r in csv.DictReader(io.StringIO(example.csv_path.read_text())) if r["image"] == "group/t1.jpg"
    ]
    third = group_rows[2]
    table = importing.read_table(
        "child_id,image,x,y,w,h\n"
        f"G3,group/t1.jpg,{third['x']},{third['y']},{third['w']},{third['h']}\n"
        "G9,group/t1.jpg,600,700,60,60\n"  # the carpet: no face there
        "G8,group/t1.jpg,,,,\n"  # six faces and no box
    )
    result = run(runtime, table, folder(example))
    outcome = {o.child_id: o for o in result.outcomes}
    assert outcome["G3"].status == "imported"
    assert outcome["G9"].status == "refused" and "box matches no detected face" in outcome["G9"].reason
    assert outcome["G8"].status == "refused" and "several faces" in outcome["G8"].reason
    with runtime.db.session() as session:
        assert list(session.scalars(select(Child.external_id))) == ["G3"]  # no child without a face
        face = session.get(Face, outcome["G3"].face_id)
    x, y, w, h = (float(third[k]) for k in "xywh")
    assert iou(face.box, [x, y, x + w, y + h]) > 0.5

    # the same face for another child is a duplicate; the database knows it now
    again = importing.read_table(
        f"child_id,image,x,y,w,h\nG4,group/t1.jpg,{third['x']},{third['y']},{third['w']},{third['h']}\n"
    )
    plan = importing.plan_import(db=runtime.db, table=again, source=folder(example), max_pixels=40_000_000)
    assert plan.rows[0].action == "duplicate" and "already enrolled for child G3" in plan.rows[0].reason
