"""`childface bench ...`: the benchmarks behind the README's performance table (figures, not tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from childface.cli import bench_app, fail, get_settings, settings_with, use_threads
from childface.config import Settings


def bench_settings(device: str | None) -> Settings:
    """Settings for a benchmark run on `device` (default: the setting), refusing a CUDA that is not there."""
    settings = settings_with(device=device)
    if settings.resolved_device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail(f"--device {settings.device} asked for, but torch sees no CUDA device")
    return use_threads(settings)


@bench_app.command("pipeline")
def bench_pipeline(
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of photos. Default: insightface's t1.jpg and a 640x480 astronaut."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:N]; default: the setting.")] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Timed passes over the images.")] = 5,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: setting).")] = None,
    dlib: Annotated[bool, typer.Option("--dlib/--no-dlib", help="Also time the dlib pipeline.")] = True,
    background_load: Annotated[
        bool, typer.Option("--background-load", help="Run a CPU hog on every core beside the benchmark.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Time our pipeline against face_recognition/dlib's on the same images (figures, not a test)."""
    from childface.bench import pipeline as benchmark

    settings = bench_settings(device)
    if threads is not None:
        settings = use_threads(settings.model_copy(update={"torch_threads": threads}))
    try:
        photos = benchmark.default_images() if images is None else benchmark.folder_images(images)
        report = benchmark.run_benchmark(
            settings, photos, repeat=repeat, with_dlib=dlib, background_load=background_load
        )
    except (RuntimeError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(report, indent=2) if as_json else benchmark.format_report(report))


@bench_app.command("search")
def bench_search(
    n: int = typer.Option(100_000, "--n", min=10, help="Largest gallery (10k, 100k, 1M up to n, and n)."),
    dim: list[int] = typer.Option([128], "--dim", min=2, help="Embedding dimension; repeat for several."),
    queries: int = typer.Option(1000, "--queries", min=1, help="Query faces per gallery."),
    k: int = typer.Option(10, "--k", min=1, help="Neighbours per query (recall@k)."),
    ef_search: list[int] = typer.Option(
        [], "--ef-search", min=1, help="HNSW efSearch values to sweep (default: the setting)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: the setting)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout (progress goes to stderr)."),
) -> None:
    """Vector search speed and recall on face-like synthetic data, against numpy brute force."""
    import json

    from childface.bench.search import run_search_benchmark

    settings = bench_settings(device)
    report = run_search_benchmark(
        settings, n=n, dims=dim, n_queries=queries, k=k, ef_search=ef_search, progress=True
    )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench search on {report['device']} ({report['cpu_count']} CPUs)")
    columns = ["n", "dim", "index", "recall_at_1", "recall_at_10", "identity_recall_at_1", "p50_ms",
               "p99_ms", "numpy_p50_ms", "speedup_vs_numpy", "throughput_qps", "build_s"]
    for column in columns:
        table.add_column(column, justify="left" if column == "index" else "right")
    for row in report["results"]:
        table.add_row(*(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    Console().print(table)


@bench_app.command("import")
def bench_import(
    n: Annotated[int, typer.Option("--n", min=1, help="Synthetic 640x480 one-face photos.")] = 1000,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: the setting).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Photos per pipeline batch.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Photos per second of a real CSV import (temporary SQLite DB and media folder)."""
    from childface.bench.imports import run_import_benchmark

    settings = bench_settings(device)
    report = run_import_benchmark(settings, n=n, batch_size=batch_size, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(
            f"{report['photos']} photos in {report['import_seconds']:.1f} s = "
            f"{report['photos_per_second']:.2f} photos/s on {report['device']} "
            f"({report['imported']} imported, {report['refused']} refused)"
        )


@bench_app.command("duplicates")
def bench_duplicates(
    faces: Annotated[int, typer.Option("--faces", min=2, help="Synthetic templates in the gallery.")] = 10000,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed runs (the best is reported).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Time of the duplicates report (GET /review/duplicates) over N templates (temporary SQLite DB)."""
    from childface.bench.duplicates import run_duplicates_benchmark

    report = run_duplicates_benchmark(get_settings(), faces=faces, repeat=repeat)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(
        f"{report['faces']} templates, {report['children']} children: {report['pairs_found']} pairs "
        f"(planted {report['planted_duplicates']}) at threshold {report['threshold']} in "
        f"{report['seconds_best']:.3f} s (best of {len(report['seconds_all'])}, {report['cpu_count']} CPUs)"
    )


@bench_app.command("admin")
def bench_admin(
    children: Annotated[int, typer.Option("--children", min=1, help="Synthetic children.")] = 10000,
    faces_per_child: Annotated[
        int, typer.Option("--faces-per-child", min=0, help="Enrolled faces of each child.")
    ] = 3,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Rounds (the median is reported).")] = 3,
    old: Annotated[
        bool, typer.Option("--old/--no-old", help="Also time the old Children page's API calls.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Time of the admin's Children page and Child detail (50 faces) against a live API (temporary DB)."""
    from childface.bench.admin import run_admin_benchmark

    report = run_admin_benchmark(
        get_settings(), children=children, faces_per_child=faces_per_child, repeat=repeat, old=old,
        progress=None if as_json else typer.echo,
    )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{report['children']} children, {report['faces_per_child']} faces each "
               f"({report['cpu_count']} CPUs; load average {report['load_average_before'][0]} before, "
               f"{report['load_average_after'][0]} after):")
    for name, figures in report["seconds"].items():
        typer.echo(f"  {name}: {figures['median']:.3f} s (median of {len(figures['all'])})")


@bench_app.command("api")
def bench_api(
    requests: Annotated[int, typer.Option("--requests", min=1, help="Timed requests per phase.")] = 200,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed requests first.")] = 10,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Clients of the concurrent phase (1: none).")
    ] = 1,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="Sequential and concurrent phases alternate this often.")
    ] = 3,
    background_load: Annotated[
        bool, typer.Option("--background-load", help="Run a CPU hog on every core beside the benchmark.")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: the setting).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Latency and throughput of POST /recognize: a `childface serve` process, clients in another process."""
    from childface.bench.api import run_api_benchmark
    from childface.services.errors import DomainError

    settings = bench_settings(device)
    try:
        report = run_api_benchmark(
            settings, requests=requests, warmup=warmup, concurrency=concurrency, rounds=rounds,
            background_load=background_load,
        )
    except (DomainError, RuntimeError) as exc:
        fail(getattr(exc, "message", str(exc)))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    sequential = report["sequential"]
    typer.echo(
        f"POST /recognize, {report['photo']}, on {report['device']} "
        f"(load average {report['load_average_before'][0]} before, {report['load_average_after'][0]} after"
        f"{', CPU hog on every core' if report['background_load'] else ''}):\n"
        f"  1 client: p50 {sequential['p50_ms']:.1f} ms, p95 {sequential['p95_ms']:.1f} ms, "
        f"{sequential['throughput_rps']:.2f} requests/s over {sequential['requests']} requests"
    )
    if report["concurrent"]:
        burst = report["concurrent"]
        typer.echo(
            f"  {burst['concurrency']} clients: p50 {burst['p50_ms']:.1f} ms, "
            f"{burst['throughput_rps']:.2f} requests/s = {report['throughput_vs_sequential']:.2f}x one client"
        )


@bench_app.command("watch")
def bench_watch(
    clip: Annotated[
        Path | None,
        typer.Argument(
            help="A video file. Default: the synthetic clip (five people, three of them enrolled).",
            exists=True, dir_okay=False, readable=True,
        ),
    ] = None,
    size: Annotated[str, typer.Option(help="Synthetic clip size, WIDTHxHEIGHT (e.g. 1280x720).")] = "640x480",
    stride: Annotated[int, typer.Option(min=1, help="Detect faces on every N-th frame.")] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds (tracked run, naive run).")] = 2,
    naive: Annotated[bool, typer.Option("--naive/--no-naive", help="Also time the naive baseline.")] = True,
    streams: Annotated[
        int, typer.Option(min=1, help="Copies of the clip watched at once (one process).")
    ] = 1,
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:N]; default: the setting.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Live recognition on a clip: frames/s with tracking against every face in every frame (figures)."""
    from childface.bench import watch as benchmark

    width, sep, height = size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 160 or int(height) < 120:
        fail(f"--size wants WIDTHxHEIGHT of at least 160x120, e.g. 1280x720, not {size!r}")
    try:
        report = benchmark.run_watch_benchmark(
            bench_settings(device), clip_path=clip, size=(int(width), int(height)), stride=stride,
            rounds=rounds, naive=naive, streams=streams,
        )
    except (RuntimeError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(report, indent=2) if as_json else benchmark.format_report(report))


@bench_app.command("scale")
def bench_scale(
    faces: Annotated[
        int, typer.Option("--faces", min=10, help="Synthetic gallery size (5 faces per child).")
    ],
    peer: Annotated[
        int, typer.Option("--peer", min=10, help="Small peer size measured in the same run.")
    ] = 1_000,
    backend: Annotated[
        str | None, typer.Option("--backend", help="Vector index backend, e.g. faiss or milvus (setting).")
    ] = None,
    requests: Annotated[int, typer.Option(min=5, help="Timed /recognize requests per size.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON on stdout (progress on stderr).")
    ] = False,
) -> None:
    """A synthetic N-face gallery built through the bulk path: DB size, rebuild, snapshot load,
    index memory, identify and /recognize latency, against a small peer in the same run."""
    from childface.bench.scale import run_scale_benchmark

    settings = bench_settings("cpu")
    if backend is not None:
        if backend not in ("faiss", "milvus"):
            fail(f"--backend must be faiss or milvus, not {backend!r}")
        settings = settings.model_copy(update={"index_backend": backend})

    def say(message: str) -> None:
        typer.echo(f"[bench scale] {message}", err=True)

    report = run_scale_benchmark(settings, faces=faces, peer_faces=peer, requests=requests, say=say)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if key != "sizes":
            typer.echo(f"{key}: {value}")


@bench_app.command("backup")
def bench_backup(
    faces: Annotated[int, typer.Option("--faces", min=10, help="Faces (and photos) to back up.")] = 10_000,
    postgres: Annotated[
        str | None,
        typer.Option(
            "--postgres",
            help="URL of a PostgreSQL server where two throw-away databases may be made (default: SQLite).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON on stdout (progress on stderr).")
    ] = False,
) -> None:
    """Backup, check and restore of an N-face deployment (N distinct ~30 KB photos): seconds and bytes."""
    from childface.bench.backup import run_backup_benchmark
    from childface.services.backup_archive import BackupError

    def say(message: str) -> None:
        typer.echo(f"[bench backup] {message}", err=True)

    try:
        report = run_backup_benchmark(bench_settings("cpu"), faces=faces, postgres=postgres, say=say)
    except (BackupError, RuntimeError, OSError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        typer.echo(f"{key}: {value}")
