"""`childface bench backup --faces N`: backup and restore of an N-face deployment, timed and sized.

A throw-away deployment (SQLite; PostgreSQL with `--postgres`, in databases made
and dropped on that server) is filled through the bulk path
(`services.bulk_gallery`): N faces of N/5 children, each on its own photo — a
distinct 480x360 JPEG of about 30 KB cut from insightface's t1.jpg (crop
window, mirror image, light) — with synthetic unit 128-d vectors, and its
index snapshot saved as a running server would. Then, one after another:

- `backup_s` / `backup_bytes`: `create_backup` with a passphrase (the default);
- `backup_plain_s`: the same with `--no-encrypt` (what the encryption costs);
- `verify_s`: `restore --check` (read, decrypt and check every sum);
- `restore_s`: `restore_backup` into a second, empty deployment (staging,
  install, index check).

The machine's load average is reported before and after.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from childface.config import Settings

PER_CHILD = 5
BATCH_FACES = 2_000
PHOTO_SIZE = (480, 360)
JPEG_QUALITY = 80
MODEL_KEY = "bench-backup:synthetic"
DIM = 128
PASSPHRASE = "bench backup passphrase"


def _source_photo() -> np.ndarray:
    from childface.services.sample_data import _insightface_images

    bgr = cv2.imread(str(_insightface_images() / "t1.jpg"), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError("cannot read insightface's t1.jpg")
    return bgr


def photo(source: np.ndarray, i: int) -> bytes:
    """The i-th distinct JPEG: a crop window of the group photo, mirrored every other one, lit by i."""
    rng = np.random.default_rng(i)
    height, width = source.shape[:2]
    crop_w = int(rng.uniform(0.3, 0.7) * width)
    crop_h = min(height, int(crop_w * 0.75))
    x, y = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    image = cv2.resize(source[y : y + crop_h, x : x + crop_w], PHOTO_SIZE, interpolation=cv2.INTER_AREA)
    if i % 2:
        image = image[:, ::-1]
    image = cv2.convertScaleAbs(image, alpha=1.0, beta=float(i % 41 - 20))
    image[0, 0] = (i & 255, (i >> 8) & 255, (i >> 16) & 255)  # distinct bytes even for a repeated window
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def build_deployment(settings: Settings, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Fill the (migrated, empty) deployment of `settings` with `n` faces on `n` photos."""
    from childface.db.models import ImageSource
    from childface.db.session import Actor, Database
    from childface.services.bulk_gallery import BulkBatch, bulk_insert
    from childface.services.gallery import Gallery, ensure_embedding_model
    from childface.services.media import MediaStore

    db = Database(settings.database_url)
    media = MediaStore(settings.media_dir)
    model_row = ensure_embedding_model(
        db, key=MODEL_KEY, name="bench-backup", weights_sha256="0" * 64, dim=DIM
    )
    source = _source_photo()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    photo_bytes = 0

    def batches() -> Iterator[BulkBatch]:
        nonlocal photo_bytes
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # cv2 encodes outside the GIL
            for start in range(0, n, BATCH_FACES):
                count = min(BATCH_FACES, n - start)
                vectors = rng.normal(size=(count, DIM)).astype(np.float32)
                batch = BulkBatch(vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
                for j, data in enumerate(pool.map(lambda i: photo(source, i), range(start, start + count))):
                    i = start + j
                    if i % PER_CHILD == 0 or j == 0:
                        batch.children.append({"external_id": f"B-{i // PER_CHILD}",
                                               "display_name": f"Bench child {i // PER_CHILD}"})
                    sha, relative = media.put(data)
                    photo_bytes += len(data)
                    batch.images.append({"sha256": sha, "path": relative, "width": PHOTO_SIZE[0],
                                         "height": PHOTO_SIZE[1], "source": ImageSource.csv_import,
                                         "uploaded_by": "bench-backup"})
                    batch.faces.append({"child_index": len(batch.children) - 1, "image_index": j,
                                        "box_x1": 100.0, "box_y1": 80.0, "box_x2": 220.0, "box_y2": 230.0,
                                        "landmarks": [[130.0, 130.0], [190.0, 130.0], [160.0, 160.0],
                                                      [135.0, 195.0], [185.0, 195.0]],
                                        "detector_score": 0.99, "quality_score": 0.9})
                say(f"{start + count:,} of {n:,} faces")
                yield batch

    bulk_insert(db, Actor("system", "bench-backup"), model_row, DIM, batches())
    gallery = Gallery(db=db, settings=settings, model_key=MODEL_KEY, dim=DIM)
    gallery.start()
    gallery.save()
    db.dispose()
    return {"photo_bytes": photo_bytes, "build_s": round(time.perf_counter() - started, 1)}


@contextmanager
def _databases(root: Path, postgres: str | None) -> Iterator[tuple[str, str]]:
    """(source URL, target URL): SQLite files under `root`, or two new databases on the server."""
    if postgres is None:
        yield f"sqlite:///{root / 'source' / 'childface.db'}", f"sqlite:///{root / 'target' / 'childface.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(postgres)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    names = [f"childface_bench_backup_{uuid.uuid4().hex[:8]}_{side}" for side in ("source", "target")]
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield tuple(server.set(database=name).render_as_string(hide_password=False) for name in names)  # type: ignore[misc]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_backup_benchmark(
    settings: Settings, *, faces: int, postgres: str | None, say: Callable[[str], None]
) -> dict[str, Any]:
    from childface.db.migrate import upgrade
    from childface.db.session import Database
    from childface.services.backup import create_backup
    from childface.services.backup_restore import restore_backup
    from childface.services.backup_staging import verify_backup

    report: dict[str, Any] = {"faces": faces, "database": "postgresql" if postgres else "sqlite",
                              "load_before": os.getloadavg()}
    with (
        tempfile.TemporaryDirectory(prefix="childface-bench-backup-") as tmp,
        _databases(Path(tmp), postgres) as urls,
    ):
        root = Path(tmp)
        source, target = (
            settings.model_copy(update={"database_url": url, "media_dir": root / side / "media",
                                        "index_dir": root / side / "index"})
            for url, side in zip(urls, ("source", "target"), strict=True)
        )
        db = Database(source.database_url)
        upgrade(db)
        say(f"building a {faces:,}-face deployment")
        report |= build_deployment(source, faces, say)
        report["media_bytes"] = _bytes_under(source.media_dir)
        (root / "backups").mkdir()

        say("backup (encrypted)")
        started = time.perf_counter()
        result = create_backup(source, db, root / "backups" / "b.cfbak", passphrase=PASSPHRASE)
        report["backup_s"] = round(time.perf_counter() - started, 2)
        report["backup_bytes"] = result.bytes
        report["backup_files"] = result.files
        say("backup (plain)")
        started = time.perf_counter()
        create_backup(source, db, root / "backups" / "plain.cfbak", passphrase=None)
        report["backup_plain_s"] = round(time.perf_counter() - started, 2)
        db.dispose()
        say("restore --check")
        started = time.perf_counter()
        verify_backup(result.path, passphrase=PASSPHRASE)
        report["verify_s"] = round(time.perf_counter() - started, 2)
        say("restore")
        started = time.perf_counter()
        restored = restore_backup(target, result.path, passphrase=PASSPHRASE)
        report["restore_s"] = round(time.perf_counter() - started, 2)
        report["restore_index"] = restored.index
        report["restored_photos"] = restored.photos
    report["load_after"] = os.getloadavg()
    return report
