"""The foundation commands, run as a user runs them: the installed `childface` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert result.returncode == 2 and "childface migrate" in result.stderr


def test_doctor_reports_versions_database_and_weights(cli_env: dict[str, str]) -> None:
    run_cli("migrate", env=cli_env)
    result = run_cli("doctor", "--json", env=cli_env)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["problems"]
    assert report["database"]["reachable"] is True
    assert report["device"] == "cpu"
    assert "found" in report["weights"]["detector"] and "found" in report["weights"]["embedder"]
