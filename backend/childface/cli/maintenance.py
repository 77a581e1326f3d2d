"""`childface verify [--repair]`, `gc-media`, `recover`: check a deployment's files, rows, embeddings and
index, repair embeddings, and tidy up.

Exit codes: 0 clean (or done), 1 findings (verify; with --repair: what remains unrepaired), 2 usage or
configuration errors.
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
def verify(
    repair: Annotated[bool, typer.Option(
        "--repair", help="Embed corrupt, unchecked and mismatching embeddings again from their photos "
        "(one audited change) and bring the index snapshots up to date.")] = False,
    sample: Annotated[int | None, typer.Option(
        "--sample", min=0, help="Faces embedded again from their photos to check the model "
        "(default: CHILDFACE_VERIFY_RECOMPUTE_SAMPLE).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Check the deployment: files without rows, rows without files, file contents against their sha256
    names, every embedding's checksum, length and norm, a sample of embeddings against a re-computation
    from their photos, each index against the DB, and leftovers of a crash.

    Without --repair it changes nothing; exit 1 on any finding. With --repair, exit 1 when anything
    remains that it could not repair (listed with face ids and reasons)."""
    from tqdm import tqdm

    from childface.services.integrity import verify as check
    from childface.services.media import MediaStore

    settings = get_settings()
    database = migrated_database(settings)

    def progress(files):  # noqa: ANN001, ANN202 - Sequence[str] -> Iterable[str]
        return tqdm(files, desc="hashing photos", unit="file", disable=as_json or len(files) < 200)

    def bar(*, total: int, desc: str, unit: str):  # noqa: ANN202 - a tqdm bar
        return tqdm(total=total, desc=desc, unit=unit, disable=as_json or total < 2000)

    report = check(settings, database, MediaStore(settings.media_dir), progress=progress, bar=bar,
                   repair=repair, sample=sample)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_verify(report)
    if (report.remaining if repair else report.findings):
        raise typer.Exit(1)


def _print_verify(report) -> None:  # noqa: ANN001 - integrity.VerifyReport, imported late
    typer.echo(f"photo files: {len(report.media.photo_files)} checked against their names"
               + (f", {report.media.in_flight} being written now" if report.media.in_flight else ""))
    _list("files without a row", report.media.files_without_rows)
    _list("unexpected files (not a stored photo's name)", report.media.unexpected_files)
    _list("rows whose file is missing (image id, path)", report.media.rows_without_files)
    _list("files whose content does not match their sha256 name", report.content_mismatches)
    keys = report.embeddings.model_keys
    checked = ", ".join(f"{n} of {key}" for key, n in report.embeddings.checked.items()) or "none"
    typer.echo(f"embeddings: {checked} checked (checksum, length, norm)")
    _list("embeddings with problems (embedding id, face id, model, problems)",
          [_finding_line(f, keys) for f in report.embeddings.findings])
    recompute = report.recompute
    if recompute.not_run:
        typer.echo(f"re-computation from photos: not run ({recompute.not_run})")
    else:
        skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in recompute.skipped.items())
        typer.echo(f"re-computation from photos [{recompute.model_key}]: {recompute.compared} of "
                   f"{recompute.sampled} sampled face(s) compared"
                   + (f" (skipped: {skipped})" if skipped else ""))
        _list("embeddings unlike their re-computation (embedding id, face id, model, cosine)",
              [_finding_line(f, keys) for f in recompute.mismatches])
        if recompute.compared >= 3 and len(recompute.mismatches) * 2 >= recompute.compared:
            typer.echo("  most of the sample differs: the model behind this id has probably changed; "
                       "compute every embedding again (childface reembed) rather than repairing rows")
        elif recompute.mismatches:
            every = report.embeddings.checked.get(recompute.model_key or "", 0)
            typer.echo("  others may differ too (the sample is random): check and repair every face with "
                       f"childface verify --repair --sample {every}")
    if report.repair is not None:
        typer.echo(f"repaired: {len(report.repair.repaired)} embedding(s)"
                   + (f" (audit event {report.repair.audit_seq})" if report.repair.audit_seq else ""))
        if report.repair.changed_meanwhile:
            typer.echo(f"  {report.repair.changed_meanwhile} changed meanwhile and left alone: "
                       "run verify again")
        _list("could not repair (face id, reason)",
              [f"face {u.face_id}: {u.message}" for u in report.repair.unrepaired])
    for index in report.indexes:
        typer.echo(f"index [{index.model_key}]: {index.loaded}\n  " + index.summary.replace("\n", "\n  "))
    _list("leftover temporary files", report.leftovers.temp_files)
    _list("leftover import folders", report.leftovers.import_folders)
    if report.leftovers.journal_entries:
        typer.echo(f"file journal: {report.leftovers.journal_entries} entries not settled")
    _list("import runs stuck at running (process gone)", report.leftovers.runs_failed)
    findings = report.findings if report.repair is None else report.remaining
    if not findings:
        typer.echo("clean" if report.clean else "repaired: nothing remains")
        return
    typer.echo(("findings: " if report.repair is None else "remaining: ")
               + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in findings.items()))
    hints = ["leftovers of a crash are cleaned by `childface recover` or the next start",
             "unreferenced photos by `childface gc-media --apply`"]
    if report.repair is None and any(k.startswith("embeddings_") for k in findings):
        hints.append("embeddings by `childface verify --repair`")
    typer.echo("(" + "; ".join(hints) + ")")


def _finding_line(finding, keys: dict[int, str]) -> str:  # noqa: ANN001 - integrity.EmbeddingFinding
    model = keys.get(finding.model_id, str(finding.model_id))
    moved = finding.source_model_id != finding.model_id
    extra = f", made by {keys.get(finding.source_model_id)}" if moved else ""
    cosine = f", cosine {finding.cosine:.4f}" if finding.cosine is not None else ""
    problems = " ".join(finding.problems)
    return f"{finding.embedding_id}, face {finding.face_id}, {model}: {problems}{extra}{cosine}"


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
