"""Durable deletion of media files: a journal written in the deleting transaction, swept after.

A photo file may only go once no `images` row refers to it, i.e. after the
commit that removed its last row. A process can die between that commit and
the unlink, so the transaction that removes image rows also appends their
files to `file_deletions` (`journal_deletions`). `sweep` then deletes each
journaled file unless a row took the same bytes back meanwhile, and removes
the entry; it runs right after such commits, at start-up and periodically, so
a crash at any point strands no file (DESIGN.md invariant 3).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from childface.db.models import FileDeletion, Image
from childface.db.session import Database
from childface.services.media import MediaStore

#: journal entries handled per sweep transaction
_SWEEP_CHUNK = 500


def journal_deletions(session: Session, files: Iterable[tuple[str, str]]) -> None:
    """Inside the transaction that removes image rows: remember their (sha256, relative path) files."""
    session.add_all(FileDeletion(sha256=sha, path=path) for sha, path in files)


def sweep(*, db: Database, media: MediaStore, shas: Iterable[str] | None = None) -> int:
    """Delete journaled files that no image row refers to; returns how many files were deleted.

    `shas` limits the sweep to those photos (the ones a commit just journaled).
    """
    wanted = None if shas is None else sorted(set(shas))
    deleted = 0
    while True:
        with db.session() as session:
            query = select(FileDeletion.id, FileDeletion.sha256, FileDeletion.path).order_by(FileDeletion.id)
            if wanted is not None:
                if not wanted:
                    return deleted
                query = query.where(FileDeletion.sha256.in_(wanted))
            entries = list(session.execute(query.limit(_SWEEP_CHUNK)))
        if not entries:
            return deleted
        for entry_id, sha, path in entries:
            with media.hold(sha):
                with db.session() as session:
                    referenced = session.scalar(select(Image.id).where(Image.sha256 == sha)) is not None
                if not referenced:
                    media.delete(path)
                    deleted += 1
                with db.transaction() as session:
                    session.execute(delete(FileDeletion).where(FileDeletion.id == entry_id))
        if len(entries) < _SWEEP_CHUNK:
            return deleted


def pending_count(db: Database) -> int:
    """Journal entries not swept yet (a crash left them, or a sweep is under way)."""
    from sqlalchemy import func

    with db.session() as session:
        return int(session.scalar(select(func.count(FileDeletion.id))) or 0)
