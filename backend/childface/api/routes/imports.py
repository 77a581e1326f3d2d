"""Bulk CSV import over HTTP (the admin's Import page): check, start, follow, download the report.

The photos come as one zip next to the CSV (a web client cannot name folders
on the server). `POST /imports/check` is the dry run. `POST /imports` opens the
run, answers at once with its id and imports in a background thread of this
process, one import at a time in the whole deployment (the database refuses a
second running run, whichever process starts it: 409 `import_running`);
`GET /imports/{id}` reports progress while it runs and the final counts after.
Same service as `childface import` (services/importing.py; format in
docs/import-format.md).
"""

from __future__ import annotations

import io
import logging
import shutil
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from childface.api.deps import Enroller, PathId, Reader, RuntimeDep
from childface.db.models import ImportRun, ImportStatus
from childface.db.session import Actor
from childface.services import importing
from childface.services.consistency import ConsistencyCheck
from childface.services.errors import InvalidInput, NotFound
from childface.services.recovery import new_import_folder
from childface.services.runtime import Runtime

log = logging.getLogger(__name__)

router = APIRouter(prefix="/imports", tags=["imports"])


class ImportPlanRow(BaseModel):
    line: int = Field(description="Line in the CSV (the header is line 1).")
    child_id: str
    image: str
    action: Literal["import", "done", "duplicate", "refused"] = Field(
        description="import: will be imported; done: imported by an earlier run; duplicate; refused."
    )
    reason: str


class ImportPlanRelation(BaseModel):
    child_id: str = Field(description="External id of the child whose row names the other.")
    other_id: str
    kind: Literal["sibling", "twin"]
    lines: list[int] = Field(description="The CSV lines that name the pair.")
    action: Literal["add", "exists", "refused"] = Field(
        description="add: marked after the photos are imported (when both children exist then); exists: "
        "marked already (an import never changes a marked pair); refused: see reason."
    )
    reason: str


class ImportPlanPublic(BaseModel):
    counts: dict[str, int] = Field(
        description="rows, to_import, already_imported, duplicate, refused, new_children, new_photos"
    )
    box_format: Literal["xyxy", "xywh"] | None
    box_rule: str = Field(description="How the face box columns were read.")
    columns: dict[str, Any] = Field(description="Which CSV column feeds each field.")
    new_children: list[str]
    rows: list[ImportPlanRow]
    relations: list[ImportPlanRelation] = Field(
        default=[], description="Sibling and twin pairs named by sibling_of / twin_of columns."
    )


class ImportRunPublic(BaseModel):
    id: int
    status: Literal["running", "finished", "failed"]
    source_name: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    done: int = Field(description="Rows with a final outcome so far.")
    total: int
    counts: dict[str, int] = Field(description="imported, duplicate, refused; already_imported (the imported "
                                                "rows an earlier run had imported); inconsistent (rows "
                                                "whose face did not look like the child's other photos: "
                                                "imported with a note, or refused when strict); at the end "
                                                "rows, children_created, and with sibling_of / twin_of "
                                                "columns relations_added, relations_skipped")
    report_available: bool


class _Live:
    """Progress of the imports running in this process (the DB row holds the final state)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.progress: dict[int, importing.ImportProgress] = {}

    def update(self, run_id: int, progress: importing.ImportProgress) -> None:
        with self.lock:
            self.progress[run_id] = progress

    def get(self, run_id: int) -> importing.ImportProgress | None:
        with self.lock:
            return self.progress.get(run_id)

    def drop(self, run_id: int) -> None:
        with self.lock:
            self.progress.pop(run_id, None)


_live = _Live()


def _read_inputs(csv_file: UploadFile, photos: UploadFile | None) -> tuple[importing.ImportTable, bytes]:
    if photos is None:
        raise InvalidInput("upload the photos as a zip file together with the CSV", code="photos_missing")
    table = importing.read_table(csv_file.file.read())
    data = photos.file.read()
    if not data:
        raise InvalidInput("the photos zip is empty", code="photos_missing")
    return table, data


def _zip_source(runtime: Runtime, data: bytes | Path) -> importing.PhotoSource:
    return importing.open_source(
        zip_file=data if isinstance(data, Path) else io.BytesIO(data),
        max_bytes=runtime.settings.max_upload_bytes,
    )


@router.post("/check", response_model=ImportPlanPublic)
def check_import(
    _: Enroller,
    runtime: RuntimeDep,
    csv_file: Annotated[UploadFile, File(alias="csv", description="The CSV (docs/import-format.md).")],
    photos: Annotated[UploadFile | None, File(description="Zip of the photos the CSV names.")] = None,
) -> ImportPlanPublic:
    """Dry run: new children, new photos, duplicates and bad rows with reasons. Changes nothing."""
    table, data = _read_inputs(csv_file, photos)
    source = _zip_source(runtime, data)
    try:
        plan = importing.plan_import(
            db=runtime.db, table=table, source=source, max_pixels=runtime.settings.max_image_pixels
        )
    finally:
        source.close()
    return ImportPlanPublic.model_validate(plan.summary())


def _report_path(runtime: Runtime, run_id: int) -> Path:
    return runtime.settings.media_dir.parent / "imports" / f"run-{run_id}-report.csv"


def _run_in_background(
    runtime: Runtime, actor: Actor, run_id: int, table: importing.ImportTable, plan: importing.ImportPlan,
    zip_path: Path, source_name: str, strict: bool,
) -> None:
    source = _zip_source(runtime, zip_path)
    try:
        importing.run_import(
            db=runtime.db, media=runtime.media, pipeline=runtime.pipeline,
            model_db_id=runtime.model_db_id, table=table, source=source, actor=actor, source_name=source_name,
            max_pixels=runtime.settings.max_image_pixels, report_path=_report_path(runtime, run_id),
            progress=lambda p: _live.update(run_id, p), after_commit=runtime.catch_up, plan=plan,
            run_id=run_id, consistency=ConsistencyCheck.for_runtime(runtime), strict=strict,
            local_zone=runtime.settings.attendance_timezone,
        )
    except Exception:  # noqa: BLE001 - a background thread has no caller: log; the run row says failed
        log.exception("import run %s failed", run_id)
    finally:
        source.close()
        shutil.rmtree(zip_path.parent, ignore_errors=True)
        _live.drop(run_id)


@router.post("", response_model=ImportRunPublic, status_code=202)
def start_import(
    principal: Enroller,
    runtime: RuntimeDep,
    csv_file: Annotated[UploadFile, File(alias="csv", description="The CSV (docs/import-format.md).")],
    photos: Annotated[UploadFile | None, File(description="Zip of the photos the CSV names.")] = None,
    strict: Annotated[bool, Form(description="Refuse rows whose face does not look like the child's other "
                                 "photos (by default: imported, noted in the report).")] = False,
) -> ImportRunPublic:
    """Start importing; answers at once. Follow it with `GET /imports/{id}`; rows already imported
    are skipped, so sending the same files again resumes an interrupted import. One import runs at a
    time in a deployment (all processes together): 409 `import_running` while another runs."""
    table, data = _read_inputs(csv_file, photos)
    # under the data folder and named after this process: start-up recovery removes a dead one's folder
    folder = new_import_folder(runtime.settings)
    zip_path = folder / "photos.zip"
    zip_path.write_bytes(data)
    try:
        source = _zip_source(runtime, zip_path)
        try:
            plan = importing.plan_import(
                db=runtime.db, table=table, source=source, max_pixels=runtime.settings.max_image_pixels
            )
        finally:
            source.close()
        zip_name = photos.filename if photos is not None and photos.filename else "photos.zip"
        source_name = f"{csv_file.filename or 'upload.csv'} + {zip_name}"
        run_id = importing.start_run(db=runtime.db, actor=principal.actor, source_name=source_name, plan=plan)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    counts = plan.counts()
    _live.update(run_id, importing.ImportProgress(
        done=len(plan.rows) - counts["to_import"], total=len(plan.rows),
        counts={"imported": counts["already_imported"], "duplicate": counts["duplicate"],
                "refused": counts["refused"]},
    ))
    threading.Thread(
        target=_run_in_background, name=f"import-{run_id}", daemon=True,
        args=(runtime, principal.actor, run_id, table, plan, zip_path, source_name, strict),
    ).start()
    return get_import(run_id, principal, runtime)


def _public(runtime: Runtime, run: ImportRun) -> ImportRunPublic:
    live = _live.get(run.id)
    counts = dict(run.counts or {})
    if live is not None and run.status == ImportStatus.running:
        done, total, counts = live.done, live.total, dict(live.counts)
    else:
        total = counts.get("rows", 0)
        done = sum(counts.get(k, 0) for k in ("imported", "duplicate", "refused"))
    return ImportRunPublic(
        id=run.id, status=run.status.value, source_name=run.source_name,  # type: ignore[arg-type]
        started_by=run.started_by, started_at=run.started_at, finished_at=run.finished_at,
        done=done, total=total, counts=counts,
        report_available=run.report_path is not None and Path(run.report_path).is_file(),
    )


@router.get("", response_model=list[ImportRunPublic])
def list_imports(_: Reader, runtime: RuntimeDep, limit: int = 20) -> list[ImportRunPublic]:
    """Recent import runs, newest first."""
    with runtime.db.session() as session:
        query = select(ImportRun).order_by(ImportRun.id.desc()).limit(max(1, min(limit, 200)))
        runs = list(session.scalars(query))
    return [_public(runtime, run) for run in runs]


@router.get("/{run_id}", response_model=ImportRunPublic)
def get_import(run_id: PathId, _: Reader, runtime: RuntimeDep) -> ImportRunPublic:
    with runtime.db.session() as session:
        run = session.get(ImportRun, run_id)
    if run is None:
        raise NotFound(f"no import run with id {run_id}")
    return _public(runtime, run)


@router.get(
    "/{run_id}/report",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "One line per CSV row: its outcome"}},
)
def import_report(run_id: PathId, _: Reader, runtime: RuntimeDep) -> Response:
    """The run's report CSV (line, child_id, image, status, reason, face_id), once the run has ended."""
    with runtime.db.session() as session:
        run = session.get(ImportRun, run_id)
    if run is None:
        raise NotFound(f"no import run with id {run_id}")
    if not run.report_path or not Path(run.report_path).is_file():
        raise NotFound(f"import run {run_id} has no report yet", code="report_not_ready")
    return Response(
        Path(run.report_path).read_bytes(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{run_id}-report.csv"'},
    )
