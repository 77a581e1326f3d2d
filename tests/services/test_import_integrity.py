"""Imports cannot corrupt identities: hostile CSV text, hostile zips and folders, parallel writers.

Real parts: the example set's photos through the real pipeline, SQLite and
PostgreSQL (`database` runs each test on both), zips built with `zipfile` and
then damaged byte by byte the way a broken or malicious archive is.
"""

from __future__ import annotations

import io
import os
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from childface.config import Settings
from childface.db import Actor, Database
from childface.db.models import AuditEvent, Face, ImageSource, ImportRun, ImportStatus
from childface.services import importing
from childface.services.enrollment import FaceAlreadyStored, persist_face
from childface.services.errors import Conflict
from childface.services.media import sha256_hex
from childface.services.runtime import Runtime
from childface.services.sample_data import ExampleDataset, build_example_dataset

from .zips import ZIP_ROWS, damaged_zip

ACTOR = Actor("user", "importer")
MAX_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory, pipeline) -> ExampleDataset:  # noqa: ANN001
    return build_example_dataset(tmp_path_factory.mktemp("example"), pipeline.detector)


@pytest.fixture
def runtime(settings: Settings, database: Database, pipeline) -> Iterator[Runtime]:  # noqa: ANN001
    runtime = Runtime(settings, db=database, pipeline=pipeline)
    runtime.start(autosave=False)
    yield runtime
    runtime.close()


def run(
    runtime: Runtime, table: importing.ImportTable, source: importing.PhotoSource
) -> importing.ImportResult:
    return importing.run_import(
        db=runtime.db, media=runtime.media, pipeline=runtime.pipeline, model_db_id=runtime.model_db_id,
        table=table, source=source, actor=ACTOR, source_name="test.csv",
        max_pixels=runtime.settings.max_image_pixels, after_commit=runtime.catch_up,
    )


def plan(db: Database, table: importing.ImportTable, source: importing.PhotoSource) -> importing.ImportPlan:
    return importing.plan_import(db=db, table=table, source=source, max_pixels=40_000_000)


def size_of(path: Path) -> tuple[int, int]:
    with PILImage.open(path) as img:
        return img.size


# ---- text: the API's rules for every CSV field -----------------------------------------------------


def test_csv_text_goes_through_the_api_text_check() -> None:
    table = importing.read_table(
        "child_id,image,name,group\n"
        "C\x0001,a.jpg,Ada,G\n"  # NUL in the id
        "C002,a.jpg,Ben\x00,G\n"  # NUL in the name
        "C003,a.jpg,\u202eAda,G\n"  # right-to-left override: the name would display reversed
        "C004,b\x07.jpg,Dev,G\n"  # a control character in the path
        "\uff23\uff10\uff10\uff15,c.jpg,\u200dZoe,Sun\u200cflower\n"  # full-width id; joiners are kept
    )
    rows = {row.line: row for row in table.rows}
    assert "child id contains U+0000" in rows[2].error and rows[2].external_id == "C\\x0001"
    assert "name contains U+0000" in rows[3].error
    assert "name contains U+202E (right-to-left override)" in rows[4].error
    assert "image contains U+0007" in rows[5].error and rows[5].image == "b\\x07.jpg"
    assert rows[6].error is None and rows[6].external_id == "C005"
    assert rows[6].name == "\u200dZoe" and rows[6].group == "Sun\u200cflower"


def test_nul_rows_are_refused_not_a_database_error(database: Database, example: ExampleDataset) -> None:
    table = importing.read_table("child_id,image,name\nC\x0001,c001/brighter.jpg,Ada\n"
                                 "C002,c002/brighter.jpg,B\x00en\nC003,c003/brighter.jpg,Cleo\n")
    source = importing.FolderSource(example.images_dir, max_bytes=MAX_BYTES)
    result = plan(database, table, source)
    assert [(p.action, "U+0000" in p.reason) for p in result.rows] == [
        ("refused", True), ("refused", True), ("import", False)]


# ---- one decision for the dry run and the run -----------------------------------------------------


def test_check_and_run_agree_on_hostile_rows(runtime: Runtime, example: ExampleDataset) -> None:
    width, height = size_of(example.images_dir / "c002" / "brighter.jpg")
    table = importing.read_table(
        "child_id,image,x1,y1,x2,y2\n"
        "C001,c001/brighter.jpg,,,,\n"  # fine: one face, no box
        f"C002,c002/brighter.jpg,{width + 10},{height + 10},{width + 90},{height + 90}\n"  # outside
        f"C003,c002/brighter.jpg,{width - 40},10,{width + 60},110\n"  # half of it outside
        "C004,c002/brighter.jpg,10,10,10,50\n"  # no area
        "C005,c002/missing.jpg,,,,\n"  # no such file
        "C\x0006,c002/brighter.jpg,,,,\n"  # NUL
    )
    source = importing.FolderSource(example.images_dir, max_bytes=MAX_BYTES)
    checked = plan(runtime.db, table, source)
    counts = checked.counts()
    reasons = {p.row.line: p.reason for p in checked.rows}
    assert "lies outside the" in reasons[3] and "lies partly outside" in reasons[4]
    result = run(runtime, table, source)
    assert result.counts["imported"] == counts["to_import"] == 1
    assert result.counts["refused"] == counts["refused"] == 5
    assert {o.line: o.reason for o in result.outcomes if o.status == "refused"} == {
        line: reason for line, reason in reasons.items() if line != 2}


# ---- hostile photo sources ------------------------------------------------------------------------


def test_damaged_zip_members_are_refused_rows(runtime: Runtime, example: ExampleDataset) -> None:
    photo = (example.images_dir / "c001" / "brighter.jpg").read_bytes()
    archive = damaged_zip(photo)
    table = importing.read_table(
        "child_id,image\n" + "".join(f"Z{i},{name}.jpg\n" for i, name in enumerate(ZIP_ROWS)))
    source = importing.ZipSource(io.BytesIO(archive), max_bytes=MAX_BYTES)
    try:
        checked = plan(runtime.db, table, source)
        reasons = {p.row.image: (p.action, p.reason) for p in checked.rows}
        assert reasons["good.jpg"][0] == "import"
        assert reasons["bad-crc.jpg"] == ("refused", "bad-crc.jpg is damaged in the zip (Bad CRC-32 for file "
                                          "'bad-crc.jpg')")
        assert reasons["short-size.jpg"][0] == "refused" and "damaged" in reasons["short-size.jpg"][1]
        assert reasons["long-size.jpg"][0] == "refused" and "damaged" in reasons["long-size.jpg"][1]
        assert reasons["encrypted.jpg"] == ("refused", "encrypted.jpg is encrypted in the zip "
                                            "(password-protected zips are not supported)")
        assert reasons["deflate64.jpg"][0] == "refused" and "zip method 9" in reasons["deflate64.jpg"][1]
        assert reasons["corrupt-deflate.jpg"][0] == "refused"
        assert "damaged" in reasons["corrupt-deflate.jpg"][1]
        result = run(runtime, table, source)
    finally:
        source.close()
    assert Counter(o.status for o in result.outcomes) == {"imported": 1, "refused": 6}


def test_links_out_of_the_images_folder_are_refused(tmp_path: Path, example: ExampleDataset) -> None:
    images = tmp_path / "images"
    (images / "inside").mkdir(parents=True)
    photo = (example.images_dir / "c001" / "brighter.jpg").read_bytes()
    (images / "inside" / "real.jpg").write_bytes(photo)
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "other.jpg").write_bytes(photo)
    os.symlink(images / "inside" / "real.jpg", images / "alias.jpg")  # stays inside: followed
    os.symlink(outside / "other.jpg", images / "escape.jpg")
    os.symlink(outside, images / "escape-dir")
    os.symlink("/etc/passwd", images / "passwd.jpg")
    source = importing.FolderSource(images, max_bytes=MAX_BYTES)
    assert source.read("alias.jpg") == photo
    for name in ("escape.jpg", "escape-dir/other.jpg", "passwd.jpg"):
        with pytest.raises(ValueError, match=f"^{name} is a link that leaves the images folder$"):
            source.read(name)


# ---- one import at a time, across processes -------------------------------------------------------


def test_a_second_running_import_is_refused_by_the_database(database: Database) -> None:
    empty = importing.plan_import(db=database, table=importing.read_table("child_id,image\n"),
                                  source=importing.FolderSource(Path("."), max_bytes=1), max_pixels=1)
    first = importing.start_run(db=database, actor=ACTOR, source_name="a.csv", plan=empty)
    with pytest.raises(Conflict) as refused:
        importing.start_run(db=database, actor=ACTOR, source_name="b.csv", plan=empty)
    assert refused.value.code == "import_running" and f"run {first}" in refused.value.message
    with database.session() as session:
        run = session.get(ImportRun, first)
        assert run.owner == f"{os.uname().nodename}:{os.getpid()}" and run.heartbeat_at is not None
        assert session.scalar(select(func.count(ImportRun.id))) == 1
    # this process is alive and its heartbeat is fresh: nothing is interrupted
    assert importing.fail_interrupted_runs(database, stale_after_s=60) == []


def _stuck_run(database: Database, owner: str, beat_age_s: float) -> int:
    with database.unit_of_work(ACTOR) as uow:
        started = datetime.now(UTC) - timedelta(seconds=beat_age_s + 5)
        run = ImportRun(source_name="x.csv", status=ImportStatus.running, started_by="user:x", owner=owner,
                        started_at=started, heartbeat_at=datetime.now(UTC) - timedelta(seconds=beat_age_s))
        uow.session.add(run)
        uow.session.flush()
        uow.audit("import.started", target_type="import_run", target_id=run.id)
        return run.id


def test_runs_of_dead_or_silent_processes_are_failed(database: Database) -> None:
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = _stuck_run(database, f"{os.uname().nodename}:{gone.stdout.strip()}", beat_age_s=1)
    assert importing.fail_interrupted_runs(database, stale_after_s=600) == [dead]
    silent = _stuck_run(database, "other-host:1234", beat_age_s=3600)
    assert importing.fail_interrupted_runs(database, stale_after_s=600) == [silent]
    live = _stuck_run(database, "other-host:1234", beat_age_s=1)
    assert importing.fail_interrupted_runs(database, stale_after_s=600) == []
    with database.session() as session:
        runs = {r.id: r for r in session.scalars(select(ImportRun))}
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.action == "import.interrupted")))
    assert runs[dead].status == runs[silent].status == ImportStatus.failed
    assert runs[dead].error.startswith("interrupted: the importing process")
    assert runs[silent].error.startswith("interrupted: no sign of life from other-host:1234")
    assert runs[live].status == ImportStatus.running
    assert sorted(int(e.target_id) for e in events) == [dead, silent]
    assert {e.actor for e in events} == {"system:childface"}


def test_a_new_import_after_a_crash_is_not_blocked(database: Database) -> None:
    stuck = _stuck_run(database, "other-host:1", beat_age_s=importing.STALE_AFTER_S + 60)
    empty = importing.plan_import(db=database, table=importing.read_table("child_id,image\n"),
                                  source=importing.FolderSource(Path("."), max_bytes=1), max_pixels=1)
    run_id = importing.start_run(db=database, actor=ACTOR, source_name="again.csv", plan=empty)
    with database.session() as session:
        assert session.get(ImportRun, stuck).status == ImportStatus.failed
        assert session.get(ImportRun, run_id).status == ImportStatus.running


# ---- one face per (photo, box), across writers ----------------------------------------------------


def test_two_writers_store_one_face_per_photo_and_box(runtime: Runtime, example: ExampleDataset) -> None:
    """Writer A adds a photo's face and holds its transaction open; writer B, adding the same face,
    waits for A (PostgreSQL: the photo's row lock or its unique sha256; SQLite: the write lock),
    then finds A's face and stores nothing."""
    from childface.vision.decode import decode_image

    data = (example.images_dir / "c004" / "brighter.jpg").read_bytes()
    rgb = decode_image(data, max_pixels=40_000_000)
    (detected,) = runtime.pipeline.process([rgb])[0]
    sha, path = runtime.media.put(data)
    a_flushed, a_may_commit = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def write(name: str, hold: bool) -> None:
        try:
            with runtime.db.unit_of_work(ACTOR) as uow:
                face = persist_face(uow.session, sha256=sha, path=path, width=rgb.shape[1],
                                    height=rgb.shape[0], source=ImageSource.api, uploaded_by="test",
                                    face=detected, child_id=None, model_db_id=runtime.model_db_id)
                uow.audit("face.enrolled", target_type="face", target_id=face.id, face_ids=[face.id])
                if hold:
                    a_flushed.set()
                    assert a_may_commit.wait(30)
            outcome[name] = face.id
        except FaceAlreadyStored as dup:
            outcome[name] = dup

    a = threading.Thread(target=write, args=("a", True))
    a.start()
    assert a_flushed.wait(30)
    b = threading.Thread(target=write, args=("b", False))
    b.start()
    b.join(1.0)
    assert b.is_alive(), "writer B must wait for A's transaction"
    a_may_commit.set()
    a.join(30)
    b.join(30)
    assert isinstance(outcome["a"], int)
    assert isinstance(outcome["b"], FaceAlreadyStored) and outcome["b"].face_id == outcome["a"]
    with runtime.db.session() as session:
        assert session.scalar(select(func.count(Face.id))) == 1
    assert sha == sha256_hex(data)
