"""`childface verify`, `gc-media` and `recover`, run as an operator runs them (installed CLI, subprocess)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from childface.db import Actor, Database
from childface.db.models import Image, ImageSource
from childface.services.media import MediaStore

CHILDFACE = str(Path(sys.executable).with_name("childface"))
ACTOR = Actor("system", "cli-test")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([CHILDFACE, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(CHILDFACE_DATABASE_URL=db_url, CHILDFACE_MEDIA_DIR=str(tmp_path / "media"),
               CHILDFACE_INDEX_DIR=str(tmp_path / "index"), CHILDFACE_DEVICE="cpu")
    return env


def add_photo(db: Database, media: MediaStore, *, with_file: bool = True, with_row: bool = True) -> str:
    data = b"\xff\xd8\xff" + secrets.token_bytes(64)
    sha, relative = media.locate(data)
    if with_file:
        media.put(data)
    if with_row:
        with db.unit_of_work(ACTOR) as uow:
            uow.session.add(Image(sha256=sha, path=relative, width=10, height=10, source=ImageSource.api,
                                  uploaded_by="test"))
            uow.audit("image.add", target_type="image", target_id=sha[:16])
    return relative


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_verify_and_gc_media_find_and_fix_what_does_not_match(
    database: Database, cli_env: dict[str, str], tmp_path: Path
) -> None:
    media = MediaStore(tmp_path / "media")
    add_photo(database, media)
    clean = run_cli("verify", "--json", env=cli_env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["clean"] is True

    orphan = add_photo(database, media, with_row=False)
    age(media.absolute(orphan), 2 * 3600)
    fresh_orphan = add_photo(database, media, with_row=False)  # may be a write under way: left alone
    missing = add_photo(database, media, with_file=False)
    tampered = add_photo(database, media)
    media.absolute(tampered).write_bytes(b"other bytes")
    temp = media.absolute(orphan).parent / ".cf-00000000-1-partial.tmp"
    temp.write_bytes(b"half")
    age(temp, 3600)

    found = run_cli("verify", "--json", env=cli_env)
    assert found.returncode == 1, found.stdout + found.stderr
    report = json.loads(found.stdout)
    assert report["findings"] == {"files_without_rows": 2, "rows_without_files": 1, "content_mismatches": 1,
                                  "temp_files": 1}
    assert sorted(report["files_without_rows"]) == sorted([orphan, fresh_orphan])
    assert report["rows_without_files"][0]["path"] == missing
    assert report["content_mismatches"] == [tampered]
    human = run_cli("verify", env=cli_env)
    assert human.returncode == 1 and "rows whose file is missing" in human.stdout

    dry = run_cli("gc-media", "--json", env=cli_env)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["files_without_rows"] == [orphan] and planned["left_alone_too_young"] == [fresh_orphan]
    assert planned["deleted"] == 0 and media.absolute(orphan).exists()
    assert planned["rows_without_files"][0]["path"] == missing

    applied = run_cli("gc-media", "--apply", env=cli_env)
    assert applied.returncode == 0, applied.stderr
    assert "deleted 1 unreferenced file(s)" in applied.stdout and "cannot be repaired here" in applied.stdout
    assert not media.absolute(orphan).exists() and media.absolute(fresh_orphan).exists()

    doctor = run_cli("doctor", "--json", env=cli_env)
    assert "1 temporary file(s) would be removed" in json.loads(doctor.stdout)["recovery"], doctor.stderr
    recovered = run_cli("recover", "--json", env=cli_env)
    assert recovered.returncode == 0, recovered.stderr
    assert json.loads(recovered.stdout)["temp_files"] == [str(temp)] and not temp.exists()


def test_verify_on_a_database_that_is_not_migrated_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(CHILDFACE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}",
               CHILDFACE_MEDIA_DIR=str(tmp_path / "media"))
    result = run_cli("verify", env=env)
    assert result.returncode == 2 and "childface migrate" in result.stderr
