"""Start-up recovery and periodic housekeeping: finish or clean what a killed process left behind.

After a crash (kill -9, power loss) these can remain, and `recover` deals with
each (DESIGN.md invariant 3), touching only what a dead or long-silent process
owned, never a live one's work (`services.owners`):

- journaled media files not deleted yet, and files of abandoned pending writes
  (`file_journal.sweep`);
- partial temporary files (`.*.tmp`) under the media and index folders, whose
  writer is dead or which have not been written to for `TEMP_FILE_GRACE_S`;
- scratch folders of API imports under `<data>/tmp/imports/` (`new_import_folder`)
  whose process is dead or which are older than `IMPORT_FOLDER_GRACE_S`;
- import runs stuck at `running` whose process died (`importing.fail_interrupted_runs`).

`Runtime.start` runs it (and logs what it did), `childface recover` runs it by
hand, `childface doctor` and `childface verify` show what it would do. A
running server repeats the journal sweep and the interrupted-run check every
`housekeeping_interval_s` (`Housekeeper`), and purges removed faces kept past
`removed_faces_keep_days` (`removed_faces.purge_expired_removals`). When retention
is on, the Housekeeper also runs it once a day (`retention.run_if_due`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from childface.config import Settings
from childface.db.session import Database
from childface.services import file_journal, importing, removed_faces
from childface.services.media import MediaStore
from childface.services.owners import scratch_owner_alive, scratch_tag

log = logging.getLogger(__name__)

#: a temporary file nobody wrote to for this long is abandoned, whoever made it
TEMP_FILE_GRACE_S = 5 * 60.0
#: an import scratch folder this old is abandoned, whoever made it
IMPORT_FOLDER_GRACE_S = 24 * 3600.0


@dataclass
class RecoveryReport:
    """What recovery did (or, with `apply=False`, would do)."""

    files_swept: int = 0  # media files deleted: journaled deletions and abandoned writes
    journal_entries: int = 0  # journal entries that were due
    temp_files: list[str] = field(default_factory=list)
    import_folders: list[str] = field(default_factory=list)
    runs_failed: list[int] = field(default_factory=list)  # import runs marked failed (interrupted)
    applied: bool = True

    @property
    def anything(self) -> bool:
        return bool(self.journal_entries or self.temp_files or self.import_folders or self.runs_failed)

    def summary(self) -> str:
        if not self.anything:
            return "nothing to recover"
        verb = "" if self.applied else "would be "
        parts = [
            f"{self.journal_entries} journaled file(s) {verb}settled ({self.files_swept} deleted)",
            f"{len(self.temp_files)} temporary file(s) {verb}removed",
            f"{len(self.import_folders)} import folder(s) {verb}removed",
            f"{len(self.runs_failed)} interrupted import run(s) {verb}marked failed"
            + (f" ({', '.join(map(str, self.runs_failed))})" if self.runs_failed else ""),
        ]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "applied": self.applied,
            "journal_entries": self.journal_entries,
            "files_swept": self.files_swept,
            "temp_files": self.temp_files,
            "import_folders": self.import_folders,
            "runs_failed": self.runs_failed,
        }


def import_scratch_root(settings: Settings) -> Path:
    """Where API imports unpack their uploads: `<data folder>/tmp/imports`."""
    return settings.media_dir.parent / "tmp" / "imports"


def new_import_folder(settings: Settings) -> Path:
    """A private scratch folder for one import, named after this process (so recovery can tell)."""
    root = import_scratch_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=scratch_tag(), dir=root))


def _modified(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return None


def _abandoned(path: Path, grace_s: float, now: datetime) -> bool:
    modified = _modified(path)
    if modified is None:
        return False  # gone meanwhile
    if (now - modified).total_seconds() >= grace_s:
        return True
    return scratch_owner_alive(path.name, modified) is False


def leftover_temp_files(settings: Settings) -> list[Path]:
    """Partial `.*.tmp` files under the media and index folders that no live writer is writing."""
    now = datetime.now(UTC)
    found: list[Path] = []
    for root in dict.fromkeys((settings.media_dir, settings.resolved_index_dir)):
        for folder, _, names in os.walk(root):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    path = Path(folder) / name
                    if _abandoned(path, TEMP_FILE_GRACE_S, now):
                        found.append(path)
    return sorted(found)


def leftover_import_folders(settings: Settings) -> list[Path]:
    """Import scratch folders whose process is gone (or that are older than a day)."""
    root = import_scratch_root(settings)
    if not root.is_dir():
        return []
    now = datetime.now(UTC)
    return sorted(p for p in root.iterdir() if _abandoned(p, IMPORT_FOLDER_GRACE_S, now))


def recover(*, settings: Settings, db: Database, media: MediaStore, apply: bool = True) -> RecoveryReport:
    """Finish or clean what dead processes left (see the module docstring); `apply=False` only looks."""
    grace = settings.pending_write_grace_s
    report = RecoveryReport(applied=apply)
    report.journal_entries = len(file_journal.unsettled(db, pending_grace_s=grace))
    temp_files, folders = leftover_temp_files(settings), leftover_import_folders(settings)
    report.temp_files = [str(p) for p in temp_files]
    report.import_folders = [str(p) for p in folders]
    if not apply:
        report.runs_failed = interrupted_runs(db)
        return report
    report.files_swept = file_journal.sweep(db=db, media=media, pending_grace_s=grace)
    for path in temp_files:
        path.unlink(missing_ok=True)
    for path in folders:
        shutil.rmtree(path, ignore_errors=True)
    report.runs_failed = importing.fail_interrupted_runs(db, stale_after_s=importing.STALE_AFTER_S)
    if db.is_sqlite:
        # a process that died before its post-erasure checkpoint left erased pages in the -wal file
        db.scrub_freed_pages(())
    return report


def interrupted_runs(db: Database) -> list[int]:
    """Runs `fail_interrupted_runs` would mark failed now (the same rule, read only)."""
    return importing.interrupted_runs(db, stale_after_s=importing.STALE_AFTER_S)


class Housekeeper:
    """A background thread that sweeps the file journal and fails interrupted imports, periodically."""

    def __init__(self, *, settings: Settings, db: Database, media: MediaStore) -> None:
        self.settings, self.db, self.media = settings, db, media
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
        self._thread.start()

    def round(self) -> None:
        """One round: settle due journal entries, mark imports whose process died as failed, purge
        removed faces kept past their time, run retention when a day has passed."""
        started = time.perf_counter()
        deleted = file_journal.sweep(
            db=self.db, media=self.media, pending_grace_s=self.settings.pending_write_grace_s
        )
        failed = importing.fail_interrupted_runs(self.db, stale_after_s=importing.STALE_AFTER_S)
        # removed faces past `removed_faces_keep_days` (kept for undo) go for good, with unused photos
        removed_faces.purge_expired_removals(db=self.db, media=self.media, settings=self.settings)
        from childface.services.retention import run_if_due

        # retention, when on: once a day across every process on the database (services/retention.py)
        run_if_due(db=self.db, media=self.media, settings=self.settings)
        if self.db.scrub_pending:  # an erasure's checkpoint was held off by readers: try again
            self.db.scrub_freed_pages(())
        if deleted or failed:
            log.info("housekeeping: %d journaled file(s) deleted, interrupted import run(s) %s marked "
                     "failed (%.2f s)", deleted, failed or "none", time.perf_counter() - started)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.housekeeping_interval_s):
            try:
                self.round()
            except Exception:  # noqa: BLE001 - keep serving; the next round retries
                log.exception("housekeeping round failed")

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
