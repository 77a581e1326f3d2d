"""The one place that makes engines and sessions, and the unit of work.

`Database.unit_of_work(actor)` runs a service's change in one transaction and
insists that it appends exactly one audit event in that same transaction
(DESIGN.md invariant 2): a change without its audit row never commits, and a
failed change leaves no audit row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from childface.db.models import AuditEvent, AuditEventChild
from childface.private_files import private_dir, private_sqlite_file

log = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS = 30_000
#: how long `scrub_freed_pages` keeps retrying a SQLite checkpoint that readers hold up
_CHECKPOINT_PATIENCE_S = 5.0


class DatabaseError(RuntimeError):
    """The database cannot be reached or used; the message says why, for a person."""


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a staff user, an API key, or the system itself (CLI, start-up)."""

    kind: str  # "user" | "api_key" | "system"
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


SYSTEM = Actor("system", "childface")


class UnitOfWork:
    """A transaction that must carry exactly one audit event."""

    def __init__(self, session: Session, actor: Actor) -> None:
        self.session = session
        self.actor = actor
        self.event: AuditEvent | None = None

    def audit(
        self,
        action: str,
        *,
        target_type: str,
        target_id: object = None,
        child_id: int | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        face_ids: list[int] | None = None,
        child_ids: Iterable[int] = (),
    ) -> AuditEvent:
        """Append the unit's one event; `child_ids` adds children it concerns beyond those it names.

        The event is recorded under every child it concerns (`audit_event_children`):
        `child_id`, a child target, the previous owner in `before["child_id"]`, the
        children in `after["child_ids"]`, and `child_ids`.
        """
        if self.event is not None:
            raise RuntimeError(f"unit of work already audited as {self.event.action!r}")
        self.event = AuditEvent(
            actor=str(self.actor),
            action=action,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            child_id=child_id,
            before=before,
            after=after,
            face_ids=sorted(set(face_ids)) if face_ids else None,
        )
        self.session.add(self.event)
        self.session.flush()
        concerned = _concerned_children(child_ids, child_id, target_type, target_id, before, after)
        self.session.add_all(AuditEventChild(seq=self.event.seq, child_id=c) for c in sorted(concerned))
        return self.event


def _concerned_children(
    extra: Iterable[int],
    child_id: int | None,
    target_type: str,
    target_id: object,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> set[int]:
    concerned = {int(c) for c in extra}
    if child_id is not None:
        concerned.add(child_id)
    if target_type == "child" and target_id is not None and str(target_id).isdigit():
        concerned.add(int(str(target_id)))
    if before and isinstance(before.get("child_id"), int):
        concerned.add(before["child_id"])
    if after:
        concerned.update(c for c in after.get("child_ids") or () if isinstance(c, int))
    return concerned



def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can take
        # the write lock up front (BEGIN IMMEDIATE) instead of failing on upgrade.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # deleted rows are overwritten with zeros, not left in free space (erasure of a child)
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Engine + session factory for one database URL."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        sqlite_path = _sqlite_file(url)
        if sqlite_path is not None:
            # the database holds biometric data: its folder 0700, the file (and -wal, -shm) 0600
            try:
                private_dir(sqlite_path.parent)
            except OSError as exc:
                raise DatabaseError(f"cannot create the folder for {sqlite_path}: {exc}") from exc
            try:
                private_sqlite_file(sqlite_path)
            except OSError as exc:
                raise DatabaseError(f"cannot create the database file {sqlite_path}: {exc}") from exc
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        #: SQLite: an erasure's write-ahead-log checkpoint did not complete yet (readers held it off)
        self.scrub_pending = False
        try:
            # hide_parameters: a logged database error must not print the values (names, external ids)
            self.engine = create_engine(
                url, echo=echo, pool_pre_ping=not self.is_sqlite, hide_parameters=True
            )
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise DatabaseError(f"invalid database URL {make_url(url)!r}: {exc}") from exc
        if self.is_sqlite:
            _install_sqlite_pragmas(self.engine)
            writer_bind = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        else:
            writer_bind = self.engine
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(writer_bind, expire_on_commit=False)

    def check(self) -> None:
        """Raise DatabaseError with a readable reason if the database is unreachable."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            reason = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
            raise DatabaseError(
                f"cannot reach the database at {make_url(self.url)!r}: {reason.strip()}"
            ) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (no audit); rolled back at the end unless the caller commits."""
        with self._reader() as session:
            yield session

    @contextmanager
    def unit_of_work(self, actor: Actor) -> Iterator[UnitOfWork]:
        """One transaction for one identity change plus its audit event; commit on success."""
        with self._writer() as session:
            uow = UnitOfWork(session, actor)
            try:
                yield uow
                if uow.event is None:
                    raise RuntimeError("a unit of work must append its audit event before commit")
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction for bookkeeping that is not identity data (sessions, login counters)."""
        with self._writer() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def scrub_freed_pages(self, tables: Sequence[str]) -> bool:
        """After a commit that deleted personal data: leave its bytes in no database file that can be read.

        SQLite (`secure_delete` is on, so freed cells and pages are zeroed): checkpoint
        the write-ahead log into the database and truncate it, so no older page image
        survives in the `-wal` file; retried for a few seconds while readers hold old
        snapshots. PostgreSQL: a plain VACUUM of `tables` (autocommit, takes no lock
        that blocks reads or writes) so dead row versions become free space; the
        bytes stay in that free space until overwritten (VACUUM FULL rewrites a
        table). Returns whether it completed; logs a warning when it could not.
        """
        if self.is_sqlite:
            # until a checkpoint completes, housekeeping and the next start retry it (`scrub_pending`)
            self.scrub_pending = not self._checkpoint_truncate()
            return not self.scrub_pending
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                preparer = self.engine.dialect.identifier_preparer
                for table in tables:
                    conn.exec_driver_sql(f"VACUUM {preparer.quote(table)}")
        except SQLAlchemyError as exc:
            log.warning("VACUUM after erasure did not complete (%s); run VACUUM later", type(exc).__name__)
            return False
        return True

    def _checkpoint_truncate(self) -> bool:
        raw = self.engine.raw_connection()
        cursor = raw.cursor()
        try:
            # wait briefly per try instead of the 30 s busy timeout: readers usually finish at once
            cursor.execute("PRAGMA busy_timeout=200")
            deadline = time.monotonic() + _CHECKPOINT_PATIENCE_S
            while True:
                busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return True
                if time.monotonic() >= deadline:
                    log.warning(
                        "could not checkpoint the SQLite log after erasure: readers kept old pages open;"
                        " erased bytes stay in the -wal file until the next checkpoint"
                    )
                    return False
                time.sleep(0.05)
        finally:
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            cursor.close()
            raw.close()

    def dispose(self) -> None:
        self.engine.dispose()
