"""The data folder is private: database, photos, index and scratch folders readable by their owner only.

The SQLite files are what this is about (PostgreSQL keeps its own files), so the database here is
a SQLite file in a fresh folder; the media, index and scratch folders are the same on either back end.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from childface.config import Settings
from childface.db.migrate import upgrade
from childface.db.session import Database
from childface.services.runtime import Runtime

CHILDFACE = str(Path(sys.executable).with_name("childface"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual umask (0o022): everything created would be world-readable unless made private."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _settings(data: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite:///{data / 'childface.db'}",
        media_dir=data / "media",
        index_dir=data / "index",
        device="cpu",
    )


def test_fresh_data_folder_is_private_after_start(tmp_path: Path, pipeline, loose_umask) -> None:  # noqa: ANN001
    data = tmp_path / "data"
    settings = _settings(data)
    database = Database(settings.database_url)
    upgrade(database)
    runtime = Runtime(settings, db=database, pipeline=pipeline)
    try:
        runtime.start(autosave=False)
        _sha, relative = runtime.media.put(b"\xff\xd8\xff\xe0 not really a photo")
        with database.session() as session:  # a WAL reader keeps -wal and -shm open
            session.connection().exec_driver_sql("SELECT count(*) FROM users").scalar()
            files = [data / name for name in ("childface.db", "childface.db-wal", "childface.db-shm")]
            assert all(path.exists() for path in files)
            assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}
        folders = [data, data / "media", data / "index", data / "tmp"]
        assert {str(f): _mode(f) for f in folders} == {str(f): 0o700 for f in folders}
        assert _mode(runtime.media.absolute(relative)) == 0o600
    finally:
        runtime.close()
        database.dispose()


def test_an_existing_deployment_is_tightened_on_start(tmp_path: Path, pipeline, loose_umask) -> None:  # noqa: ANN001
    data = tmp_path / "data"
    settings = _settings(data)
    upgrade(Database(settings.database_url))
    for folder in (data, data / "media", data / "index"):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)
    for name in ("childface.db", "childface.db-wal"):
        (data / name).touch()
        (data / name).chmod(0o644)
    database = Database(settings.database_url)
    runtime = Runtime(settings, db=database, pipeline=pipeline)
    try:
        runtime.start(autosave=False)
        assert _mode(data / "childface.db") == _mode(data / "childface.db-wal") == 0o600
        assert _mode(data) == _mode(data / "media") == _mode(data / "index") == 0o700
    finally:
        runtime.close()
        database.dispose()


def test_cli_creates_everything_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(
        CHILDFACE_DATABASE_URL=f"sqlite:///{data / 'childface.db'}", CHILDFACE_MEDIA_DIR=str(data / "media")
    )
    # the shell's umask would make new files world-readable: the CLI must not inherit it
    done = subprocess.run(
        ["sh", "-c", f"umask 022 && exec {CHILDFACE} migrate"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert _mode(data) == _mode(data / "media") == 0o700
    assert _mode(data / "childface.db") == 0o600
    others = [p for p in data.rglob("*") if _mode(p) & 0o077]
    assert others == []
