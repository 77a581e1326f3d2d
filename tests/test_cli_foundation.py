"""The foundation commands, run as a user runs them: the installed `childface` in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from childface.db.models import AuditEvent

CHILDFACE = str(Path(sys.executable).with_name("childface"))


def run_cli(*args: str, env: dict[str, str], input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CHILDFACE, *args], env=env, input=input_text, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(CHILDFACE_DATABASE_URL=db_url, CHILDFACE_MEDIA_DIR=str(tmp_path / "media"),
               CHILDFACE_DEVICE="cpu")
    return env


def test_migrate_user_and_api_key(cli_env: dict[str, str]) -> None:
    assert run_cli("migrate", env=cli_env).returncode == 0
    created = run_cli("create-user", "--username", "maria", "--role", "admin", "--password", "s3cret-pass",
                      env=cli_env)
    assert created.returncode == 0, created.stderr
    assert "maria" in created.stdout
    again = run_cli("create-user", "--username", "maria", "--password", "s3cret-pass", env=cli_env)
    assert again.returncode != 0 and "already exists" in again.stderr

    key = run_cli("create-api-key", "--name", "door", "--scopes", "recognize,enroll", "--json", env=cli_env)
    assert key.returncode == 0, key.stderr
    payload = json.loads(key.stdout)
    assert payload["key"].startswith("cfk_") and payload["scopes"] == ["enroll", "recognize"]
    bad = run_cli("create-api-key", "--name", "x", "--scopes", "everything", env=cli_env)
    assert bad.returncode != 0 and "scopes" in bad.stderr


def test_unreachable_database_is_a_clear_error(cli_env: dict[str, str]) -> None:
    cli_env["CHILDFACE_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    result = run_cli("migrate", env=cli_env)
    assert result.returncode == 2
    assert "cannot reach the database" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_media_folder_is_a_clear_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cli_env["CHILDFACE_MEDIA_DIR"] = str(blocker / "media")
    result = run_cli("migrate", env=cli_env)
    assert result.returncode == 2
    assert "media folder" in result.stderr and "not writable" in result.stderr


def test_commands_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env["CHILDFACE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    result = run_cli("create-user", "--username", "x", "--password", "long-enough", env=env)
    assert result.returncode == 2
    assert "the database is empty: run `childface migrate`" in result.stderr, result.stderr


def test_an_older_schema_is_named_for_people(tmp_path: Path) -> None:
    from childface.db import Database
    from childface.db.migrate import upgrade

    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(database, "0001")
    database.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env["CHILDFACE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'old.db'}"
    result = run_cli("reset-password", "admin", env=env)
    assert result.returncode == 2
    assert "the database schema is older than this version: run `childface migrate`" in result.stderr
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 1
    # read by people: indented lines, no Python dicts
    assert "problems:\n  - the database schema is older than this version" in doctor.stdout
    assert "{" not in doctor.stdout and "reachable: yes" in doctor.stdout


def test_reset_password_prints_a_one_time_password(cli_env: dict[str, str], db_url: str) -> None:
    from childface.config import Settings
    from childface.db import Database
    from childface.services import accounts
    from childface.services.login_throttle import ThrottlePolicy

    run_cli("migrate", env=cli_env)
    run_cli("create-user", "--username", "maria", "--role", "admin", "--password", "s3cret-pass", env=cli_env)
    result = run_cli("reset-password", "maria", env=cli_env)
    assert result.returncode == 0, result.stderr
    one_time = result.stdout.strip().rsplit(" ", 1)[-1]
    assert "new password must be chosen" in result.stderr

    database = Database(db_url)
    try:
        _, user = accounts.login(db=database, username="maria", password=one_time, ttl=timedelta(minutes=5),
                                 client_address="test", policy=ThrottlePolicy.from_settings(Settings()))
        assert user.must_change_password is True
        with database.session() as session:
            event = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "user.password_reset")
            ).one()
        assert event.actor == "system:cli" and one_time not in str(event.after)
    finally:
        database.dispose()
    unknown = run_cli("reset-password", "nobody", env=cli_env)
    assert unknown.returncode == 2 and "no staff account named 'nobody'" in unknown.stderr


def _listening() -> socket.socket:
    """A socket that holds a loopback port, as another program would."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_names_a_taken_port_and_the_setting_that_changes_it(cli_env: dict[str, str]) -> None:
    run_cli("migrate", env=cli_env)
    with _listening() as taken:
        port = taken.getsockname()[1]
        api = run_cli("serve", "--port", str(port), env=cli_env)
        assert api.returncode == 2, api.stderr
        assert f"port {port} on 127.0.0.1 is already in use" in api.stderr
        assert "--port or CHILDFACE_API_PORT" in api.stderr and "Traceback" not in api.stderr

        free = str(_free_port())
        admin = run_cli("serve", "--admin", "--port", free, "--admin-port", str(port), env=cli_env)
        assert admin.returncode == 2, admin.stderr
        assert f"cannot start the admin page: port {port}" in admin.stderr
        assert "--admin-port or CHILDFACE_ADMIN_PORT" in admin.stderr
    # nothing started and nothing changed: not even the first-start account
    assert "created staff account" not in api.stderr + admin.stderr


def test_doctor_reports_versions_database_and_weights(cli_env: dict[str, str]) -> None:
    run_cli("migrate", env=cli_env)
    result = run_cli("doctor", "--json", env=cli_env)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["problems"]
    assert report["database"]["reachable"] is True
    assert report["device"] == "cpu"
    assert "found" in report["weights"]["detector"] and "found" in report["weights"]["embedder"]
