"""`childface restore`: a backup back into an empty deployment, all or nothing.

Order of work, so that a refusal leaves the target exactly as it was:

1. Read the header and the manifest (the first member). Refuse at once a
   backup of the other database kind (SQLite vs PostgreSQL), one whose schema
   is newer than this code's, a wrong or missing passphrase, and (PostgreSQL)
   missing `pg_restore`/`psql` or other sessions on the target database.
2. Refuse a target that is not empty — rows in `children`, `images` or
   `audit_events`, or any file under the media folder — unless `force`, which
   replaces it (never merges).
3. Read the WHOLE backup into a private staging folder in the data folder
   (`<data>/tmp/restore-...`), checking each member against `checksums.json`,
   the manifest against its sum, and the end of the file (final chunk or
   checksum trailer). Any damage stops here.
4. SQLite: migrate the staged copy when its schema is older, then switch it to
   a single file (no -wal/-shm).
5. Install: photos first (tracked, taken out again if the database step
   fails); then the database: SQLite by an atomic rename over the target file,
   after the target was checkpointed and switched out of WAL mode (refused when
   another process has it open), so no -wal/-shm of the old database can apply
   to the new one; PostgreSQL by `pg_restore` + `psql` in one transaction
   (`services.backup_pg`), then `migrate` when the schema is older. With
   `force`, old photos the backup does not have are deleted last.
6. The index: stale snapshots in the index folder are removed, the backup's
   are put in, and each model's index is loaded, caught up and compared with
   the database; one that differs (or is missing) is rebuilt and saved, so the
   first server start serves exactly the restored database.

Reading and checking (steps 1 and 3) are `services.backup_staging`; its
`verify_backup` does them without a target (a restore drill that writes nothing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from childface.config import Settings
from childface.db.migrate import current_revision, head_revision, upgrade
from childface.db.session import Database
from childface.private_files import private_dir
from childface.services import backup_pg
from childface.services.backup import Progress, no_progress, scratch_root
from childface.services.backup_archive import BackupError, Manifest
from childface.services.backup_staging import StagedBackup, check_restorable, read_backup
from childface.services.owners import scratch_tag

#: tables whose rows make a deployment "not empty"
_CONTENT_TABLES = ("children", "images", "audit_events")


@dataclass
class TargetState:
    """What the target deployment holds now."""

    rows: dict[str, int] = field(default_factory=dict)
    media_files: int = 0

    @property
    def empty(self) -> bool:
        return not any(self.rows.values()) and self.media_files == 0

    def describe(self) -> str:
        parts = [f"{n} {table.replace('_', ' ')}" for table, n in self.rows.items() if n]
        if self.media_files:
            parts.append(f"{self.media_files} file(s) in the media folder")
        return ", ".join(parts)


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    photos: int
    bytes_read: int
    seconds: float
    schema_before: str  # the backup's
    schema_after: str  # the database's now
    index: dict[str, str]  # model key -> "snapshot" | "rebuilt"
    replaced: bool  # a non-empty target was replaced (force)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_created_at": self.manifest.created_at,
            "database": self.manifest.database,
            "photos": self.photos,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "schema": {"backup": self.schema_before, "now": self.schema_after},
            "last_audit_seq": self.manifest.last_audit_seq,
            "counts": self.manifest.counts,
            "index": self.index,
            "replaced": self.replaced,
        }


# ---- the target ------------------------------------------------------------------------------------------


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("restore needs a SQLite database file, not an in-memory database")
    return Path(database)


def target_state(settings: Settings) -> TargetState:
    """What the configured deployment holds (see TargetState.empty)."""
    state = TargetState()
    media = settings.media_dir
    if media.is_dir():
        state.media_files = sum(len(files) for _, _, files in os.walk(media))
    url = settings.database_url
    if make_url(url).get_backend_name() == "sqlite":
        path = _sqlite_path(url)
        if not path.exists():
            return state
        conn = sqlite3.connect(path, timeout=30)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table in _CONTENT_TABLES:
                if table in tables:
                    state.rows[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"cannot read the target database {path}: {exc}") from exc
        finally:
            conn.close()
        return state
    db = _open(url)
    try:
        with db.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            for table in _CONTENT_TABLES:
                if table in tables:
                    state.rows[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
    finally:
        db.dispose()
    return state


def _open(url: str) -> Database:
    from childface.db.session import DatabaseError

    try:
        db = Database(url)
        db.check()
    except DatabaseError as exc:
        raise BackupError(str(exc)) from exc
    return db


def _other_sessions(url: str) -> int:
    db = _open(url)
    try:
        with db.engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    )
                ).scalar_one()
            )
    finally:
        db.dispose()


# ---- restore ---------------------------------------------------------------------------------------------


def restore_backup(
    settings: Settings,
    src: Path,
    *,
    passphrase: str | None,
    force: bool = False,
    progress: Progress = no_progress,
) -> RestoreResult:
    """Restore the backup at `src` into the configured deployment (module docstring).

    Raises BackupError with the reason; the target is then unchanged.
    """
    started = time.perf_counter()
    src = Path(src)
    backend = make_url(settings.database_url).get_backend_name()
    backend = "sqlite" if backend == "sqlite" else "postgresql"
    if backend == "postgresql":
        backup_pg.check_tools_for_restore()
    state = target_state(settings)
    if not state.empty and not force:
        raise BackupError(
            f"the target deployment is not empty ({state.describe()}): restore never merges; "
            "point it at an empty database and media folder, or replace everything with --force"
        )

    def refuse_early(manifest: Manifest) -> None:
        check_restorable(manifest, backend)
        if backend == "postgresql" and (others := _other_sessions(settings.database_url)):
            raise BackupError(
                f"{others} other session(s) are connected to the target database: stop every childface "
                "process that uses it, then restore"
            )

    staging = Path(tempfile.mkdtemp(prefix=f"restore-{scratch_tag()}", dir=scratch_root(settings)))
    try:
        try:
            staged = read_backup(src, passphrase, staging, progress, refuse_early)
            manifest = staged.manifest
            if backend == "sqlite":
                _prepare_sqlite(staged, progress)
        except (OSError, sqlite3.Error, SQLAlchemyError, RuntimeError) as exc:
            if isinstance(exc, BackupError):
                raise
            raise BackupError(f"the restore failed before changing anything: {_reason(exc)}") from exc
        try:
            index = _install(settings, staged, backend, force=force, progress=progress)
        except (OSError, sqlite3.Error, SQLAlchemyError) as exc:
            raise BackupError(f"the restore failed while installing: {_reason(exc)}") from exc
        schema_after = _current(settings.database_url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RestoreResult(
        manifest=manifest,
        photos=len(staged.media),
        bytes_read=staged.bytes_read,
        seconds=time.perf_counter() - started,
        schema_before=manifest.schema_revision,
        schema_after=schema_after,
        index=index,
        replaced=not state.empty,
    )


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]


def _current(url: str) -> str:
    db = _open(url)
    try:
        return current_revision(db) or ""
    finally:
        db.dispose()


def _prepare_sqlite(staged: StagedBackup, progress: Progress) -> None:
    """Migrate the staged copy when older, and leave it one self-contained file."""
    db = Database(f"sqlite:///{staged.database}")
    try:
        if current_revision(db) != head_revision():
            tick = progress("migrating", None, "step")
            upgrade(db)
            tick(1)
    finally:
        db.dispose()
    _leave_wal(staged.database)


def _leave_wal(path: Path) -> None:
    """Checkpoint a SQLite file and switch it to rollback-journal mode: one file, no -wal/-shm.

    Refused (BackupError) while another process has it open."""
    conn = sqlite3.connect(path, timeout=2, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
    except sqlite3.OperationalError as exc:
        raise BackupError(
            f"the database {path} is in use ({exc}): stop every childface process that uses it, then restore"
        ) from exc
    finally:
        conn.close()
    if str(mode).lower() != "delete":
        raise BackupError(f"the database {path} is in use: stop every childface process that uses it")


def _install(
    settings: Settings, staged: StagedBackup, backend: str, *, force: bool, progress: Progress
) -> dict[str, str]:
    media_root = settings.media_dir
    private_dir(media_root)
    if backend == "sqlite":
        _release_sqlite(_sqlite_path(settings.database_url))
    keep = {relative for relative, _ in staged.media}
    added: list[Path] = []
    folders: set[Path] = set()
    tick = progress("installing photos", len(staged.media), "photo")
    try:
        for relative, staged_file in staged.media:
            target = media_root / relative
            if target.parent not in folders:
                private_dir(target.parent)
                folders.add(target.parent)
            if not target.exists():
                added.append(target)
            # same folder tree, same file system (the staging folder is in the data folder): a rename
            shutil.move(staged_file, target)
            tick(1)
        os.sync()  # the photos and their folder entries are on disk before a database names them
        tick = progress("installing the database", None, "step")
        if backend == "sqlite":
            _install_sqlite(staged.database, _sqlite_path(settings.database_url))
        else:
            backup_pg.restore(settings.database_url, staged.database, staged.root)
        tick(1)
    except BaseException:
        for path in added:  # the database step failed: take out what was put in
            path.unlink(missing_ok=True)
        raise
    if backend == "postgresql":
        db = _open(settings.database_url)
        try:
            if current_revision(db) != head_revision():
                tick = progress("migrating", None, "step")
                try:
                    upgrade(db)
                except (SQLAlchemyError, RuntimeError) as exc:
                    raise BackupError(
                        f"the backup was restored at schema {staged.manifest.schema_revision}, but upgrading "
                        f"it failed ({exc}): run `childface migrate`"
                    ) from exc
                tick(1)
        finally:
            db.dispose()
    if force:
        _remove_others(media_root, keep)
    return _install_index(settings, staged, progress)


def _release_sqlite(target: Path) -> None:
    """Checkpoint the target file and take it out of WAL mode, before anything is installed: refused
    while another process has it open, and afterwards no -wal/-shm of it can apply to the new file."""
    private_dir(target.parent)
    if target.exists():
        _leave_wal(target)
    for leftover in (target.with_name(target.name + s) for s in ("-wal", "-shm", "-journal")):
        if leftover.exists():
            raise BackupError(f"{leftover} exists: another process has the database open; stop it first")


def _install_sqlite(staged: Path, target: Path) -> None:
    temp = target.with_name(f".{target.name}.{scratch_tag()}restore.tmp")
    shutil.move(staged, temp)  # a rename when on one file system; otherwise a copy beside the target
    try:
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_others(media_root: Path, keep: set[str]) -> None:
    """--force: delete the replaced deployment's files that the backup does not have."""
    for folder, _, files in os.walk(media_root, topdown=False):
        for name in files:
            path = Path(folder) / name
            if path.relative_to(media_root).as_posix() not in keep:
                path.unlink(missing_ok=True)
        if folder != str(media_root):
            with contextlib.suppress(OSError):  # not empty
                Path(folder).rmdir()


def _install_index(settings: Settings, staged: StagedBackup, progress: Progress) -> dict[str, str]:
    """Put the backup's index snapshots in place of whatever was there, then make each model's index
    equal to the restored database (rebuilt where it is not)."""
    folder = settings.resolved_index_dir
    private_dir(folder)
    for old in folder.glob("*.cfidx"):
        old.unlink()
    for path in staged.index:
        shutil.move(path, folder / path.name)
    db = _open(settings.database_url)
    outcome: dict[str, str] = {}
    try:
        with db.engine.connect() as conn:
            models = conn.execute(text("SELECT key, dim FROM embedding_models ORDER BY id")).all()
        tick = progress("checking the index", len(models), "model")
        if models:
            from childface.services.gallery import Gallery  # late: loads faiss and torch
        for key, dim in models:
            gallery = Gallery(db=db, settings=settings, model_key=key, dim=int(dim))
            # no usable snapshot: start() rebuilt from the database already
            outcome[key] = "snapshot" if gallery.start().startswith("loaded") else "rebuilt"
            if outcome[key] == "snapshot" and not gallery.check().clean:
                gallery.rebuild()
                outcome[key] = "rebuilt"
            gallery.save()
            tick(1)
    finally:
        db.dispose()
    return outcome
