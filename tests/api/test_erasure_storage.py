"""Erasure reaches storage at commit: every process's index and snapshot, and the database files."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import create_engine, select, text

from childface.config import Settings
from childface.db import Database
from childface.db.models import Embedding, Face, Sighting
from childface.index import FaissIndex
from childface.services.runtime import Runtime
from childface.services.sightings import record_track
from services.tracks import track

from .support import Photos, create_child, enroll

ERASE = {"confirm": "ERASE"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # HNSW from three faces on, so the approximate store is covered as well as the exact one
    return settings.model_copy(update={"index_approximate_above": 2})


def _vectors(runtime: Runtime, child_id: int) -> dict[int, bytes]:
    with runtime.db.session() as session:
        rows = session.execute(
            select(Face.id, Embedding.vector)
            .join(Embedding, Embedding.face_id == Face.id)
            .where(Face.child_id == child_id)
        )
        return {face_id: bytes(vector) for face_id, vector in rows}


def _bytes_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.parametrize("archived", [False, True], ids=["active", "archived"])
def test_every_process_drops_erased_faces_from_memory_and_snapshot_at_once(
    archived: bool,
    client: TestClient,
    auth,
    photos: Photos,
    runtime: Runtime,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    eileen = create_child(client, staff, "E-42", "Eileen Collins")
    tom = create_child(client, staff, "T-1", "Tom")
    enroll(client, staff, eileen, *(photos.person(7, n) for n in range(3)))
    enroll(client, staff, tom, *(photos.person(0, n) for n in range(3)))
    erased = _vectors(runtime, eileen)
    assert len(erased) == 3

    # a snapshot left by an earlier embedding model that no process serves now
    stale = FaissIndex("earlier-model:0", 128)
    stale.add(np.asarray(list(erased)), np.stack([np.frombuffer(v, dtype="<f4") for v in erased.values()]))
    stale.save(runtime.settings.resolved_index_dir / "earlier-model_0.cfidx")
    # this process serves HNSW; a second process on the same database serves the exact store
    runtime.gallery.maintain()
    assert runtime.gallery._children.index.backend == "hnsw"  # noqa: SLF001
    other = Runtime(
        runtime.settings.model_copy(
            update={"index_dir": tmp_path / "other-index", "index_approximate_above": 100}
        ),
        pipeline=runtime.pipeline,
    )
    other.start(autosave=False)
    try:
        other.gallery.save()
        assert other.gallery._children.index.backend == "flat"  # noqa: SLF001
        probes = np.stack([np.frombuffer(v, dtype="<f4") for v in erased.values()])
        assert all(row[0].child_id == eileen for row in other.current_gallery().search(probes, 3))
        for folder in (runtime.settings.resolved_index_dir, tmp_path / "other-index"):
            assert all(v in _bytes_under(folder) for v in erased.values())  # the test can see them
        if archived:  # out of the search, but an HNSW graph keeps the vectors of its dead nodes
            assert client.post(f"/children/{eileen}/archive", headers=staff).status_code == 200
            runtime.gallery.save()
            assert all(v in _bytes_under(runtime.settings.resolved_index_dir) for v in erased.values())

        response = client.post(f"/children/{eileen}/erase", json=ERASE, headers=admin)
        assert response.status_code == 200, response.text

        # this process: gone from the index and from the snapshots, without waiting for an autosave
        stored = _bytes_under(runtime.settings.resolved_index_dir)
        assert not any(v in stored for v in erased.values())
        assert runtime.gallery.check().clean
        # the other process: its next read applies the erasure first, and rewrites its snapshot
        results = other.current_gallery().search(probes, 3)
        assert all(eileen not in [c.child_id for c in row] for row in results)
        assert all(row and row[0].child_id == tom for row in results)
        stored = _bytes_under(tmp_path / "other-index")
        assert not any(v in stored for v in erased.values())
        assert other.gallery.check().clean
    finally:
        other.close()


def test_database_files_keep_no_erased_bytes(
    client: TestClient,
    auth,
    photos: Photos,
    runtime: Runtime,
    db_url: str,  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    name = "Quirinus Erasable-Name"
    child = create_child(client, staff, "QE-913", name)
    enroll(client, staff, child, photos.person(7, 0), photos.person(7, 1))
    erased = _vectors(runtime, child)
    # a removed face, kept for undo: its vector is in `removed_faces`, in base64
    removed = min(erased)
    assert client.delete(f"/faces/{removed}", headers=staff).status_code == 200
    kept_for_undo = base64.b64encode(erased.pop(removed))
    secrets = [*erased.values(), kept_for_undo, name.encode(), b"QE-913"]
    # seen on video: a sighting with its crop, an arrival, and webhook events that name the child
    runtime.settings = runtime.settings.model_copy(
        update={"webhook_urls": ["http://127.0.0.1:9/hook"], "webhook_secret": SecretStr("k")}
    )
    seen = track(runtime, photos.person(7, 2), track_id="t-1")
    assert record_track(runtime, seen) == ["arrival", "sighting"]
    with runtime.db.session() as session:
        crop = runtime.media.absolute(session.scalar(select(Sighting.best_crop_path)))
    assert crop.exists()

    if runtime.db.is_sqlite:
        database = Path(runtime.db.engine.url.database)
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
        before = b"".join(p.read_bytes() for p in files if p.exists())
        assert all(s in before for s in secrets)  # the test can see them
    else:
        vacuums = _vacuum_counts(db_url)

    response = client.post(f"/children/{child}/erase", json=ERASE, headers=admin)
    assert response.status_code == 200, response.text
    assert not crop.exists()

    if runtime.db.is_sqlite:
        # secure_delete zeroed the freed cells, and the write-ahead log was checkpointed and truncated
        after = b"".join(p.read_bytes() for p in files if p.exists())
        assert not [s for s in secrets if s in after]
        assert Path(f"{database}-wal").stat().st_size == 0
    else:
        # PostgreSQL: dead row versions are left to VACUUM, which the erasure ran on the touched tables
        counts = _vacuum_counts(db_url)
        touched = ("children", "faces", "embeddings", "removed_faces", "audit_events", "sightings",
                   "webhook_deliveries")
        assert all(counts[t] > vacuums[t] for t in touched)


def _vacuum_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT relname, vacuum_count FROM pg_stat_user_tables"))
            return {name: int(count) for name, count in rows}
    finally:
        engine.dispose()


def test_a_checkpoint_held_up_by_a_reader_is_retried_then_reported(
    database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not database.is_sqlite:
        pytest.skip("the write-ahead-log checkpoint is SQLite's; PostgreSQL runs VACUUM instead")
    from childface.db import session as db_session

    monkeypatch.setattr(db_session, "_CHECKPOINT_PATIENCE_S", 0.3)
    with database.transaction() as session:
        session.execute(text("CREATE TABLE scratch (x)"))
    with database.engine.connect() as reader:
        reader.execute(text("SELECT count(*) FROM audit_events")).all()  # holds its snapshot open
        with database.transaction() as session:
            session.execute(text("INSERT INTO scratch VALUES (1)"))  # a frame the reader does not see
        assert database.scrub_freed_pages(["scratch"]) is False
        assert database.scrub_pending  # housekeeping and the next start will try again
    assert "could not checkpoint the SQLite log" in caplog.text
    assert database.scrub_freed_pages(["scratch"]) is True  # the reader is gone
    assert not database.scrub_pending
