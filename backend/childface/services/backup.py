"""`childface backup`: a consistent backup of a running deployment, in one file.

What goes in (the file format is in `services.backup_archive`):

1. The database, first, as one consistent snapshot, while servers keep
   running. SQLite: `VACUUM INTO` a scratch file, which reads one transaction's
   view and writes only live rows into fresh pages: no free page, and so no
   byte of an erased child that `secure_delete` or the write-ahead log might
   still hold, reaches the backup. PostgreSQL: a REPEATABLE READ transaction
   exports its snapshot and `pg_dump --snapshot` dumps exactly that (custom
   format, uncompressed); the manifest's facts are read in the same transaction.
   Everything the manifest says (schema revision, counts, models, the newest
   audit seq) is read from that snapshot, never from the live database.
2. Exactly the photo files that the snapshot's `images` rows name. Files are
   content-addressed and never change, so the copy is consistent if each file
   is still there; each one's sha256 is checked as it is copied (a mismatch is
   damage on disk: the backup fails and says so). A file that vanished since
   the snapshot (an erasure or removal committed meanwhile) makes the whole
   attempt start again with a fresh snapshot, up to `MAX_ATTEMPTS` times; then
   the backup fails. A backup never names a photo it lacks.
3. Vector-index snapshots (`<index dir>/*.cfidx`) that fit the database copy:
   saved at or before the copy's newest audit event (so a restored server
   replays the rest) and after its newest erasure (so they hold no erased
   vector). Others are left out, with the reason in the manifest; the restore
   rebuilds what is missing.

The file is written under a temporary name beside DEST and renamed at the end,
so DEST is either absent or complete. It is never overwritten. Without a
passphrase it is written only when the caller asks for it explicitly
(`passphrase=None` here; `--no-encrypt` in the CLI).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from childface.config import Settings
from childface.db.models import Image
from childface.db.session import Database
from childface.private_files import private_dir
from childface.services import backup_pg
from childface.services.backup_archive import (
    CHECKSUMS,
    INDEX_PREFIX,
    MANIFEST,
    MEDIA_PREFIX,
    MEMBER_NAME,
    SUFFIX,
    ArchiveWriter,
    BackupError,
    Manifest,
    check_passphrase,
)
from childface.services.erasure import ERASURE_ACTION
from childface.services.media import MediaStore
from childface.services.owners import scratch_owner_alive, scratch_tag

log = logging.getLogger(__name__)

#: fresh snapshots tried when photos vanish while they are copied
MAX_ATTEMPTS = 3
#: the tables the manifest counts
COUNTED = ("children", "faces", "images", "embeddings", "audit_events")


class Progress(Protocol):
    """`progress(stage, total, unit)` announces a stage; the function it returns advances it by n."""

    def __call__(self, stage: str, total: int | None, unit: str) -> Callable[[int], None]: ...


def no_progress(stage: str, total: int | None, unit: str) -> Callable[[int], None]:
    return lambda n: None


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    files: int  # members in the archive
    photos: int
    seconds: float
    attempts: int
    encrypted: bool
    manifest: Manifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "bytes": self.bytes,
            "files": self.files,
            "photos": self.photos,
            "seconds": round(self.seconds, 3),
            "attempts": self.attempts,
            "encrypted": self.encrypted,
            "database": self.manifest.database,
            "schema_revision": self.manifest.schema_revision,
            "last_audit_seq": self.manifest.last_audit_seq,
            "counts": self.manifest.counts,
            "index_snapshots": self.manifest.index_snapshots,
            "index_left_out": self.manifest.index_left_out,
        }


@dataclass
class DatabaseCopy:
    """The database snapshot in a scratch file, and what it says."""

    file: Path
    backend: str
    revision: str
    server_version: str | None
    last_seq: int
    last_erasure_seq: int
    counts: dict[str, int]
    models: list[dict[str, Any]]
    images: list[tuple[str, str]]  # (path relative to the media folder, sha256)


class _Vanished(Exception):
    def __init__(self, relative: str) -> None:
        super().__init__(relative)
        self.relative = relative


def destination(dest: Path, now: datetime | None = None) -> Path:
    """The file to write: DEST, or a new dated name in DEST when it is a folder."""
    if dest.is_dir():
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H%M%SZ")
        return dest / f"childface-{stamp}{SUFFIX}"
    return dest


def create_backup(
    settings: Settings,
    db: Database,
    dest: Path,
    *,
    passphrase: str | None,
    progress: Progress = no_progress,
    attempts: int = MAX_ATTEMPTS,
) -> BackupResult:
    """Back up the deployment to one file at DEST (see the module docstring); `passphrase=None`
    writes it unencrypted. Raises BackupError with the reason; then nothing is left at DEST."""
    if passphrase is not None:
        check_passphrase(passphrase)
    dest = destination(Path(dest))
    if dest.exists():
        raise BackupError(f"{dest} exists already: a backup never overwrites a file")
    if not dest.parent.is_dir():
        raise BackupError(f"the folder {dest.parent} does not exist")
    started = time.perf_counter()
    missing = ""
    for attempt in range(1, attempts + 1):
        try:
            manifest, size, members = _attempt(settings, db, dest, passphrase, progress)
        except _Vanished as exc:
            missing = exc.relative
            log.info("backup attempt %d: photo %s vanished after the snapshot; again", attempt, missing)
            continue
        except (OSError, sqlite3.Error, SQLAlchemyError) as exc:  # a full disk, a dropped connection
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise BackupError(f"the backup failed: {reason}; no backup was written") from exc
        return BackupResult(
            path=dest, bytes=size, files=members, photos=manifest.photos,
            seconds=time.perf_counter() - started, attempts=attempt,
            encrypted=passphrase is not None, manifest=manifest,
        )
    raise BackupError(_vanished_message(db, missing, attempts))


def _vanished_message(db: Database, relative: str, attempts: int) -> str:
    with db.session() as session:
        named = session.scalar(select(Image.id).where(Image.path == relative)) is not None
    if named:
        return (
            f"the photo file {relative} is missing although the database names it: the deployment is "
            "damaged (`childface verify` lists what is missing); no backup was written"
        )
    return (
        f"photos were deleted while they were being copied, {attempts} times (the last: {relative}; "
        "erasures or removals): try again later; no backup was written"
    )


def scratch_root(settings: Settings) -> Path:
    """`<data folder>/tmp`: where backups and restores keep their scratch folders (private).

    Scratch folders and temporary backup files that a killed backup or restore left
    (they hold a copy of the database) are removed here, once their process is gone.
    """
    root = settings.media_dir.parent / "tmp"
    private_dir(root)
    clear_abandoned(root, lambda name: name.startswith(("backup-cf-", "restore-cf-")))
    return root


def clear_abandoned(folder: Path, ours: Callable[[str], bool]) -> None:
    """Remove the entries of `folder` whose name is `ours` and carries the scratch tag of a dead
    process of this host (`services.owners`); another host's, or a live process's, stay."""
    for entry in folder.iterdir() if folder.is_dir() else ():
        if not ours(entry.name):
            continue
        try:
            made = datetime.fromtimestamp(entry.lstat().st_mtime, UTC)
        except FileNotFoundError:
            continue
        if scratch_owner_alive(entry.name, made) is False:
            log.info("removing %s, left by a backup or restore that did not finish", entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _attempt(
    settings: Settings, db: Database, dest: Path, passphrase: str | None, progress: Progress
) -> tuple[Manifest, int, int]:
    scratch = Path(tempfile.mkdtemp(prefix=f"backup-{scratch_tag()}", dir=scratch_root(settings)))
    clear_abandoned(dest.parent, lambda name: name.startswith(".") and name.endswith(".tmp"))
    temp = dest.with_name(f".{dest.name}.{scratch_tag()}{os.urandom(4).hex()}.tmp")
    try:
        tick = progress("database", None, "copy")
        copy = copy_database(db, scratch)
        tick(1)
        index, left_out = _index_copies(settings, scratch, copy)
        manifest = Manifest(
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            childface_version=_version(),
            database=copy.backend,
            schema_revision=copy.revision,
            server_version=copy.server_version,
            last_audit_seq=copy.last_seq,
            counts=copy.counts,
            models=copy.models,
            photos=len(copy.images),
            index_snapshots=[name for name, _ in index],
            index_left_out=left_out,
        )
        sums: dict[str, dict[str, Any]] = {}
        with _exclusive(temp) as out:
            writer = ArchiveWriter(out, passphrase)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                _add_bytes(tar, MANIFEST, manifest.to_json(), sums)
                with copy.file.open("rb") as fh:
                    _add_stream(tar, manifest.database_member, fh, sums)
                media = MediaStore(settings.media_dir)
                tick = progress("photos", len(copy.images), "photo")
                for relative, sha in copy.images:
                    _add_photo(tar, media, relative, sha, sums)
                    tick(1)
                for name, path in index:
                    with path.open("rb") as fh:
                        _add_stream(tar, name, fh, sums)
                manifest_sum = sums[MANIFEST]["sha256"]
                trailer = {"files": sums, "manifest_sha256": manifest_sum}
                _add_bytes(tar, CHECKSUMS, json.dumps(trailer, sort_keys=True).encode(), {})
            writer.finish()
            out.flush()
            os.fsync(out.fileno())
        if dest.exists():
            raise BackupError(f"{dest} appeared while the backup was written: it is left as it is")
        os.replace(temp, dest)
        _fsync_dir(dest.parent)
        return manifest, writer.bytes_written, len(sums) + 1
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def _exclusive(path: Path) -> Iterator[BinaryIO]:
    """A new file, private (0600), that did not exist before."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "wb") as fh:
        yield fh


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version() -> str:
    try:
        return metadata.version("childface")
    except metadata.PackageNotFoundError:
        return "unknown"


# ---- archive members -------------------------------------------------------------------------------


class _Hashing:
    """A reader that hashes what passes through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self.digest.update(data)
        return data


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    return info


def _add_stream(tar: tarfile.TarFile, name: str, fh: BinaryIO, sums: dict[str, dict[str, Any]]) -> str:
    size = os.fstat(fh.fileno()).st_size
    reader = _Hashing(fh)
    tar.addfile(_info(name, size), reader)  # type: ignore[arg-type]
    sums[name] = {"sha256": reader.digest.hexdigest(), "size": size}
    return sums[name]["sha256"]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, sums: dict[str, dict[str, Any]]) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))
    sums[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _add_photo(
    tar: tarfile.TarFile, media: MediaStore, relative: str, sha: str, sums: dict[str, dict[str, Any]]
) -> None:
    try:
        path = media.absolute(relative)
    except ValueError as exc:
        raise BackupError(f"an images row names {relative!r}, outside the media folder") from exc
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise _Vanished(relative) from None
    with fh:  # open: a deletion now no longer matters, the bytes stay readable
        digest = _add_stream(tar, MEDIA_PREFIX + relative, fh, sums)
    if digest != sha:
        raise BackupError(
            f"the photo file {relative} does not hold the bytes its sha256 names (damaged on disk): "
            "`childface verify` lists every such file; no backup was written"
        )


# ---- the database snapshot -------------------------------------------------------------------------


Query = Callable[[str], tuple[list[str], list[tuple[Any, ...]]]]


def copy_database(db: Database, scratch: Path) -> DatabaseCopy:
    """One consistent snapshot of the database in `scratch`, and the facts read from that snapshot."""
    return _sqlite_copy(db, scratch) if db.is_sqlite else _postgres_copy(db, scratch)


def _sqlite_copy(db: Database, scratch: Path) -> DatabaseCopy:
    out = scratch / "childface.sqlite"
    raw = db.engine.raw_connection()
    try:
        # one read transaction, written into fresh pages: no free page, no WAL leftover (docstring)
        raw.cursor().execute("VACUUM INTO ?", (str(out),))
    finally:
        raw.close()
    conn = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        def query(sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
            cursor = conn.execute(sql)
            return [d[0] for d in cursor.description], cursor.fetchall()

        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "alembic_version" not in tables:
            raise BackupError("the database has no schema (run `childface migrate`): nothing to back up")
        return _facts(out, "sqlite", None, query)
    finally:
        conn.close()


def _postgres_copy(db: Database, scratch: Path) -> DatabaseCopy:
    out = scratch / "childface.pgdump"
    backup_pg.tool("pg_dump")
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        if conn.exec_driver_sql("SELECT to_regclass('alembic_version')").scalar() is None:
            raise BackupError("the database has no schema (run `childface migrate`): nothing to back up")
        # pg_dump reads exactly this transaction's snapshot; the facts below come from it too
        exported = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        backup_pg.dump(db.url, out, snapshot=exported)

        def query(sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
            result = conn.exec_driver_sql(sql)
            return list(result.keys()), [tuple(row) for row in result]

        version = conn.exec_driver_sql("SHOW server_version").scalar_one()
        copy = _facts(out, "postgresql", str(version), query)
        conn.rollback()
    return copy


def _facts(file: Path, backend: str, server_version: str | None, query: Query) -> DatabaseCopy:
    def one(sql: str) -> Any:
        return query(sql)[1][0][0]

    columns, rows = query("SELECT * FROM embedding_models ORDER BY id")
    models = [dict(zip(columns, row, strict=True)) for row in rows]
    return DatabaseCopy(
        file=file,
        backend=backend,
        revision=str(one("SELECT version_num FROM alembic_version")),
        server_version=server_version,
        last_seq=int(one("SELECT coalesce(max(seq), 0) FROM audit_events")),
        last_erasure_seq=int(
            one(f"SELECT coalesce(max(seq), 0) FROM audit_events WHERE action = '{ERASURE_ACTION}'")  # noqa: S608
        ),
        counts={table: int(one(f"SELECT count(*) FROM {table}")) for table in COUNTED},  # noqa: S608
        # `state` arrived with schema 0005: a backup of an older database has none
        models=[{"key": m["key"], "dim": int(m["dim"]), "state": m.get("state")} for m in models],
        images=[(str(p), str(s)) for p, s in query("SELECT path, sha256 FROM images ORDER BY path")[1]],
    )


# ---- index snapshots ---------------------------------------------------------------------------------


def _index_copies(
    settings: Settings, scratch: Path, copy: DatabaseCopy
) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """Copies of the index snapshots that fit the database copy (module docstring), and why others don't."""
    folder = settings.resolved_index_dir
    kept: list[tuple[str, Path]] = []
    left_out: dict[str, str] = {}
    snapshots = sorted(folder.glob("*.cfidx")) if folder.is_dir() else []
    if not snapshots:
        return kept, left_out
    # late: the index package loads faiss and torch, which a deployment without snapshots never needs
    from childface.index.base import SnapshotError, read_snapshot

    (scratch / "index").mkdir()
    for path in snapshots:
        if path.name.startswith("."):
            continue  # a temporary file of a snapshot being written
        if not MEMBER_NAME.fullmatch(path.name):
            left_out[path.name] = "not a snapshot name childface writes"
            continue
        target = scratch / "index" / path.name
        try:
            shutil.copyfile(path, target)  # a snapshot is replaced by rename: this is one whole version
        except FileNotFoundError:
            continue
        try:
            header = read_snapshot(target)
        except SnapshotError as exc:
            left_out[path.name] = f"unreadable ({exc})"
            continue
        watermark = int(header["watermark"])
        if header["kind"] == "milvus":
            left_out[path.name] = "its vectors are in Milvus, not in the file"
        elif watermark > copy.last_seq:
            left_out[path.name] = f"saved after the database copy (seq {watermark} > {copy.last_seq})"
        elif watermark < copy.last_erasure_seq:
            left_out[path.name] = f"saved before the erasure at seq {copy.last_erasure_seq}"
        else:
            kept.append((INDEX_PREFIX + path.name, target))
            continue
        target.unlink()
    return kept, left_out
