"""Backup and restore on the real pipeline and both databases.

- A deployment serving recognitions and an enrollment over HTTP (uvicorn in a
  thread) is backed up while the requests run; the backup restores into a new,
  empty deployment whose `/recognize` answers and audit log equal the source's
  at the snapshot. Damaged, truncated and wrong-passphrase restores are refused
  first, leaving the target empty.
- A backup taken after an erasure holds no byte of the erased child.
- Photos deleted while a backup copies them make it start again; a photo that
  is missing for good makes it fail with nothing written.
- Index snapshots that do not fit the database copy are left out; one whose
  content differs from the database is rebuilt on restore.
- An older schema is upgraded on restore; a newer one, or the other database
  kind, is refused.
- The file format alone: truncation at a chunk boundary, reordered chunks,
  trailing bytes, a flipped byte in plain mode.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    THRESHOLDS,
    Photos,
    app,
    auth,
    client,
    create_child,
    enroll,
    photos,
    pipeline,
    runtime,
)
from childface.api.app import create_app
from childface.bench.api import serve_in_thread
from childface.config import Settings
from childface.db import Actor, Database
from childface.db.migrate import head_revision, upgrade
from childface.db.models import AuditEvent, AuditEventChild, Embedding, Face, Image
from childface.index import FaissIndex, snapshot_path
from childface.services.backup import create_backup
from childface.services.backup_archive import (
    ArchiveReader,
    ArchiveWriter,
    BackupDamaged,
    BackupError,
    WrongPassphrase,
    read_header,
)
from childface.services.backup_restore import restore_backup, target_state
from childface.services.backup_staging import verify_backup
from childface.services.bulk_gallery import BulkBatch, bulk_insert
from childface.services.erasure import erase_child
from childface.services.gallery import ensure_embedding_model
from childface.services.integrity import scan_media
from childface.services.media import MediaStore
from childface.services.owners import scratch_tag
from childface.services.runtime import Runtime
from conftest import RUN_ID, PostgresServer

PASSPHRASE = "a long backup passphrase"
ACTOR = Actor("system", "backup-test")
ERASE = {"confirm": "ERASE"}


# ---- targets: an empty deployment on the test's back end ------------------------------------------


def _empty_url(db_url: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    """A new, empty database (no schema) on the same back end as `db_url`."""
    if make_url(db_url).get_backend_name() == "sqlite":
        return f"sqlite:///{tmp_path / name / 'childface.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    database = f"childface_test_{RUN_ID}_{name}_{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: server.drop(database))
    return server.create(database)


def _deployment(url: str, folder: Path) -> Settings:
    return Settings(
        _env_file=None, database_url=url, media_dir=folder / "media", index_dir=folder / "index", device="cpu"
    )


@pytest.fixture
def target(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return _deployment(_empty_url(db_url, tmp_path, request, "restored"), tmp_path / "restored")


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _assert_untouched(target: Settings) -> None:
    assert target_state(target).empty
    assert _files_under(target.media_dir) == []
    assert _files_under(target.resolved_index_dir) == []
    assert _files_under(target.media_dir.parent / "tmp") == []  # no staging left behind


def _audit_rows(db: Database, up_to: int) -> tuple[list[tuple], list[tuple]]:
    with db.session() as session:
        events = [
            tuple(row)
            for row in session.execute(
                select(*AuditEvent.__table__.columns).where(AuditEvent.seq <= up_to).order_by(AuditEvent.seq)
            )
        ]
        children = [
            tuple(row)
            for row in session.execute(
                select(*AuditEventChild.__table__.columns)
                .where(AuditEventChild.seq <= up_to)
                .order_by(AuditEventChild.seq, AuditEventChild.child_id)
            )
        ]
    return events, children


def _answers(http: httpx.Client, key: dict[str, str], probes: list[bytes]) -> list[list[tuple]]:
    out = []
    for probe in probes:
        response = http.post("/recognize", files={"file": ("p.jpg", probe, "image/jpeg")}, headers=key)
        assert response.status_code == 200, response.text
        out.append(
            [
                (f["decision"], f["candidates"][0]["child_id"] if f["candidates"] else None,
                 f["candidates"][0]["score"] if f["candidates"] else None)
                for f in response.json()["faces"]
            ]
        )
    return out


def _same_answers(a: list[list[tuple]], b: list[list[tuple]]) -> None:
    assert [[f[:2] for f in faces] for faces in a] == [[f[:2] for f in faces] for faces in b]
    scores_a = [f[2] for faces in a for f in faces if f[2] is not None]
    scores_b = [f[2] for faces in b for f in faces if f[2] is not None]
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-6, rtol=0)


# ---- the round trip under load ---------------------------------------------------------------------


def test_backup_of_a_serving_deployment_restores_the_same_answers_and_audit_log(
    app, auth, photos: Photos, runtime: Runtime, settings: Settings, target: Settings, pipeline,  # noqa: F811
    tmp_path: Path,
) -> None:
    staff, key = auth("staff"), auth(key="recognize,enroll")
    people = {0: ("A-1", "Ada"), 1: ("B-2", "Ben"), 7: ("E-7", "Eileen"), 3: ("N-3", "Noor")}
    # enrolled people, and a stranger (person 4); the group photo (persons 0-5) queues review items
    probes = [photos.person(p, 9) for p in (0, 1, 7, 4)]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as http:

        def post(path: str, photo: bytes, headers: dict[str, str]) -> httpx.Response:
            return http.post(path, files={"file" if path == "/recognize" else "files": ("p.jpg", photo)},
                             headers=headers)

        ids = {}
        for person, (external_id, name) in people.items():
            response = http.post("/children", json={"external_id": external_id, "name": name}, headers=staff)
            assert response.status_code == 201, response.text
            ids[person] = response.json()["id"]
        for person in (0, 1, 7):
            for n in range(2):
                response = post(f"/children/{ids[person]}/images", photos.person(person, n), staff)
                assert response.status_code == 200, response.text
        runtime.gallery.save()  # a snapshot on disk, as an autosaving server has

        stop = threading.Event()
        errors: list[str] = []
        rounds = [0]

        def recognize_until_stopped() -> None:
            while not stop.is_set():
                for probe in (photos.group, probes[rounds[0] % len(probes)]):
                    if (response := post("/recognize", probe, key)).status_code != 200:
                        errors.append(response.text)
                rounds[0] += 1

        def enroll_noor() -> None:  # one request per photo: the snapshot may fall between them
            for n in range(3):
                response = post(f"/children/{ids[3]}/images", photos.person(3, n), staff)
                if response.status_code != 200:
                    errors.append(response.text)

        threads = [threading.Thread(target=recognize_until_stopped), threading.Thread(target=enroll_noor)]
        for thread in threads:
            thread.start()
        while rounds[0] < 1 and not errors:
            stop.wait(0.05)
        source = Database(settings.database_url)  # a connection of its own, as `childface backup` has
        (tmp_path / "backups").mkdir()
        try:
            result = create_backup(settings, source, tmp_path / "backups", passphrase=PASSPHRASE)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            source.dispose()
        assert not errors, errors[:3]
        assert rounds[0] >= 2  # recognitions ran before, during and after the backup
        expected = _answers(http, key, probes)
    assert expected[0][0][:2] == ("match", ids[0]) and expected[3][0][0] != "match"
    assert result.attempts == 1 and result.encrypted
    assert result.path.parent == tmp_path / "backups" and result.path.suffix == ".cfbak"
    manifest = result.manifest
    assert manifest.database == ("sqlite" if runtime.db.is_sqlite else "postgresql")
    assert manifest.schema_revision == head_revision()
    assert manifest.counts["children"] == 4 and manifest.photos == manifest.counts["images"]
    assert manifest.models[0]["state"] and manifest.models[0]["dim"] == 128
    expected_audit = _audit_rows(runtime.db, manifest.last_audit_seq)
    assert len(expected_audit[0]) == manifest.counts["audit_events"]

    empty = Database(target.database_url)  # an empty deployment, as `childface migrate` leaves it
    upgrade(empty)
    empty.dispose()
    # refused, each with its reason, and the target stays empty
    good = result.path.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    cases = {
        "wrong passphrase": (good, "another passphrase", WrongPassphrase),
        "one byte changed": (bytes(flipped), PASSPHRASE, BackupDamaged),
        "truncated": (good[: len(good) - 1000], PASSPHRASE, BackupDamaged),
    }
    for case, (data, passphrase, error) in cases.items():
        bad = tmp_path / f"{case}.cfbak"
        bad.write_bytes(data)
        with pytest.raises(error):
            restore_backup(target, bad, passphrase=passphrase)
        _assert_untouched(target)

    restored = restore_backup(target, result.path, passphrase=PASSPHRASE)
    assert restored.photos == manifest.photos and restored.schema_after == head_revision()
    assert set(restored.index) == {m["key"] for m in manifest.models}

    copy = Runtime(target.model_copy(update=THRESHOLDS), pipeline=pipeline)
    copy.start(autosave=False)
    try:
        # the restored deployment: every row's photo, no stray file, the index equal to the DB
        scan = scan_media(copy.db, copy.media)
        assert scan.rows_without_files == [] and scan.files_without_rows == []
        assert copy.gallery.check().clean
        with copy.db.session() as session:
            for table, count in manifest.counts.items():
                assert session.scalar(text(f"SELECT count(*) FROM {table}")) == count, table  # noqa: S608
        assert _audit_rows(copy.db, manifest.last_audit_seq) == expected_audit
        with serve_in_thread(create_app(copy.settings, copy)) as url, httpx.Client(base_url=url) as http:
            _same_answers(_answers(http, key, probes), expected)
    finally:
        copy.close()


# ---- privacy ---------------------------------------------------------------------------------------------


def _traces(deployment: Runtime, child_id: int, *names: str) -> list[tuple[bytes, ...]]:
    """What of a child a file could hold, each as alternatives: names, each embedding (raw float32 bytes,
    or hex as PostgreSQL's dump writes bytea), each photo's sha256 and a piece of its bytes."""
    traces: list[tuple[bytes, ...]] = [(name.encode(),) for name in names]
    with deployment.db.session() as session:
        rows = session.execute(
            select(Embedding.vector, Image.sha256, Image.path)
            .join(Face, Face.id == Embedding.face_id)
            .join(Image, Image.id == Face.image_id)
            .where(Face.child_id == child_id)
        ).all()
    assert rows
    for vector, sha, path in rows:
        data = deployment.media.read(path)
        piece = data[len(data) // 2 :][:64]
        traces += [(bytes(vector), bytes(vector).hex().encode()), (sha.encode(),), (piece,)]
    return traces


def test_a_backup_after_an_erasure_holds_nothing_of_the_child(
    client, auth, photos: Photos, runtime: Runtime, settings: Settings, tmp_path: Path  # noqa: F811
) -> None:
    staff, admin = auth("staff"), auth("admin")
    gone = create_child(client, staff, "QE-913", "Quirinus Erasable-Name")
    kept = create_child(client, staff, "KP-120", "Konstantin Kept-Name")
    enroll(client, staff, gone, photos.person(7, 0), photos.person(7, 1))
    enroll(client, staff, kept, photos.person(0, 0), photos.person(0, 1))
    erased = _traces(runtime, gone, "Quirinus Erasable-Name", "QE-913")
    present = _traces(runtime, kept, "Konstantin Kept-Name", "KP-120")
    runtime.gallery.save()  # the snapshot held the child's vectors; the erasure rewrites it
    assert client.post(f"/children/{gone}/erase", json=ERASE, headers=admin).status_code == 200

    result = create_backup(settings, runtime.db, tmp_path / "plain.cfbak", passphrase=None)
    data = result.path.read_bytes()
    assert result.manifest.index_snapshots, result.manifest.index_left_out
    assert [t for t in present if not any(a in data for a in t)] == []  # the search finds what is there
    assert [t for t in erased if any(a in data for a in t)] == []


# ---- photos that vanish while they are copied --------------------------------------------------------------

MODEL_KEY = "backup-test-embedder:0"
DIM = 8


def _seed(database: Database, settings: Settings, children: int = 3) -> dict[int, list[str]]:
    """Children with two faces each, embeddings and real photo files (random bytes), by the bulk path."""
    media = MediaStore(settings.media_dir)
    per_child = 2
    model_row = ensure_embedding_model(
        database, key=MODEL_KEY, name="backup-test", weights_sha256="0" * 64, dim=DIM
    )
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(children * per_child, DIM)).astype(np.float32)
    batch = BulkBatch(vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    paths: list[list[str]] = []
    for c in range(children):
        batch.children.append({"external_id": f"S-{c}", "display_name": f"Seeded {c}"})
        paths.append([])
        for _ in range(per_child):
            sha, relative = media.put(b"\xff\xd8\xff" + rng.bytes(2000))
            paths[-1].append(relative)
            batch.images.append({"sha256": sha, "path": relative, "width": 64, "height": 64,
                                 "source": "api", "uploaded_by": "backup-test"})
            batch.faces.append({"child_index": c, "image_index": len(batch.images) - 1,
                                "box_x1": 1.0, "box_y1": 1.0, "box_x2": 50.0, "box_y2": 60.0,
                                "landmarks": [[10.0, 10.0]] * 5, "detector_score": 0.99,
                                "quality_score": 0.9})
    result = bulk_insert(database, ACTOR, model_row, DIM, [batch])
    return dict(zip(result.child_ids, paths, strict=True))


def test_photos_deleted_during_a_backup_make_it_start_again_and_a_missing_one_fails_it(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    seeded = _seed(database, settings)
    first, second, _ = seeded
    media = MediaStore(settings.media_dir)
    erased: list[int] = []

    def erase_once_the_copy_starts(stage: str, total: int | None, unit: str):  # noqa: ANN202
        if stage == "photos" and not erased:  # after the database snapshot, before any photo is copied
            erase_child(db=database, media=media, actor=ACTOR, child_id=first, confirm="ERASE")
            erased.append(first)
            assert not any(media.absolute(p).exists() for p in seeded[first])
        return lambda n: None

    out = tmp_path / "out"
    out.mkdir()
    # what a killed backup left: a scratch folder with a database copy, a partial file beside DEST
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dead_tag = scratch_tag().replace(f"-{os.getpid()}-", f"-{dead}-")
    leftovers = [settings.media_dir.parent / "tmp" / f"backup-{dead_tag}x1",
                 out / f".old.cfbak.{dead_tag}x2.tmp"]
    live = out / f".other.cfbak.{scratch_tag()}x3.tmp"  # a backup of this process, still being written
    leftovers[0].mkdir(parents=True)
    for path in (leftovers[1], live):
        path.write_bytes(b"partial")
    result = create_backup(
        settings, database, out / "b.cfbak", passphrase=None, progress=erase_once_the_copy_starts
    )
    assert not any(p.exists() for p in leftovers) and live.exists()
    live.unlink()
    assert erased and result.attempts == 2
    assert result.manifest.photos == 4 and result.manifest.counts["children"] == 2
    data = result.path.read_bytes()
    assert not any(Path(p).stem.encode() in data for p in seeded[first])
    assert all(Path(p).stem.encode() in data for p in seeded[second])

    media.absolute(seeded[second][0]).unlink()  # gone for good: the row still names it
    with pytest.raises(BackupError, match="missing although the database names it"):
        create_backup(settings, database, out / "c.cfbak", passphrase=None)
    assert [p.name for p in out.iterdir()] == ["b.cfbak"]  # no temp file either
    with pytest.raises(BackupError, match="never overwrites"):
        create_backup(settings, database, result.path, passphrase=None)


# ---- index snapshots ------------------------------------------------------------------------------------


def test_index_snapshots_that_do_not_fit_are_left_out_and_a_differing_one_is_rebuilt(
    database: Database, settings: Settings, target: Settings, tmp_path: Path
) -> None:
    from childface.services.gallery import Gallery

    seeded = _seed(database, settings)
    erase_child(db=database, media=MediaStore(settings.media_dir), actor=ACTOR, child_id=next(iter(seeded)),
                confirm="ERASE")
    gallery = Gallery(db=database, settings=settings, model_key=MODEL_KEY, dim=DIM)
    gallery.start()
    gallery.save()
    seq = gallery.watermark
    folder = settings.resolved_index_dir
    for name, watermark in (("later", seq + 5), ("earlier", seq - 1)):  # the erasure is the newest event
        other = FaissIndex(f"{name}-model:0", DIM)
        other.watermark = watermark
        other.save(folder / f"{name}-model_0.cfidx")

    result = create_backup(settings, database, tmp_path / "b.cfbak", passphrase=None)
    own = snapshot_path(settings, MODEL_KEY).name
    assert result.manifest.index_snapshots == [f"index/{own}"]
    assert result.manifest.index_left_out == {
        "earlier-model_0.cfidx": f"saved before the erasure at seq {seq}",
        "later-model_0.cfidx": f"saved after the database copy (seq {seq + 5} > {seq})",
    }
    assert restore_backup(target, result.path, passphrase=None).index == {MODEL_KEY: "snapshot"}
    assert [p.name for p in target.resolved_index_dir.iterdir()] == [own]

    # a snapshot that fits by its watermark but holds a face the database does not have
    index = FaissIndex.load(folder / own)
    index.add(np.asarray([10_000]), np.eye(DIM, dtype=np.float32)[:1])
    index.save(folder / own)
    result = create_backup(settings, database, tmp_path / "c.cfbak", passphrase=None)
    assert result.manifest.index_snapshots == [f"index/{own}"]
    assert restore_backup(target, result.path, passphrase=None, force=True).index == {MODEL_KEY: "rebuilt"}
    check = Gallery(db=Database(target.database_url), settings=target, model_key=MODEL_KEY, dim=DIM)
    check.start()
    assert check.check().clean and check.count == 4
    check.db.dispose()


# ---- schema revisions and database kinds --------------------------------------------------------------


def test_an_older_schema_is_upgraded_and_a_newer_one_or_the_other_database_kind_refused(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest, target: Settings
) -> None:
    from sqlalchemy import insert

    from childface.db.migrate import current_revision, schema_differences
    from childface.db.models import Child

    old = _deployment(_empty_url(db_url, tmp_path, request, "old"), tmp_path / "old")
    database = Database(old.database_url)
    upgrade(database, "0004")
    with database.engine.begin() as conn:  # Core inserts name only the columns 0004 has
        conn.execute(insert(Child.__table__).values(external_id="OLD-1", display_name="Olga"))
        conn.execute(insert(AuditEvent.__table__).values(
            actor="system:test", action="child.created", target_type="child", target_id="1", child_id=1
        ))
    result = create_backup(old, database, tmp_path / "old.cfbak", passphrase=None)
    assert result.manifest.schema_revision == "0004"

    restored = restore_backup(target, result.path, passphrase=None)
    assert (restored.schema_before, restored.schema_after) == ("0004", head_revision())
    upgraded = Database(target.database_url)
    assert current_revision(upgraded) == head_revision() and schema_differences(upgraded) == []
    with upgraded.session() as session:
        assert session.scalars(select(Child.display_name)).all() == ["Olga"]
        assert session.scalars(select(AuditEvent.action)).all() == ["child.created"]
    upgraded.dispose()

    with database.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    newer = create_backup(old, database, tmp_path / "newer.cfbak", passphrase=None)
    database.dispose()
    with pytest.raises(BackupError, match=r"schema \(9999\) is newer"):  # refused even with force
        restore_backup(target, newer.path, passphrase=None, force=True)
    assert target_state(target).rows == {"children": 1, "images": 0, "audit_events": 1}
    with pytest.raises(BackupError, match=r"schema \(9999\) is newer"):
        verify_backup(newer.path, passphrase=None)

    other_kind = "postgresql" if make_url(db_url).get_backend_name() == "sqlite" else "sqlite"
    if other_kind == "sqlite":
        other_url = f"sqlite:///{tmp_path / 'other' / 'childface.db'}"
    else:
        server_url = request.getfixturevalue("postgres_server").url_for("postgres")
        other_url = _empty_url(server_url, tmp_path, request, "other")
    other = _deployment(other_url, tmp_path / "other")
    with pytest.raises(BackupError, match="converting between them is not supported"):
        restore_backup(other, result.path, passphrase=None)
    _assert_untouched(other)


def test_a_target_that_is_not_empty_is_refused_and_force_replaces_it(
    database: Database, settings: Settings, target: Settings, tmp_path: Path
) -> None:
    seeded = _seed(database, settings, children=2)
    result = create_backup(settings, database, tmp_path / "b.cfbak", passphrase=None)
    stray = target.media_dir / "zz" / "stray.bin"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not from the backup")
    with pytest.raises(BackupError, match=r"not empty \(1 file\(s\) in the media folder\)"):
        restore_backup(target, result.path, passphrase=None)
    assert stray.exists() and target_state(target).rows == {}

    restored = restore_backup(target, result.path, passphrase=None, force=True)
    assert restored.replaced and not stray.exists()
    installed = sorted(p.relative_to(target.media_dir).as_posix() for p in _files_under(target.media_dir))
    assert installed == sorted(p for paths in seeded.values() for p in paths)
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(target, result.path, passphrase=None)

    # a process still using the target: refused, even with force, before anything changes
    erase_child(db=database, media=MediaStore(settings.media_dir), actor=ACTOR, child_id=next(iter(seeded)),
                confirm="ERASE")
    smaller = create_backup(settings, database, tmp_path / "c.cfbak", passphrase=None)
    user = Database(target.database_url)
    with user.engine.connect() as held:
        held.execute(text("SELECT 1"))
        with pytest.raises(BackupError, match=r"in use|other session\(s\) are connected"):
            restore_backup(target, smaller.path, passphrase=None, force=True)
        assert target_state(target).rows["images"] == 4 and len(_files_under(target.media_dir)) == 4
    user.dispose()
    assert restore_backup(target, smaller.path, passphrase=None, force=True).photos == 2
    assert target_state(target).rows["images"] == 2 and len(_files_under(target.media_dir)) == 2


# ---- the file format alone ---------------------------------------------------------------------------------

SMALL = {"chunk_size": 4096, "scrypt": (14, 8, 1)}  # quick keys and several chunks for a small payload


def _seal(payload: bytes, passphrase: str | None) -> bytes:
    out = io.BytesIO()
    writer = ArchiveWriter(out, passphrase, **SMALL)  # type: ignore[arg-type]
    writer.write(payload)
    writer.finish()
    assert writer.bytes_written == len(out.getvalue())
    return out.getvalue()


def _open(data: bytes, passphrase: str | None) -> bytes:
    src = io.BytesIO(data)
    reader = ArchiveReader(src, read_header(src), passphrase)
    return reader.read()


def test_the_file_format_detects_cuts_reordering_additions_and_changed_bytes() -> None:
    payload = np.random.default_rng(1).bytes(3 * 4096 + 100)
    sealed = _seal(payload, PASSPHRASE)
    assert _open(sealed, PASSPHRASE) == payload and payload[:64] not in sealed
    sealed_chunk = 4096 + 16
    start = len(sealed) - 3 * sealed_chunk - (100 + 16)
    head = sealed[:start]
    chunks = [sealed[start + i * sealed_chunk : start + (i + 1) * sealed_chunk] for i in range(4)]
    damaged = {
        "cut at a chunk boundary": head + b"".join(chunks[:3]),
        "cut in the final chunk": sealed[:-1],
        "chunks swapped": head + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "a chunk left out": head + chunks[0] + b"".join(chunks[2:]),
        "a byte appended": sealed + b"\x00",
        "a byte changed": sealed[:start + 10] + bytes([sealed[start + 10] ^ 0x80]) + sealed[start + 11 :],
        "not a backup": b"PK\x03\x04" + sealed[4:],
    }
    for case, data in damaged.items():
        with pytest.raises(BackupDamaged):
            _open(data, PASSPHRASE)
        assert case
    with pytest.raises(WrongPassphrase):
        _open(sealed, "another passphrase")
    with pytest.raises(BackupError, match="at least 8 characters"):
        _seal(payload, "short")
    for size in (0, 2 * 4096):  # an empty final chunk
        data = np.random.default_rng(size).bytes(size)
        assert _open(_seal(data, PASSPHRASE), PASSPHRASE) == data

    plain = _seal(payload, None)
    assert payload in plain and _open(plain, None) == payload  # plain: searchable, and still checked
    for data in (plain[:-1], plain[:100] + bytes([plain[100] ^ 1]) + plain[101:], plain + b"\x00"):
        with pytest.raises(BackupDamaged):
            _open(data, None)
    assert hashlib.sha256(plain[:-32]).digest() == plain[-32:]

