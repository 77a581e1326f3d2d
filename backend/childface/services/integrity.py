"""What `childface verify` checks, and `childface gc-media`: files, rows, index and leftovers agree.

A deployment is consistent when (DESIGN.md invariants 1 and 3):
- every photo file in the media folder has an `images` row, and every row its file;
- every photo file holds the bytes its sha256 name says;
- each embedding model's vector index, caught up, equals what a rebuild from the DB gives;
- no temporary file, import scratch folder, journal entry or `running` import is
  left by a dead process (what start-up recovery would clean: `services.recovery`).

Files a live writer announced (`file_journal.pending_writes`) are in flight, not
findings. `collect_garbage` deletes unreferenced photo files through the file
journal's sweep, so it never races a writer; rows without files cannot be
repaired here (the photo is gone: remove those faces, or re-enroll the photos).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TypeVar

from sqlalchemy import select

from childface.config import Settings
from childface.db.models import EmbeddingModel, FileDeletion, Image
from childface.db.session import Database
from childface.services import file_journal, recovery
from childface.services.media import MediaStore

T = TypeVar("T")
Progress = Callable[[Sequence[T]], Iterable[T]]

#: a journaled deletion younger than this may still be swept by the process that made it
REMOVED_SETTLE_S = 60.0
_PHOTO_NAME = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.[a-z0-9]+")
_HASH_CHUNK = 1 << 20
_ID_CHUNK = 500


def _no_progress(items: Sequence[T]) -> Iterable[T]:
    return items


@dataclass
class MediaScan:
    """The media folder against the `images` table."""

    photo_files: list[str] = field(default_factory=list)  # relative paths named like stored photos
    files_without_rows: list[str] = field(default_factory=list)  # photo-named files no row refers to
    unexpected_files: list[str] = field(default_factory=list)  # neither a photo name nor a temporary file
    rows_without_files: list[tuple[int, str]] = field(default_factory=list)  # (image id, path)
    in_flight: int = 0  # files a live writer announced: not judged


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def scan_media(
    db: Database, media: MediaStore, *, pending_grace_s: float = file_journal.PENDING_WRITE_GRACE_S
) -> MediaScan:
    """Compare the files under the media folder with the `images` rows (no hashing)."""
    scan = MediaScan()
    on_disk: list[str] = []
    for folder, _, names in os.walk(media.root):
        for name in names:
            if not _is_temp(name):
                on_disk.append((Path(folder).relative_to(media.root) / name).as_posix())
    with db.session() as session:
        rows = session.execute(select(Image.id, Image.path)).all()
        pending = session.execute(
            select(FileDeletion.id, FileDeletion.path, FileDeletion.owner, FileDeletion.requested_at).where(
                FileDeletion.reason == file_journal.PENDING_WRITE
            )
        ).all()
    live = {
        p.path for p in pending if file_journal.writer_alive(p.id, p.owner, p.requested_at, pending_grace_s)
    }
    referenced = {path for _, path in rows}
    for relative in sorted(on_disk):
        if not _PHOTO_NAME.fullmatch(relative) or not _named_right(relative):
            scan.unexpected_files.append(relative)
            continue
        scan.photo_files.append(relative)
        if relative in referenced:
            continue
        if relative in live:
            scan.in_flight += 1
        else:
            scan.files_without_rows.append(relative)
    present = set(on_disk)
    missing = [(image_id, path) for image_id, path in rows if path not in present]
    # a running server may have written or deleted meanwhile (the walk came first): look again at the few
    scan.files_without_rows = [r for r in scan.files_without_rows if media.absolute(r).exists()]
    if missing:
        ids = [i for i, _ in missing]
        still: set[int] = set()
        with db.session() as session:
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                still.update(session.scalars(select(Image.id).where(Image.id.in_(chunk))))
        missing = [(i, path) for i, path in missing if i in still and not media.absolute(path).exists()]
    scan.rows_without_files = sorted(missing)
    return scan


def _named_right(relative: str) -> bool:
    found = _PHOTO_NAME.fullmatch(relative)
    assert found is not None
    return found.group(3).startswith(found.group(1) + found.group(2))


def content_mismatches(
    media: MediaStore, photo_files: Sequence[str], progress: Progress = _no_progress
) -> list[str]:
    """Photo files whose bytes do not hash to their name (read in full: slow for large folders)."""
    bad: list[str] = []
    for relative in progress(photo_files):
        digest = hashlib.sha256()
        try:
            with media.absolute(relative).open("rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            continue  # deleted meanwhile (a sweep): not a content problem
        if PurePosixPath(relative).stem != digest.hexdigest():
            bad.append(relative)
    return bad


@dataclass
class IndexCheck:
    model_key: str
    loaded: str
    clean: bool
    summary: str


def check_indexes(settings: Settings, db: Database) -> list[IndexCheck]:
    """Each registered embedding model's index (snapshot + catch-up) against a rebuild from the DB."""
    with db.session() as session:
        models = session.execute(
            select(EmbeddingModel.key, EmbeddingModel.dim).order_by(EmbeddingModel.id)
        ).all()
    if not models:
        return []
    from childface.services.gallery import Gallery  # late: loads torch, which a media-only check skips

    checks = []
    for key, dim in models:
        gallery = Gallery(db=db, settings=settings, model_key=key, dim=dim)
        loaded = gallery.start()
        differences = gallery.check()
        checks.append(IndexCheck(key, loaded, differences.clean, differences.summary()))
    return checks


@dataclass
class VerifyReport:
    media: MediaScan
    content_mismatches: list[str]
    indexes: list[IndexCheck]
    leftovers: recovery.RecoveryReport

    @property
    def findings(self) -> dict[str, int]:
        """Count per kind of problem (zero counts left out)."""
        counts = {
            "files_without_rows": len(self.media.files_without_rows),
            "unexpected_files": len(self.media.unexpected_files),
            "rows_without_files": len(self.media.rows_without_files),
            "content_mismatches": len(self.content_mismatches),
            "indexes_differing": sum(not check.clean for check in self.indexes),
            "temp_files": len(self.leftovers.temp_files),
            "import_folders": len(self.leftovers.import_folders),
            "journal_entries": self.leftovers.journal_entries,
            "stuck_import_runs": len(self.leftovers.runs_failed),
        }
        return {kind: n for kind, n in counts.items() if n}

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, object]:
        return {
            "clean": self.clean,
            "findings": self.findings,
            "photo_files": len(self.media.photo_files),
            "in_flight_writes": self.media.in_flight,
            "files_without_rows": self.media.files_without_rows,
            "unexpected_files": self.media.unexpected_files,
            "rows_without_files": [{"image_id": i, "path": p} for i, p in self.media.rows_without_files],
            "content_mismatches": self.content_mismatches,
            "indexes": [check.__dict__ for check in self.indexes],
            "temp_files": self.leftovers.temp_files,
            "import_folders": self.leftovers.import_folders,
            "journal_entries": self.leftovers.journal_entries,
            "stuck_import_runs": self.leftovers.runs_failed,
        }


def verify(
    settings: Settings, db: Database, media: MediaStore, *, progress: Progress = _no_progress
) -> VerifyReport:
    """Check everything listed in the module docstring; changes nothing (except the index's memory)."""
    scan = scan_media(db, media, pending_grace_s=settings.pending_write_grace_s)
    mismatches = content_mismatches(media, scan.photo_files, progress)
    leftovers = recovery.recover(settings=settings, db=db, media=media, apply=False)
    leftovers.journal_entries = len(
        file_journal.unsettled(
            db, pending_grace_s=settings.pending_write_grace_s, removed_older_than_s=REMOVED_SETTLE_S
        )
    )
    return VerifyReport(scan, mismatches, check_indexes(settings, db), leftovers)


@dataclass
class GarbageReport:
    files_without_rows: list[str]
    too_young: list[str]  # unreferenced, but younger than the pending-write grace: left alone
    rows_without_files: list[tuple[int, str]]
    unexpected_files: list[str]
    deleted: int = 0
    applied: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "applied": self.applied,
            "files_without_rows": self.files_without_rows,
            "left_alone_too_young": self.too_young,
            "deleted": self.deleted,
            "rows_without_files": [{"image_id": i, "path": p} for i, p in self.rows_without_files],
            "unexpected_files": self.unexpected_files,
        }


def collect_garbage(settings: Settings, db: Database, media: MediaStore, *, apply: bool) -> GarbageReport:
    """Find photo files no row refers to (and rows without files); with `apply`, delete those files
    that are older than the pending-write grace, through the file journal's sweep."""
    scan = scan_media(db, media, pending_grace_s=settings.pending_write_grace_s)
    now = datetime.now(UTC)
    old, young = [], []
    for relative in scan.files_without_rows:
        try:
            age = now.timestamp() - media.absolute(relative).stat().st_mtime
        except FileNotFoundError:
            continue
        (old if age >= settings.pending_write_grace_s else young).append(relative)
    report = GarbageReport(old, young, scan.rows_without_files, scan.unexpected_files, applied=apply)
    if apply and old:
        files = [(PurePosixPath(relative).stem, relative) for relative in old]
        with db.transaction() as session:
            file_journal.journal_deletions(session, files)
        report.deleted = file_journal.sweep(
            db=db, media=media, shas=[sha for sha, _ in files], pending_grace_s=settings.pending_write_grace_s
        )
    return report
