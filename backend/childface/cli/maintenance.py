"""`childface verify`, `gc-media`, `recover`: check a deployment's files, rows and index, and tidy up.

Exit codes: 0 clean (or done), 1 findings (verify), 2 usage or configuration errors.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from childface.cli import app, get_settings, migrated_database

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _list(title: str, items: list, limit: int = 20) -> None:  # noqa: ANN001 - str or (id, path) rows
    if not items:
        return
    typer.echo(f"{title} ({len(items)}):")
    for item in items[:limit]:
        typer.echo(f"  {item}")
    if len(items) > limit:
        typer.echo(f"  ... and {len(items) - limit} more (--json lists all)")


@app.command()
def verify(as_json: JsonOption = False) -> None:
    """Check the deployment: files without rows, rows without files, file contents against their sha256
    names, each index against the DB, and leftovers of a crash. Changes nothing; exit 1 on any finding."""
    from tqdm import tqdm

    from childface.services.integrity import verify as check
    from childface.services.media import MediaStore

    settings = get_settings()
    database = migrated_database(settings)

    def progress(files):  # noqa: ANN001, ANN202 - Sequence[str] -> Iterable[str]
        return tqdm(files, desc="hashing photos", unit="file", disable=as_json or len(files) < 200)

    report = check(settings, database, MediaStore(settings.media_dir), progress=progress)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(f"photo files: {len(report.media.photo_files)} checked against their names"
                   + (f", {report.media.in_flight} being written now" if report.media.in_flight else ""))
        _list("files without a row", report.media.files_without_rows)
        _list("unexpected files (not a stored photo's name)", report.media.unexpected_files)
        _list("rows whose file is missing (image id, path)", report.media.rows_without_files)
        _list("files whose content does not match their sha256 name", report.content_mismatches)
        for index in report.indexes:
            typer.echo(f"index [{index.model_key}]: {index.loaded}\n  " + index.summary.replace("\n", "\n  "))
        _list("leftover temporary files", report.leftovers.temp_files)
        _list("leftover import folders", report.leftovers.import_folders)
        if report.leftovers.journal_entries:
            typer.echo(f"file journal: {report.leftovers.journal_entries} entries not settled")
        _list("import runs stuck at running (process gone)", report.leftovers.runs_failed)
        typer.echo(
            "clean" if report.clean
            else "findings: " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in report.findings.items())
            + "\n(leftovers of a crash are cleaned by `childface recover` or the next start; "
            "unreferenced photos by `childface gc-media --apply`)"
        )
    if not report.clean:
        raise typer.Exit(1)


@app.command("gc-media")
def gc_media(
    apply: Annotated[bool, typer.Option("--apply", help="Delete unreferenced files; default: list.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Find photo files no database row refers to, and rows whose file is missing. Dry run by default."""
    from childface.services.integrity import collect_garbage
    from childface.services.media import MediaStore

    settings = get_settings()
    database = migrated_database(settings)
    report = collect_garbage(settings, database, MediaStore(settings.media_dir), apply=apply)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    _list("photo files no row refers to", report.files_without_rows)
    _list(f"unreferenced but younger than {settings.pending_write_grace_s:.0f} s (left alone: a write may "
          "be under way)", report.too_young)
    _list("rows whose file is missing (image id, path)", report.rows_without_files)
    _list("unexpected files (not a stored photo's name; left alone)", report.unexpected_files)
    if report.rows_without_files:
        typer.echo("rows without files cannot be repaired here: the photo is gone. Remove those faces "
                   "(DELETE /faces/{id}) or enroll the photos again.")
    if apply:
        typer.echo(f"deleted {report.deleted} unreferenced file(s)")
    elif report.files_without_rows:
        typer.echo("dry run: nothing deleted; run with --apply to delete the files listed first")
    else:
        typer.echo("no unreferenced files")


@app.command()
def recover(as_json: JsonOption = False) -> None:
    """Finish or clean what a crashed process left (the server does this at every start)."""
    from childface.services.media import MediaStore
    from childface.services.recovery import recover as run

    settings = get_settings()
    database = migrated_database(settings)
    report = run(settings=settings, db=database, media=MediaStore(settings.media_dir))
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
