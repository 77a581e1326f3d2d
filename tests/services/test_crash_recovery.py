"""DESIGN.md invariant 3 for files: a crash at any point strands no photo, temporary file or import folder.

Real processes die by SIGKILL (tests/services/crash_helper.py) at the moments
that used to strand files; then a restart (`Runtime.start`) or `recover` must
leave exactly the files that rows refer to, and never touch a live writer's.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from childface.config import Settings
from childface.db import Database
from childface.db.models import Child, Face, FileDeletion, Image, ImageSource
from childface.services import file_journal
from childface.services.media import MediaStore
from childface.services.owners import scratch_tag
from childface.services.recovery import Housekeeper, new_import_folder, recover
from childface.services.runtime import Runtime

from .faces import TEST_ACTOR, add_child

HELPER = Path(__file__).with_name("crash_helper.py")


def store_image(db: Database, media: MediaStore, *, child_id: int | None = None) -> tuple[str, str]:
    """A photo the way the services store one: announced file, then its row (and a face), committed."""
    data = b"\xff\xd8\xff" + secrets.token_bytes(64)
    sha, relative = media.locate(data)
    with media.hold(sha), file_journal.pending_writes(db, media, [(sha, relative)]):
        media.put(data)
        with db.unit_of_work(TEST_ACTOR) as uow:
            image = Image(sha256=sha, path=relative, width=10, height=10, source=ImageSource.api,
                          uploaded_by="test")
            uow.session.add(image)
            uow.session.flush()
            uow.session.add(Face(image_id=image.id, child_id=child_id, box_x1=0.0, box_y1=0.0, box_x2=5.0,
                                 box_y2=5.0, landmarks=[[0.0, 0.0]] * 5, detector_score=0.99,
                                 quality_score=0.9))
            uow.audit("face.add", target_type="image", target_id=image.id)
    return sha, relative


def media_files(media: MediaStore) -> list[str]:
    return sorted(p.relative_to(media.root).as_posix() for p in media.root.rglob("*") if p.is_file())


def run_helper(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def died_by_sigkill(process: subprocess.Popen) -> None:
    code = process.wait(timeout=60)
    assert code == -signal.SIGKILL, process.stderr.read()[-3000:]
    process.stdout.close()
    process.stderr.close()


def test_every_way_of_deleting_image_rows_journals_the_file(database: Database, settings: Settings) -> None:
    media = MediaStore(settings.media_dir)
    by_orm, _ = store_image(database, media)
    by_bulk, _ = store_image(database, media)
    kept, kept_path = store_image(database, media)
    with database.transaction() as session:
        session.delete(session.scalar(select(Image).where(Image.sha256 == by_orm)))
    with database.transaction() as session:
        session.execute(delete(Image).where(Image.sha256 == by_bulk))
    with database.session() as session:
        journaled = set(session.scalars(select(FileDeletion.sha256)))
    assert journaled == {by_orm, by_bulk}
    assert file_journal.sweep(db=database, media=media) == 2
    assert media_files(media) == [kept_path] and kept


def test_writer_killed_before_its_commit_strands_no_file(database: Database, settings: Settings) -> None:
    media = MediaStore(settings.media_dir)
    kept = store_image(database, media)[1]
    died_by_sigkill(run_helper("write", database.url, str(media.root), secrets.token_hex(40)))
    assert len(media_files(media)) == 2, "the killed writer wrote its file before dying"

    report = recover(settings=settings, db=database, media=media)
    assert report.files_swept == 1 and report.journal_entries == 1
    assert media_files(media) == [kept]
    assert file_journal.pending_count(database) == 0


def test_a_live_writers_file_is_never_swept(database: Database, settings: Settings) -> None:
    media = MediaStore(settings.media_dir)
    writer = run_helper("write", database.url, str(media.root), secrets.token_hex(40), "--wait")
    try:
        assert writer.stdout.readline().strip() == "written", writer.stderr.read()[-3000:]
        assert recover(settings=settings, db=database, media=media).files_swept == 0
        assert len(media_files(media)) == 1, "a live writer's file was deleted"
        # ... unless it was announced longer ago than the grace period (a writer that hangs)
        with database.transaction() as session:
            session.execute(update(FileDeletion).values(requested_at=datetime.now(UTC) - timedelta(hours=2)))
        assert recover(settings=settings, db=database, media=media).files_swept == 1
    finally:
        writer.kill()
        died_by_sigkill(writer)
    assert media_files(media) == []


def test_erasure_killed_mid_sweep_leaves_no_photo_after_restart(
    database: Database, settings: Settings, pipeline, caplog: pytest.LogCaptureFixture  # noqa: ANN001
) -> None:
    media = MediaStore(settings.media_dir)
    child_id = add_child(database, "erased")
    for _ in range(5):
        store_image(database, media, child_id=child_id)
    kept = store_image(database, media)[1]
    died_by_sigkill(run_helper("erase", database.url, str(media.root), str(child_id)))
    with database.session() as session:
        assert session.get(Child, child_id) is None, "the erasure did not commit"
    assert len(media_files(media)) == 5, "the process died after deleting one photo of five"

    caplog.set_level(logging.INFO, logger="childface.services.runtime")
    runtime = Runtime(settings, db=database, pipeline=pipeline)
    try:
        runtime.start(autosave=False)
    finally:
        runtime.close()
    assert media_files(media) == [kept]
    assert runtime.recovery is not None and runtime.recovery.files_swept == 4
    assert "recovered after an unclean stop: 5 journaled file(s) settled (4 deleted)" in caplog.text


def test_recovery_removes_only_dead_or_stale_temp_files_and_import_folders(
    database: Database, settings: Settings
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead_tag = scratch_tag().replace(f"-{os.getpid()}-", f"-{gone.pid}-")
    media, index = settings.media_dir, settings.resolved_index_dir
    fan = media / "ab" / "cd"
    fan.mkdir(parents=True)
    index.mkdir(parents=True)
    dead_temp = fan / f".{dead_tag}x1.tmp"
    live_temp = fan / f".{scratch_tag()}x2.tmp"
    stale_snapshot_temp = index / ".model.cfidx.q1w2.tmp"
    fresh_snapshot_temp = index / ".model.cfidx.e3r4.tmp"
    for path in (dead_temp, live_temp, stale_snapshot_temp, fresh_snapshot_temp):
        path.write_bytes(b"partial")
    ten_minutes_ago = time.time() - 600
    os.utime(stale_snapshot_temp, (ten_minutes_ago, ten_minutes_ago))

    live_folder = new_import_folder(settings)
    assert live_folder.parent == media.parent / "tmp" / "imports"
    dead_folder = live_folder.parent / f"{dead_tag}abc"
    old_folder = live_folder.parent / "childface-import-old"
    for folder in (live_folder, dead_folder, old_folder):
        folder.mkdir(exist_ok=True)
        (folder / "photos.zip").write_bytes(b"PK")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old_folder, (two_days_ago, two_days_ago))

    looked = recover(settings=settings, db=database, media=MediaStore(media), apply=False)
    assert sorted(looked.temp_files) == sorted(map(str, (dead_temp, stale_snapshot_temp)))
    assert sorted(looked.import_folders) == sorted(map(str, (dead_folder, old_folder)))
    assert dead_temp.exists() and dead_folder.exists(), "apply=False only looks"

    report = recover(settings=settings, db=database, media=MediaStore(media))
    assert len(report.temp_files) == 2 and len(report.import_folders) == 2
    assert not dead_temp.exists() and not stale_snapshot_temp.exists()
    assert live_temp.exists() and fresh_snapshot_temp.exists()
    assert not dead_folder.exists() and not old_folder.exists() and live_folder.exists()


def test_a_running_server_sweeps_periodically(database: Database, settings: Settings) -> None:
    media = MediaStore(settings.media_dir)
    housekeeper = Housekeeper(
        settings=settings.model_copy(update={"housekeeping_interval_s": 0.2}), db=database, media=media
    )
    housekeeper.start()
    try:
        died_by_sigkill(run_helper("write", database.url, str(media.root), secrets.token_hex(40)))
        deadline = time.monotonic() + 30
        while media_files(media) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        housekeeper.stop()
    assert media_files(media) == [] and file_journal.pending_count(database) == 0
