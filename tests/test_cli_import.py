"""`childface example-dataset` and `childface import`, run as a user runs them (the installed command).

The example set is built once by the real command from the photos installed
packages ship; the import then runs against SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from childface.db import Database
from childface.db.models import Child, Face

CHILDFACE = str(Path(sys.executable).with_name("childface"))


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([CHILDFACE, *args], env=env, capture_output=True, text=True, timeout=300)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    return env | {"CHILDFACE_DEVICE": "cpu"}


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("example-cli")
    env = base_env() | {"CHILDFACE_DATABASE_URL": f"sqlite:///{out / 'unused.db'}"}
    result = run_cli("example-dataset", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert "wrote 34 rows for 8 children" in result.stdout
    return out


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return base_env() | {"CHILDFACE_DATABASE_URL": db_url, "CHILDFACE_MEDIA_DIR": str(tmp_path / "media")}


def test_dry_run_then_import_from_zip_then_resume(example_dir: Path, cli_env: dict[str, str], db_url: str,
                                                  tmp_path: Path) -> None:
    assert run_cli("migrate", env=cli_env).returncode == 0
    csv_path = example_dir / "children.csv"
    report = tmp_path / "report.csv"

    dry = run_cli("import", str(csv_path), "--images", str(example_dir / "images"), "--dry-run",
                  "--report", str(report), env=cli_env)
    assert dry.returncode == 0, dry.stderr
    assert "34 rows: 31 to import, 0 already imported, 1 duplicate, 2 refused; 8 new" in dry.stderr
    assert "arousal 1.4 is outside 0..1" in dry.stderr and "nothing changed" in dry.stderr
    database = Database(db_url)
    try:
        with database.session() as session:
            assert session.scalar(select(func.count(Child.id))) == 0

        done = run_cli("import", str(csv_path), "--zip", str(example_dir / "photos.zip"), "--json",
                       "--report", str(report), env=cli_env)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert (summary["imported"], summary["duplicate"], summary["refused"]) == (30, 1, 3)
        assert summary["children_created"] == 8
        rows = list(csv.DictReader(report.open()))
        assert len(rows) == 34
        assert {r["reason"] for r in rows if r["status"] == "refused"} == {
            "no face found in the photo", "arousal 1.4 is outside 0..1",
            "c004/missing.jpg is not in the zip",
        }

        again = run_cli("import", str(csv_path), "--zip", str(example_dir / "photos.zip"), "--json",
                        "--report", str(report), env=cli_env)
        assert again.returncode == 0, again.stderr
        summary = json.loads(again.stdout)
        assert summary["imported"] == 30 and summary["children_created"] == 0
        rows = list(csv.DictReader(report.open()))
        assert sum(r["reason"].startswith("already imported") for r in rows) == 30
        with database.session() as session:
            assert session.scalar(select(func.count(Face.id))) == 30
    finally:
        database.dispose()


def test_unusable_input_is_a_clear_error(tmp_path: Path) -> None:
    env = base_env() | {"CHILDFACE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    no_image_column = tmp_path / "bad.csv"
    no_image_column.write_text("child_id,name\nA1,Ada\n")
    result = run_cli("import", str(no_image_column), env=env)
    assert result.returncode == 2 and "no image column" in result.stderr
    assert "Traceback" not in result.stderr

    good = tmp_path / "good.csv"
    good.write_text("child_id,image\nA1,a.jpg\n")
    result = run_cli("import", str(good), "--images", str(tmp_path / "missing"), env=env)
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_cli("import", str(tmp_path / "absent.csv"), env=env)
    assert result.returncode == 2 and "cannot read" in result.stderr
