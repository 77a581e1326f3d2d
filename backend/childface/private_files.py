"""Keep the data private: only the account that runs childface may read it.

The database, photos, index snapshots and import scratch files hold children's
biometric data. Folders are made 0700 and the SQLite files 0600, and folders
and files from earlier versions are tightened when a process starts. The CLI
entry points also set the process umask to 0o077, so whatever else they create
is private too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def restrict_umask() -> None:
    """Files and folders this process creates from now on are readable by its own account only."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> None:
    """Create `path` (and its missing parents) as 0700, or tighten it to 0700 when it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(path, DIR_MODE)


def private_sqlite_file(path: Path) -> None:
    """Create an empty database file 0600 before SQLite does (its -wal and -shm copy the mode),
    or tighten an existing one and its -wal and -shm."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if candidate.exists():
            _tighten(candidate, FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    """chmod to `mode` when group or others have any access; a path of another owner is only reported."""
    try:
        current = path.stat().st_mode & 0o777
        if current & ~mode:
            os.chmod(path, mode)
    except OSError as exc:
        log.warning("could not make %s private (mode %o): %s", path, mode, exc.strerror or exc)
