"""`childface bench scale --faces N`: the product at N faces against itself at a small peer size.

For each size (the peer, default 1,000, and N) in one run:

1. a throw-away SQLite database and media folder; one real child enrolled
   through the API from a packaged sample face (so `/recognize` has a real
   match), then N synthetic faces (5 per child, face-like 128-d vectors from
   `bench search`'s generator) inserted through the bulk path
   (`services.bulk_gallery`), the way a large import would;
2. in a fresh process (so its memory is the index's alone): the gallery
   started without a snapshot (`rebuild_ready_s`: start to a ready, exact
   index from the DB), then HNSW built as the background thread would
   (`hnsw_build_s`), `index_rss_bytes` (RSS growth of that process from before
   the rebuild to after the switch), `identify_p50_ms` (single-query
   `Gallery.search`, k=5), then a snapshot saved and loaded again
   (`snapshot_load_s`, start to ready from the snapshot);
3. a real `childface serve` subprocess per size, both up at once; a client in
   a separate process (`bench.http_load`) sends the one-face photo to each in
   alternating rounds, so both sizes see the same machine load
   (`recognize_p50_ms`).

The machine's load average is reported before and after.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from childface.bench.search import face_like_data
from childface.config import Settings

PER_CHILD = 5
BATCH_FACES = 10_000
PEER_FACES = 1_000
IDENTIFY_QUERIES = 300
ROUNDS = 5


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _p50(samples_s: list[float]) -> float:
    return round(float(np.percentile(np.asarray(samples_s) * 1e3, 50)), 3)


# ---- 1. the gallery -------------------------------------------------------------


def _enroll_real_child(settings: Settings, root: Path) -> dict[str, Any]:
    """One child enrolled over HTTP from a sample face; returns model key/dim, API key, probe JPEG."""
    from childface.api.app import create_app
    from childface.bench.api import serve_in_thread
    from childface.db.session import Actor
    from childface.services import accounts
    from childface.services.runtime import Runtime
    from childface.services.sample_data import encode_jpeg, load_sample_photos, synthetic_photo

    runtime = Runtime.scratch(settings, root)
    runtime.start(autosave=False)
    try:
        sample = load_sample_photos(runtime.pipeline.detector)
        rng = np.random.default_rng(0)
        face = sample.faces[0]
        photos = [encode_jpeg(synthetic_photo(face, rng), quality=90) for _ in range(3)]
        probe = encode_jpeg(synthetic_photo(face, rng), quality=90)
        key = accounts.create_api_key(
            db=runtime.db, actor=Actor("system", "bench-scale"), name="bench", scopes=["recognize", "enroll"]
        ).key
        app = create_app(runtime.settings, runtime)
        with serve_in_thread(app) as url, httpx.Client(base_url=url, headers={"X-API-Key": key}) as http:
            created = http.post("/children", json={"external_id": "REAL-1", "name": "Real Child"})
            created.raise_for_status()
            files = [("files", (f"e{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
            http.post(f"/children/{created.json()['id']}/images", files=files, timeout=300).raise_for_status()
        return {
            "model_key": runtime.pipeline.model_id,
            "dim": int(runtime.pipeline.embedder.dim),
            "api_key": key,
            "probe": probe,
            "settings": runtime.settings,
        }
    finally:
        runtime.close()
        _release_milvus_lite(runtime.settings)


def _release_milvus_lite(settings: Settings) -> None:
    """Milvus Lite serves one process at a time: let the measuring process and the server open
    the data file this process used for the enrollment."""
    if settings.index_backend != "milvus":
        return
    from childface.index.milvus_index import close_clients

    close_clients()


def synthetic_batches(vectors: np.ndarray, *, tag: str, per_child: int = PER_CHILD) -> Iterator[Any]:
    """Bulk batches of synthetic children (`per_child` faces each) with one photo row per face."""
    from childface.db.models import ImageSource
    from childface.services.bulk_gallery import BulkBatch

    landmarks = [[30.0, 50.0], [70.0, 50.0], [50.0, 70.0], [35.0, 90.0], [65.0, 90.0]]
    for start in range(0, len(vectors), BATCH_FACES):
        block = vectors[start : start + BATCH_FACES]
        batch = BulkBatch(vectors=block)
        for j in range(len(block)):
            i = start + j
            if i % per_child == 0 or j == 0:
                batch.children.append(
                    {"external_id": f"{tag}-{i // per_child}", "display_name": f"Synthetic {i // per_child}"}
                )
            batch.images.append(
                {
                    "sha256": hashlib.sha256(f"synthetic/{tag}/{i}".encode()).hexdigest(),
                    "path": f"synthetic/{tag}/{i}.jpg",
                    "width": 640,
                    "height": 480,
                    "source": ImageSource.csv_import,
                    "uploaded_by": "bench-scale",
                }
            )
            batch.faces.append(
                {
                    "child_index": len(batch.children) - 1,
                    "image_index": j,
                    "box_x1": 10.0,
                    "box_y1": 10.0,
                    "box_x2": 110.0,
                    "box_y2": 130.0,
                    "landmarks": landmarks,
                    "detector_score": 0.99,
                    "quality_score": 0.9,
                }
            )
        yield batch


def build_gallery(settings: Settings, root: Path, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    """A scratch database with one real child and `n` synthetic faces inserted in bulk."""
    from sqlalchemy import select, text

    from childface.db.models import EmbeddingModel
    from childface.db.session import Actor, Database
    from childface.services.bulk_gallery import bulk_insert

    say(f"{n:,} faces: enrolling the real child")
    if settings.index_backend == "milvus":
        # a collection per size on a server; Lite: a data file per gallery (one process at a time)
        settings = settings.model_copy(update={"milvus_collection_prefix": f"bench_scale_{n}_"})
        if not settings.milvus_uri.startswith(("http:", "https:")):
            settings = settings.model_copy(update={"milvus_uri": str(root / "milvus.db")})
    info = _enroll_real_child(settings, root)
    scratch: Settings = info.pop("settings")
    data = face_like_data(n, info["dim"], n_queries=IDENTIFY_QUERIES, per_identity=PER_CHILD, seed=1)
    np.save(root / "queries.npy", data.queries)
    # one synthetic child = one identity: the generator interleaves identities, the batches
    # give each run of PER_CHILD rows to one child
    by_identity = data.gallery[np.argsort(data.labels, kind="stable")]
    db = Database(scratch.database_url)
    with db.session() as session:
        model_row = session.scalar(select(EmbeddingModel.id).where(EmbeddingModel.key == info["model_key"]))
    say(f"{n:,} faces: bulk insert")
    started = time.perf_counter()
    bulk_insert(
        db, Actor("system", "bench-scale"), model_row, info["dim"], synthetic_batches(by_identity, tag="s")
    )
    insert_s = time.perf_counter() - started
    del data, by_identity
    with db.engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    db.engine.dispose()
    db_file = root / "scratch.db"
    db_bytes = sum(p.stat().st_size for p in root.glob("scratch.db*"))
    return info | {
        "settings": scratch,
        "db_file": db_file,
        "db_bytes": db_bytes,
        "bulk_insert_s": round(insert_s, 2),
        "bulk_faces_per_s": round(n / insert_s),
    }


# ---- 2. the index, in its own process ------------------------------------------------


def measure_index(settings: Settings, model_key: str, dim: int, queries: np.ndarray) -> dict[str, Any]:
    """Rebuild from the DB (no snapshot), switch to HNSW, search, save, load: see the module docstring."""
    from childface.db.session import Database
    from childface.index import FaissIndex
    from childface.services.gallery import Gallery

    db = Database(settings.database_url)
    gc.collect()
    rss_before = _rss_bytes()
    started = time.perf_counter()
    gallery = Gallery(db=db, settings=settings, model_key=model_key, dim=dim)
    gallery.start()
    rebuild_ready_s = time.perf_counter() - started
    index = gallery._children.index  # noqa: SLF001 - the benchmark reports the store it measures
    exact_rss = _rss_bytes() - rss_before
    exact_times, exact_top = [], []
    for q in queries:  # exact answers first: the approximate store's are compared with them
        t = time.perf_counter()
        exact_top.append(gallery.search(q[None], 5)[0][0].child_id)
        exact_times.append(time.perf_counter() - t)
    started = time.perf_counter()
    switched = isinstance(index, FaissIndex) and index.rebuild_if_needed()
    hnsw_build_s = time.perf_counter() - started
    gc.collect()
    index_rss = _rss_bytes() - rss_before
    for q in queries[:20]:
        gallery.search(q[None], 5)
    times, top = [], []
    for q in queries:
        t = time.perf_counter()
        top.append(gallery.search(q[None], 5)[0][0].child_id)
        times.append(time.perf_counter() - t)
    gallery.save()
    started = time.perf_counter()
    loaded = Gallery(db=db, settings=settings, model_key=model_key, dim=dim)
    how = loaded.start()
    snapshot_load_s = time.perf_counter() - started
    return {
        "faces": gallery.count,
        "rebuild_ready_s": round(rebuild_ready_s, 2),
        "exact_rss_bytes": exact_rss,
        "exact_identify_p50_ms": _p50(exact_times),
        "hnsw_build_s": round(hnsw_build_s, 2) if switched else None,
        "index_store": index.backend if isinstance(index, FaissIndex) else index.kind,
        "index_rss_bytes": index_rss,
        "identify_p50_ms": _p50(times),
        # the same best child as exact search (identity recall@1 of the store serving now)
        "top_child_agreement_vs_exact": round(float(np.mean(np.asarray(top) == np.asarray(exact_top))), 4),
        "snapshot_bytes": gallery.path.stat().st_size,
        "snapshot_load_s": round(snapshot_load_s, 2),
        "snapshot_start": how,
    }


def _measure_in_child(settings: Settings, info: dict[str, Any], root: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "childface.bench.scale", str(root), info["model_key"], str(info["dim"])],
        env=_server_env(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"index measurement failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- 3. the API over HTTP ----------------------------------------------------------


def _server_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CHILDFACE_DATABASE_URL": settings.database_url,
            "CHILDFACE_MEDIA_DIR": str(settings.media_dir),
            "CHILDFACE_INDEX_DIR": str(settings.resolved_index_dir),
            "CHILDFACE_DEVICE": settings.device,
            "CHILDFACE_INDEX_APPROXIMATE_ABOVE": str(settings.index_approximate_above),
            "CHILDFACE_INDEX_HNSW_M": str(settings.index_hnsw_m),
        }
    )
    env["CHILDFACE_INDEX_BACKEND"] = settings.index_backend
    env["CHILDFACE_MILVUS_URI"] = settings.milvus_uri
    env["CHILDFACE_MILVUS_COLLECTION_PREFIX"] = settings.milvus_collection_prefix
    return env


@contextmanager
def serve_subprocess(settings: Settings, root: Path, timeout_s: float = 900) -> Iterator[str]:
    """`childface serve` on a scratch gallery; yields its base URL once `/readyz` answers 200."""
    from childface.bench.api import serve_subprocess as serve

    with serve(_server_env(settings), root / "serve.log", timeout_s=timeout_s) as (url, _):
        yield url


def recognize_interleaved(targets: dict[int, tuple[str, str, bytes]], *, rounds: int, per_round: int) -> dict:
    """p50 of POST /recognize per size, rounds alternating between the servers (same load for all)."""
    from childface.bench.http_load import run_http_load

    latencies: dict[int, list[float]] = {n: [] for n in targets}
    for _ in range(rounds):
        for n, (url, key, photo) in targets.items():
            figures = run_http_load(url, key, photo, requests=per_round, concurrency=1, warmup=2)
            latencies[n].extend(figures["latencies_ms"])
    return {n: round(float(np.percentile(values, 50)), 2) for n, values in latencies.items()}


# ---- the run -----------------------------------------------------------------------


def run_scale_benchmark(
    settings: Settings,
    *,
    faces: int,
    peer_faces: int = PEER_FACES,
    requests: int = 100,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    load_before = os.getloadavg()
    sizes = sorted({peer_faces, faces})
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="childface-bench-scale-") as tmp, ExitStack() as stack:
        built: dict[int, dict[str, Any]] = {}
        for n in sizes:
            root = Path(tmp) / f"n{n}"
            root.mkdir()
            info = build_gallery(settings, root, n, say)
            say(f"{n:,} faces: index in a fresh process (rebuild, HNSW, snapshot)")
            info["index"] = _measure_in_child(info["settings"], info, root)
            built[n] = info | {"root": root}
        say("starting one `childface serve` per size")
        targets = {}
        for n, info in built.items():
            url = stack.enter_context(serve_subprocess(info["settings"], info["root"]))
            targets[n] = (url, info["api_key"], info["probe"])
        say("timing POST /recognize, sizes interleaved")
        per_round = max(1, requests // ROUNDS)
        recognize = recognize_interleaved(targets, rounds=ROUNDS, per_round=per_round)
        for n, info in built.items():
            out[str(n)] = {
                "faces": n,
                "db_bytes": info["db_bytes"],
                "bulk_insert_s": info["bulk_insert_s"],
                "bulk_faces_per_s": info["bulk_faces_per_s"],
                **info["index"],
                "recognize_p50_ms": recognize[n],
            }
    top = out[str(faces)]
    peer = out[str(peer_faces)]
    return {
        "backend": settings.index_backend,
        "faces": faces,
        "peer_faces": peer_faces,
        **{
            key: top[key]
            for key in (
                "db_bytes",
                "rebuild_ready_s",
                "snapshot_load_s",
                "index_rss_bytes",
                "identify_p50_ms",
                "recognize_p50_ms",
                "hnsw_build_s",
                "bulk_faces_per_s",
            )
        },
        "recognize_p50_vs_peer_ms": round(top["recognize_p50_ms"] - peer["recognize_p50_ms"], 2),
        "recognize_requests_per_size": per_round * ROUNDS,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "sizes": out,
    }


def main(argv: list[str] | None = None) -> None:
    """Child-process entry: measure the index of a built scratch gallery; one JSON line on stdout."""
    args = sys.argv[1:] if argv is None else argv
    root, model_key, dim = Path(args[0]), args[1], int(args[2])
    settings = Settings()  # the parent's configuration with the scratch paths it set in the environment
    queries = np.load(root / "queries.npy")
    print(json.dumps(measure_index(settings, model_key, dim, queries)))


if __name__ == "__main__":
    main()
