"""`childface models`, `reembed`, `switch-model`, `drop-model`: move a deployment to another embedding model.

    childface reembed --embedder arcface --weights backbone.pth --arch r50   # while recognition goes on
    childface switch-model arcface-r50:0123456789abcdef --accept 0.45 --review 0.35
    childface drop-model dlib-resnet:0123456789abcdef                         # when sure

Exit codes: 0 done, 1 the re-embedding left faces it could not embed, 2 usage or
configuration errors (nothing changed), 3 refused (another job runs, faces missing, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from childface.cli import app, ensure_media_dir, fail, get_settings, migrated_database, use_threads

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
CLI_ACTOR = ("system", "cli")


def _actor():  # noqa: ANN202 - Actor, imported late
    from childface.db import Actor

    return Actor(*CLI_ACTOR)


def _refused(exc: Exception) -> None:
    """A domain error as a message and exit code: 2 for bad input, 3 when the state refuses it."""
    from childface.services.errors import InvalidInput, NotFound

    fail(getattr(exc, "message", str(exc)), code=2 if isinstance(exc, InvalidInput | NotFound) else 3)


@app.command("models")
def list_models(as_json: JsonOption = False) -> None:
    """List the embedding models: which is current, embeddings stored, share of enrolled faces covered."""
    from childface.services.embedding_models import configured_note, list_models

    settings = get_settings()
    models = list_models(migrated_database(settings))
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in models], indent=2))
        return
    if not models:
        typer.echo("no embedding model registered yet (the first start registers the configured one)")
    for m in models:
        spec = m.to_dict()["spec"] or {}
        loads = ", ".join(f"{k} {v}" for k, v in spec.items() if v not in (None, False)) or "spec unknown"
        typer.echo(f"{'*' if m.state == 'current' else ' '} {m.key}  {m.state}, {m.dim}-d, {m.embeddings} "
                   f"embeddings, {m.covered}/{m.enrolled_faces} enrolled faces ({m.coverage:.0%}); {loads}")
        if m.state == "current":
            note = configured_note(m.key, m.spec, settings)
            if note:
                typer.echo(f"  note: {note}")


def _target_spec(
    embedder: str | None, weights: Path | None, arch: str | None, no_flip: bool
) -> dict[str, Any]:
    from childface.cli import settings_with
    from childface.services.embedding_models import spec_from_settings

    if weights is not None and not weights.is_file():
        fail(f"embedder weights not found: {weights}")
    settings = settings_with(embedder=embedder, embedder_weights=weights, embedder_arch=arch,
                             embedder_flip_tta=False if no_flip else None)
    return spec_from_settings(settings)


@app.command()
def reembed(
    embedder: Annotated[str | None, typer.Option(help="dlib-resnet or arcface (default: configured).")] = (
        None
    ),
    weights: Annotated[Path | None, typer.Option(help="Weights file (.pth, .onnx, dlib .dat).")] = None,
    arch: Annotated[str | None, typer.Option(help="ArcFace backbone of a .pth: r18 ... r100, mbf.")] = None,
    no_flip: Annotated[bool, typer.Option("--no-flip", help="Without flip test-time augmentation.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Faces per unit of work.")] = 32,
    as_json: JsonOption = False,
) -> None:
    """Compute a model's embedding of every enrolled and pending face from its stored photo, at its stored
    landmarks. Recognition goes on with the current model meanwhile; a run that stopped resumes."""
    from tqdm import tqdm

    from childface.services import reembedding
    from childface.services.errors import DomainError
    from childface.services.media import MediaStore

    spec = _target_spec(embedder, weights, arch, no_flip)
    settings = use_threads(get_settings())
    database = migrated_database(settings)
    ensure_media_dir(settings.media_dir)
    bar = None

    def progress(view: reembedding.JobView) -> None:
        nonlocal bar
        if as_json:
            return
        if bar is None:
            bar = tqdm(total=view.total, initial=view.done + view.failed, unit="face", desc=view.model_key)
        bar.total = view.total
        bar.n = view.done + view.failed
        bar.set_postfix({"failed": view.failed, "faces/s": view.faces_per_s or 0}, refresh=True)

    try:
        target = reembedding.load_target(database, settings, spec)
        typer.echo(f"re-embedding with {target.key} on {target.pipeline.device}", err=True)
        job_id = reembedding.start_job(database, _actor(), target.model_id)
        media = MediaStore(settings.media_dir)
        result = reembedding.run_job(database, media, settings, job_id, target, _actor(),
                                     batch_size=batch_size, progress=progress)
    except DomainError as exc:
        _refused(exc)
    except KeyboardInterrupt:
        fail("interrupted: the faces done so far are kept; run the same command again to go on", code=130)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(f"job {result.id}: {result.status}; {result.done}/{result.total} faces have an embedding "
                   f"of {result.model_key}, {result.failed} failed, {result.faces_per_s or 0} faces/s")
        for face_id, reason in result.failures[:20]:
            typer.echo(f"  face {face_id}: {reason}")
        if len(result.failures) > 20:
            typer.echo(f"  ... and {len(result.failures) - 20} more (--json lists all)")
        typer.echo(f"next: childface switch-model {result.model_key}   (check first: childface calibrate "
                   f"--model {result.model_key}, childface eval --model {result.model_key} DATASET)")
    if result.failed:
        raise typer.Exit(1)


@app.command("switch-model")
def switch_model(
    key: Annotated[str, typer.Argument(help="The model to serve (its key, see `childface models`).")],
    accept: Annotated[float | None, typer.Option("--accept", help="Its accept threshold.")] = None,
    review: Annotated[float | None, typer.Option("--review", help="Its review threshold.")] = None,
    drop_old: Annotated[bool, typer.Option("--drop-old", help="Then delete the old model's data.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Make KEY the model every recognition, enrollment and import uses, in every running process (no
    restart). Refused unless KEY has an embedding of every enrolled face whose photo is stored; up to 200
    missing ones are computed first."""
    from childface.services import embedding_models, reembedding
    from childface.services.errors import DomainError
    from childface.services.media import MediaStore

    settings = use_threads(get_settings())
    database = migrated_database(settings)
    media = MediaStore(settings.media_dir)

    def top_up(face_ids: list[int]) -> None:
        with database.session() as session:
            spec = embedding_models.model_row(session, key).spec
        target = reembedding.load_target(database, settings, spec)
        typer.echo(f"computing {len(face_ids)} missing embedding(s) of {key} first", err=True)
        reembedding.embed_missing(database, media, settings, target, _actor(), face_ids)

    try:
        result = embedding_models.switch_model(database, media, _actor(), key, accept=accept, review=review,
                                               top_up=top_up)
        dropped = None
        if drop_old and result.before is not None and result.before != key:
            dropped = _drop(database, settings, result.before)
    except DomainError as exc:
        _refused(exc)
    report = {"before": result.before, "after": result.after, "thresholds": result.thresholds or None,
              "topped_up": result.topped_up, "faces_without_photo": result.without_photo,
              "overrides_removed": result.overrides_removed or None, "dropped_embeddings": dropped}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"current model: {result.before or 'none'} -> {key}; running servers follow within seconds")
    if result.thresholds:
        typer.echo(f"thresholds of {key}: accept {result.thresholds['accept_threshold']}, review "
                   f"{result.thresholds['review_threshold']}"
                   + (f" (run-time overrides removed: {result.overrides_removed})" if result.overrides_removed
                      else ""))
    else:
        typer.echo(f"{key} carries no thresholds: the configured ones (or those set on the Settings page) "
                   f"apply; calibrate with `childface calibrate --model {key} --apply-to-model`")
    if result.without_photo:
        typer.echo(f"{len(result.without_photo)} enrolled face(s) have no stored photo and no embedding of "
                   f"{key}: they are not recognised with it")
    if dropped is not None:
        typer.echo(f"dropped {result.before}: {dropped} embeddings deleted")
    elif result.before is not None:
        typer.echo(f"the old model's embeddings stay (switch back at once: childface switch-model "
                   f"{result.before}); delete them with `childface drop-model {result.before}`")


def _drop(database, settings, key: str) -> int:  # noqa: ANN001 - Database, Settings
    from childface.index import snapshot_path
    from childface.services.embedding_models import drop_model

    return drop_model(database, _actor(), key, snapshot=snapshot_path(settings, key))


@app.command("drop-model")
def drop_model(
    key: Annotated[str, typer.Argument(help="The model to delete (not the current one).")],
    as_json: JsonOption = False,
) -> None:
    """Delete a model's embeddings, its row and its index snapshot, in batches (audited). Refused for the
    current model: switch first."""
    from childface.services.errors import DomainError

    settings = get_settings()
    database = migrated_database(settings)
    try:
        deleted = _drop(database, settings, key)
    except DomainError as exc:
        _refused(exc)
    typer.echo(json.dumps({"model": key, "deleted_embeddings": deleted}) if as_json
               else f"dropped {key}: {deleted} embeddings deleted")
