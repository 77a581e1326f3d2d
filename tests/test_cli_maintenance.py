"""`childface verify`, `gc-media` and `recover`, run as an operator runs them (installed CLI, subprocess)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from api.support import Photos, photos, pipeline, runtime  # noqa: F401 - real models, both databases
from childface.db import Actor, Database
from childface.db.models import AuditEvent, Child, ChildStatus, Embedding, Image, ImageSource
from childface.services.children import create_child, set_child_status
from childface.services.enrollment import Photo, enroll_photos
from childface.services.media import MediaStore
from childface.services.runtime import Runtime

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
    assert json.loads(doctor.stdout)["integrity"] == (
        "0 corrupt embedding(s), 1 missing photo(s): run childface verify --repair"
    )
    recovered = run_cli("recover", "--json", env=cli_env)
    assert recovered.returncode == 0, recovered.stderr
    assert json.loads(recovered.stdout)["temp_files"] == [str(temp)] and not temp.exists()


def test_verify_on_a_database_that_is_not_migrated_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(CHILDFACE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}",
               CHILDFACE_MEDIA_DIR=str(tmp_path / "media"))
    result = run_cli("verify", env=env)
    assert result.returncode == 2 and "childface migrate" in result.stderr


def test_verify_repair_re_embeds_damaged_embeddings(
    runtime: Runtime, photos: Photos, cli_env: dict[str, str]  # noqa: F811
) -> None:
    child = create_child(db=runtime.db, actor=ACTOR, external_id="C1", name="Ada")
    outcomes = enroll_photos(runtime=runtime, actor=ACTOR, child_id=child.id, confirm=True,
                             photos=[Photo(photos.person(0, 0)), Photo(photos.person(0, 1))])
    flipped, unchecked = (o.enrolled_face_id for o in outcomes)
    with runtime.db.engine.begin() as connection:  # behind the application's back
        vector = connection.scalar(select(Embedding.vector).where(Embedding.face_id == flipped))
        connection.execute(update(Embedding).where(Embedding.face_id == flipped)
                           .values(vector=bytes([vector[0] ^ 1]) + bytes(vector[1:])))
        connection.execute(update(Embedding).where(Embedding.face_id == unchecked).values(checksum=None))

    found = run_cli("verify", "--json", "--sample", "0", env=cli_env)
    assert found.returncode == 1, found.stdout + found.stderr
    report = json.loads(found.stdout)
    assert report["findings"] == {"embeddings_checksum_mismatch": 1, "embeddings_unchecked": 1}
    assert {(f["face_id"], tuple(f["problems"])) for f in report["embeddings"]["findings"]} == {
        (flipped, ("checksum_mismatch",)), (unchecked, ("unchecked",))
    }

    repaired = run_cli("verify", "--repair", "--sample", "2", env=cli_env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: 2 embedding(s)" in repaired.stdout and "re-computation from photos" in repaired.stdout
    with runtime.db.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "integrity.repaired")).one()
    assert event.actor == "system:verify" and event.face_ids == sorted([flipped, unchecked])


def test_retention_dry_run_changes_nothing_and_the_run_erases_what_it_listed(
    database: Database, cli_env: dict[str, str]
) -> None:
    off = run_cli("retention", env=cli_env)
    assert off.returncode == 0 and "retention is off" in off.stdout, off.stderr
    ids = {}
    for external_id, days in (("GONE", 40), ("STAYS", 10)):
        ids[external_id] = create_child(db=database, actor=ACTOR, external_id=external_id, name="x").id
        set_child_status(db=database, actor=ACTOR, child_id=ids[external_id], status=ChildStatus.archived)
        with database.engine.begin() as connection:
            connection.execute(update(Child).where(Child.id == ids[external_id])
                               .values(archived_at=datetime.now(UTC) - timedelta(days=days)))
    env = {**cli_env, "CHILDFACE_RETENTION_ARCHIVED_DAYS": "30"}

    dry = run_cli("retention", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert [(c["child_id"], c["external_id"]) for c in planned["children"]] == [(ids["GONE"], "GONE")]
    with database.session() as session:
        assert session.get(Child, ids["GONE"]) is not None
        assert not session.scalars(select(AuditEvent).where(AuditEvent.actor == "system:retention")).all()

    done = run_cli("retention", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "erased 1 child(ren)" in done.stdout and "GONE" in done.stdout
    with database.session() as session:
        assert session.get(Child, ids["GONE"]) is None and session.get(Child, ids["STAYS"]) is not None
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "system:retention")
                                  .order_by(AuditEvent.seq)).all()
    assert actions == ["retention.run", "child.erased"]
