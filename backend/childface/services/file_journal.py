"""Durable file bookkeeping for the media store: no photo file outlives its rows, none is lost to a crash.

Two kinds of `file_deletions` entries:

- `removed`: a transaction deleted the last `images` row of a file. The entry is
  written in that same transaction, so a crash after the commit leaves it, and
  the sweep deletes the file later. Every deletion of image rows journals,
  whatever code path does it: `journal_deletions` is called explicitly, and a
  session hook journals any image row deleted without it (ORM or bulk delete).
- `pending_write`: a writer is about to store a file that a later transaction
  will refer to. `pending_writes` commits the entry (owner "host:pid") BEFORE
  the file is written and drops it after the writer's own transaction ended,
  deleting the file if no row took it. A writer that dies in between leaves the
  entry: the sweep deletes its file once no row refers to it and the writer is
  known dead (same host) or the entry is older than the grace period.

The sweep decides one entry at a time, under a lock on the photo's sha256
(PostgreSQL advisory lock; SQLite serialises writers anyway), reading the live
writers of that photo before its rows: a writer announces under the same lock
and drops its entry only after committing its row, so either its entry or its
row is seen, and a live writer's file is never deleted. It runs right after
deleting commits, at start-up and periodically (DESIGN.md invariant 3).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import ORMExecuteState, Session

from childface.db.models import FileDeletion, Image
from childface.db.session import Database
from childface.services.media import MediaStore
from childface.services.owners import current_owner, owner_alive

log = logging.getLogger(__name__)

REMOVED = "removed"
PENDING_WRITE = "pending_write"
#: a pending write older than this is abandoned even when its writer cannot be checked (Settings default)
PENDING_WRITE_GRACE_S = 3600.0
#: journal entries read per sweep query
_SWEEP_CHUNK = 500
#: session.info key: files this transaction journaled already
_JOURNALED = "childface.journaled_files"

# this process's pending writes whose writer is still at work: never swept
_in_flight: set[int] = set()
_in_flight_guard = threading.Lock()


# ---- removed files ------------------------------------------------------------------------------------


def journal_deletions(session: Session, files: Iterable[tuple[str, str]]) -> None:
    """Inside the transaction that removes image rows: remember their (sha256, relative path) files."""
    journaled = session.info.setdefault(_JOURNALED, set())
    fresh = sorted(set(files) - journaled)
    journaled.update(fresh)
    session.add_all(FileDeletion(sha256=sha, path=path, reason=REMOVED) for sha, path in fresh)


@event.listens_for(Session, "do_orm_execute")
def _journal_bulk_image_delete(state: ORMExecuteState) -> None:
    statement = state.statement
    if not state.is_delete or getattr(statement.table, "name", None) != Image.__tablename__:  # type: ignore[attr-defined]
        return
    query = select(Image.sha256, Image.path)
    if statement.whereclause is not None:  # type: ignore[attr-defined]
        query = query.where(statement.whereclause)  # type: ignore[attr-defined]
    journal_deletions(state.session, [(sha, path) for sha, path in state.session.execute(query)])


@event.listens_for(Session, "before_flush")
def _journal_orm_image_delete(session: Session, _context: object, _instances: object) -> None:
    gone = [(obj.sha256, obj.path) for obj in session.deleted if isinstance(obj, Image)]
    if gone:
        journal_deletions(session, gone)


@event.listens_for(Session, "after_rollback")
@event.listens_for(Session, "after_commit")
def _forget_journaled(session: Session) -> None:
    session.info.pop(_JOURNALED, None)


# ---- pending writes -----------------------------------------------------------------------------------


@contextmanager
def pending_writes(db: Database, media: MediaStore, files: Iterable[tuple[str, str]]) -> Iterator[None]:
    """Announce (sha256, relative path) files before writing them; wrap the writes and the commit.

    On leaving (committed or not) the entries go and each file that no row took
    is deleted. Hold `media.hold(sha)` around this block.
    """
    wanted = sorted(set(files))
    ids: list[int] = []
    try:
        with db.transaction() as session:
            for sha in sorted({sha for sha, _ in wanted}):
                _lock_photo(session, sha)
            entries = [
                FileDeletion(sha256=sha, path=path, reason=PENDING_WRITE, owner=current_owner())
                for sha, path in wanted
            ]
            session.add_all(entries)
            session.flush()
            ids = [entry.id for entry in entries]
            # marked before the commit: a sweep in this process must never see them unmarked
            with _in_flight_guard:
                _in_flight.update(ids)
    except BaseException:
        with _in_flight_guard:
            _in_flight.difference_update(ids)
        raise
    try:
        yield
    finally:
        with _in_flight_guard:
            _in_flight.difference_update(ids)
        try:
            for entry_id, (sha, path) in zip(ids, wanted, strict=True):
                _settle(db, media, entry_id, sha, path)
        except Exception:  # noqa: BLE001 - the writer's outcome stands; the periodic sweep finishes this
            log.warning("could not settle pending media writes %s; the sweep will", ids, exc_info=True)


def writer_alive(
    entry_id: int, owner: str | None, requested_at: datetime, grace_s: float = PENDING_WRITE_GRACE_S
) -> bool:
    """Whether the writer of pending write `entry_id` may still be at work (its file must stay)."""
    if owner == current_owner():
        with _in_flight_guard:
            return entry_id in _in_flight  # exact for this process (and a reused pid's old entries)
    if (datetime.now(UTC) - requested_at).total_seconds() >= grace_s:
        return False
    alive = owner_alive(owner, requested_at)
    return True if alive is None else alive


# ---- the sweep ----------------------------------------------------------------------------------------


def _lock_photo(session: Session, sha256: str) -> None:
    """Serialise announcing, and deciding about, one photo's file across processes (this transaction)."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(sha256.encode()) - 2**31  # fits the advisory lock's bigint
        session.execute(select(func.pg_advisory_xact_lock(key)))


def _settle(db: Database, media: MediaStore, entry_id: int, sha256: str, path: str,
            grace_s: float = PENDING_WRITE_GRACE_S) -> bool:
    """Drop one entry and delete its file unless a row or a live writer needs it; True if a file went."""
    with media.hold(sha256), db.transaction() as session:
        _lock_photo(session, sha256)
        if session.execute(delete(FileDeletion).where(FileDeletion.id == entry_id)).rowcount == 0:
            return False  # another sweeper settled it
        # writers first, rows second: a writer that commits in between is seen by the second read
        writers = session.execute(
            select(FileDeletion.id, FileDeletion.owner, FileDeletion.requested_at).where(
                FileDeletion.sha256 == sha256, FileDeletion.reason == PENDING_WRITE
            )
        ).all()
        if any(writer_alive(*writer, grace_s) for writer in writers):
            return False
        if session.scalar(select(Image.id).where(Image.sha256 == sha256).limit(1)) is not None:
            return False
        return media.delete(path)


def sweep(
    *,
    db: Database,
    media: MediaStore,
    shas: Iterable[str] | None = None,
    pending_grace_s: float = PENDING_WRITE_GRACE_S,
) -> int:
    """Settle journaled files: delete those no row and no live writer needs; returns how many were deleted.

    `shas` limits the sweep to those photos (the ones a commit just journaled).
    Pending writes of live writers stay (see `pending_writes`).
    """
    wanted = None if shas is None else sorted(set(shas))
    if wanted is not None and not wanted:
        return 0
    deleted, after = 0, 0
    while True:
        query = (
            select(FileDeletion.id, FileDeletion.sha256, FileDeletion.path, FileDeletion.reason,
                   FileDeletion.owner, FileDeletion.requested_at)
            .where(FileDeletion.id > after)
            .order_by(FileDeletion.id)
            .limit(_SWEEP_CHUNK)
        )
        if wanted is not None:
            query = query.where(FileDeletion.sha256.in_(wanted))
        with db.session() as session:
            entries = session.execute(query).all()
        for entry in entries:
            if entry.reason == PENDING_WRITE and writer_alive(
                entry.id, entry.owner, entry.requested_at, pending_grace_s
            ):
                continue
            deleted += _settle(db, media, entry.id, entry.sha256, entry.path, pending_grace_s)
        if len(entries) < _SWEEP_CHUNK:
            return deleted
        after = entries[-1].id


def unsettled(db: Database, *, pending_grace_s: float = PENDING_WRITE_GRACE_S,
              removed_older_than_s: float = 0.0) -> list[FileDeletion]:
    """Entries a sweep would settle now: removed files (older than the given age) and abandoned writes."""
    now = datetime.now(UTC)
    with db.session() as session:
        entries = list(session.scalars(select(FileDeletion).order_by(FileDeletion.id)))
    return [
        e for e in entries
        if (e.reason == PENDING_WRITE and not writer_alive(e.id, e.owner, e.requested_at, pending_grace_s))
        or (e.reason != PENDING_WRITE and (now - e.requested_at).total_seconds() >= removed_older_than_s)
    ]


def pending_count(db: Database) -> int:
    """Journal entries not settled yet (a crash left them, a sweep is under way, or a write is)."""
    with db.session() as session:
        return int(session.scalar(select(func.count(FileDeletion.id))) or 0)
