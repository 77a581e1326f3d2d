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
from childface.db.models import Child, Face, Image

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


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 one-face photos: an import long enough for a second one to start while it runs."""
    from childface.config import Settings
    from childface.services.sample_data import build_synthetic_dataset
    from childface.vision.detector import RetinaFaceDetector

    out = tmp_path_factory.mktemp("synthetic-cli")
    detector = RetinaFaceDetector.from_settings(Settings(_env_file=None, device="cpu"))
    build_synthetic_dataset(out, 120, detector)
    return out


def test_two_parallel_imports_one_refuses(synthetic_dir: Path, cli_env: dict[str, str], db_url: str,
                                          tmp_path: Path) -> None:
    assert run_cli("migrate", env=cli_env).returncode == 0
    csv_path = synthetic_dir / "synthetic.csv"
    commands = [[CHILDFACE, "import", str(csv_path), "--images", str(synthetic_dir / "images"), "--json",
                 "--report", str(tmp_path / f"report-{i}.csv")] for i in range(2)]
    procs = [subprocess.Popen(c, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    (refused_err,) = [err for code, _, err in results if code == 2]
    assert "another import is running" in refused_err and "Traceback" not in refused_err
    (summary,) = [json.loads(out) for code, out, _ in results if code == 0]
    database = Database(db_url)
    try:
        with database.session() as session:
            faces = session.scalar(select(func.count(Face.id)))
            photos = session.scalar(select(func.count(Image.id)))
    finally:
        database.dispose()
    assert faces == photos == summary["imported"] > 0  # one template per photo


def test_dry_run_of_a_damaged_zip_lists_refused_rows(example_dir: Path, cli_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    from services.zips import ZIP_ROWS, damaged_zip

    assert run_cli("migrate", env=cli_env).returncode == 0
    archive = tmp_path / "damaged.zip"
    archive.write_bytes(damaged_zip((example_dir / "images" / "c001" / "brighter.jpg").read_bytes()))
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("child_id,image\n" + "".join(f"Z{i},{n}.jpg\n" for i, n in enumerate(ZIP_ROWS)))
    dry = run_cli("import", str(csv_path), "--zip", str(archive), "--dry-run", env=cli_env)
    assert dry.returncode == 0, dry.stderr
    assert "Traceback" not in dry.stderr
    assert "7 rows: 1 to import, 0 already imported, 0 duplicate, 6 refused" in dry.stderr
    reasons = {r["image"]: r["reason"] for r in csv.DictReader((tmp_path / "rows-report.csv").open())}
    assert set(reasons) == {f"{n}.jpg" for n in ZIP_ROWS if n != "good"}
    assert reasons["bad-crc.jpg"].startswith("bad-crc.jpg is damaged in the zip")
    assert reasons["encrypted.jpg"].startswith("encrypted.jpg is encrypted in the zip")


def test_strict_import_refuses_a_face_unlike_the_child(example_dir: Path, cli_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    assert run_cli("migrate", env=cli_env).returncode == 0
    csv_path = tmp_path / "strict.csv"
    # C002's face is committed first (one photo per batch), then turns up among C001's photos
    csv_path.write_text("child_id,image\nC002,c002/portrait.jpg\nC001,c001/portrait.jpg\n"
                        "C001,c001/mirrored.jpg\nC001,c002/brighter.jpg\n")
    report = tmp_path / "strict-report.csv"
    done = run_cli("import", str(csv_path), "--images", str(example_dir / "images"), "--batch-size", "1",
                   "--strict", "--json", "--report", str(report), env=cli_env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["imported"], summary["refused"], summary["inconsistent"]) == (3, 1, 1)
    refused = [r for r in csv.DictReader(report.open()) if r["status"] == "refused"]
    assert [r["image"] for r in refused] == ["c002/brighter.jpg"]
    assert refused[0]["reason"].startswith("inconsistent_with_child: ") and "(C002)" in refused[0]["reason"]
