"""`childface backup` and `childface restore` as an operator runs them (installed CLI, subprocess).

The round trip runs on SQLite (the services' tests cover both databases in depth);
PostgreSQL without its client tools is refused, with the target left empty.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

from childface.config import Settings
from childface.db import Actor, Database
from childface.db.models import Image, ImageSource
from childface.services.backup import create_backup
from childface.services.backup_restore import target_state
from childface.services.media import MediaStore
from conftest import RUN_ID, PostgresServer

CHILDFACE = str(Path(sys.executable).with_name("childface"))
ACTOR = Actor("system", "cli-test")
PASSPHRASE = "a long backup passphrase"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([CHILDFACE, *args], env=env, capture_output=True, text=True, timeout=180)


def deployment_env(url: str, folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(CHILDFACE_DATABASE_URL=url, CHILDFACE_MEDIA_DIR=str(folder / "media"),
               CHILDFACE_INDEX_DIR=str(folder / "index"), CHILDFACE_DEVICE="cpu", **extra)
    return env


def add_photos(url: str, media_dir: Path, n: int) -> list[str]:
    """`n` photo rows, each with its file."""
    db, media, paths = Database(url), MediaStore(media_dir), []
    for _ in range(n):
        sha, relative = media.put(b"\xff\xd8\xff" + secrets.token_bytes(500))
        with db.unit_of_work(ACTOR) as uow:
            uow.session.add(Image(sha256=sha, path=relative, width=10, height=10, source=ImageSource.api,
                                  uploaded_by="cli-test"))
            uow.audit("image.added", target_type="image", target_id=sha[:16])
        paths.append(relative)
    db.dispose()
    return paths


def test_backup_and_restore_commands_round_trip_and_refuse_what_they_must(
    sqlite_template: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copyfile(sqlite_template, source / "childface.db")
    url = f"sqlite:///{source / 'childface.db'}"
    photos = add_photos(url, source / "media", 3)
    out = tmp_path / "backups"
    out.mkdir()
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")

    refused = run_cli("backup", str(out), env=deployment_env(url, source))
    assert refused.returncode == 2 and "backups are encrypted" in refused.stderr, refused.stderr
    assert list(out.iterdir()) == []

    made = run_cli("backup", str(out), "--json",
                   env=deployment_env(url, source, CHILDFACE_BACKUP_PASSPHRASE=PASSPHRASE))
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    backup = Path(summary["path"])
    assert backup.parent == out and backup.suffix == ".cfbak" and summary["encrypted"] is True
    assert summary["photos"] == 3 and summary["files"] == 6 and summary["bytes"] == backup.stat().st_size
    assert summary["seconds"] > 0 and stat.S_IMODE(backup.stat().st_mode) == 0o600

    checked = run_cli("restore", str(backup), "--check", "--passphrase-file", str(passphrase_file),
                      env=deployment_env(url, source))
    assert checked.returncode == 0 and "every sum checked" in checked.stdout, checked.stderr

    target = tmp_path / "target"
    target_env = deployment_env(f"sqlite:///{target / 'childface.db'}", target)
    refused = run_cli("restore", str(backup), env=target_env)  # no passphrase, no terminal to ask at
    assert refused.returncode == 1 and "this backup is encrypted" in refused.stderr, refused.stderr
    assert not (target / "media").exists() or not any((target / "media").rglob("*.*"))

    restored = run_cli("restore", str(backup), "--json", "--passphrase-file", str(passphrase_file),
                       env=target_env)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["photos"] == 3
    installed = sorted(p.relative_to(target / "media").as_posix() for p in (target / "media").rglob("*.*"))
    assert installed == sorted(photos)
    again = run_cli("restore", str(backup), "--passphrase-file", str(passphrase_file), env=target_env)
    assert again.returncode == 1 and "not empty" in again.stderr and "--force" in again.stderr, again.stderr

    plain = run_cli("backup", str(out / "plain.cfbak"), "--no-encrypt", env=deployment_env(url, source))
    assert plain.returncode == 0 and "NOT encrypted" in plain.stdout, plain.stderr
    assert (out / "plain.cfbak").read_bytes()[:10] == b"CFBACKUP\x01\x00"
    both = run_cli("backup", str(out / "x.cfbak"), "--no-encrypt", "--passphrase-file", str(passphrase_file),
                   env=deployment_env(url, source))
    assert both.returncode == 2 and not (out / "x.cfbak").exists()


def test_postgresql_without_its_client_tools_is_refused_and_nothing_changes(
    postgres_server: PostgresServer, postgres_template: str, tmp_path: Path
) -> None:
    names = [f"childface_test_{RUN_ID}_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    source = postgres_server.create(names[0], template=postgres_template)
    target = postgres_server.create(names[1])
    add_photos(source, tmp_path / "source" / "media", 1)
    database = Database(source)
    settings = Settings(_env_file=None, database_url=source, media_dir=tmp_path / "source" / "media")
    backup = create_backup(settings, database, tmp_path / "b.cfbak", passphrase=None).path
    database.dispose()
    empty_path = tmp_path / "bin"  # PATH without pg_dump, pg_restore, psql
    empty_path.mkdir()

    dump = run_cli("backup", str(tmp_path / "c.cfbak"), "--no-encrypt",
                   env=deployment_env(source, tmp_path / "source", PATH=str(empty_path)))
    assert dump.returncode == 1 and "pg_dump was not found" in dump.stderr, dump.stderr
    assert not (tmp_path / "c.cfbak").exists()
    restore = run_cli("restore", str(backup),
                      env=deployment_env(target, tmp_path / "target", PATH=str(empty_path)))
    assert restore.returncode == 1 and "pg_restore was not found" in restore.stderr, restore.stderr
    settings = Settings(_env_file=None, database_url=target, media_dir=tmp_path / "target" / "media")
    assert target_state(settings).empty and not (tmp_path / "target" / "media").exists()
    for name in names:
        postgres_server.drop(name)
