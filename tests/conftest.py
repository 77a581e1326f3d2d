"""Shared fixtures: a migrated database on each back end (SQLite file and real PostgreSQL).

Every test that takes `database` runs twice, once per back end. PostgreSQL is
the server on 127.0.0.1:5432 (trust auth; `make test` starts it when it is
down). Each test run creates its own template database, migrated once, and
each test gets a fresh copy of it (CREATE DATABASE ... TEMPLATE), all dropped
at the end.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from childface.config import Settings
from childface.db import Database
from childface.db.migrate import upgrade

# Before torch or faiss load (their OpenMP runtime reads it once; nothing above loads them): threads
# that finish a parallel region sleep instead of spinning, as the CLI and the server set it. The two
# test workers (pyproject's addopts) and the servers and CLIs they start share the cores: spinning
# threads would fight over them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Test-only knob: where the PostgreSQL server for the suite is (the package reads no environment).
PG_SERVER_URL = os.environ.get(
    "CHILDFACE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")
RUN_ID = uuid.uuid4().hex[:8]


class PostgresServer:
    """Creates and drops throw-away databases on the test server."""

    def __init__(self, server_url: str) -> None:
        self.server_url = make_url(server_url)
        self.admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    def url_for(self, name: str) -> str:
        return self.server_url.set(database=name).render_as_string(hide_password=False)

    def create(self, name: str, template: str | None = None) -> str:
        clause = f' TEMPLATE "{template}"' if template else ""
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        self.created.append(name)
        return self.url_for(name)

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in list(reversed(self.created)):
            self.drop(name)
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(PG_SERVER_URL)
    try:
        with server.admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - turn any driver error into one clear failure
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_SERVER_URL} ({exc}); "
            "`make test` starts it — the suite runs every DB test on both back ends"
        )
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> str:
    name = f"childface_test_{RUN_ID}_template"
    url = postgres_server.create(name)
    database = Database(url)
    upgrade(database)
    database.dispose()
    return name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    database = Database(f"sqlite:///{path}")
    upgrade(database)
    database.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
) -> Iterator[str]:
    """URL of a fresh, migrated database on one back end."""
    if request.param == "sqlite":
        path = tmp_path / "childface.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    template: str = request.getfixturevalue("postgres_template")
    name = f"childface_test_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    url = server.create(name, template=template)
    yield url
    server.drop(name)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own database, media folder and index folder, on the CPU."""
    return Settings(
        _env_file=None,
        database_url=db_url,
        media_dir=tmp_path / "media",
        index_dir=tmp_path / "index",
        device="cpu",
    )
