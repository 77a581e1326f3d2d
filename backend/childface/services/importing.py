"""Bulk import of an existing photo collection from a CSV: `childface import` and the admin's Import page.

One row per face photo (the layout of the reference data set `finaldata.csv`):
the child's id, the photo (a path inside an images folder or a zip), optional
face box, `mask`, `arousal`, `valence`, `name`, `group`, and the child's
siblings and twins (`sibling_of`, `twin_of`: external ids). The format, the
column aliases and the box rule are documented in docs/import-format.md; the
constants below are that document's source of truth.

Flow: `read_table` parses and checks every row (bad rows get a reason and are
kept, never dropped); `plan_import` is the dry run (new children, new photos,
duplicates, rows an earlier run already imported); `run_import` executes the
plan in batches through the vision pipeline and writes every row's fate
(imported / duplicate / refused + reason) to the report CSV.

Audit (DESIGN.md invariant 2: one event per unit of work): `import.started`
opens the run, each child created is its own `child.created`, each committed
batch of photos is one `import.batch` event whose `face_ids` lists the faces
it added (the vector index's change feed), each sibling or twin pair marked
after the last batch is its own `child.relation_added`, and `import.finished` closes the
run with its counts. A crash loses at most the batch in flight; re-running the
same CSV skips what is already in the database, so an import resumes.
"""

from __future__ import annotations

import csv
import io
import logging
import lzma
import math
import os
import re
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from childface.db.models import Child, ChildStatus, Face, Image, ImportRun, ImportStatus
from childface.db.session import SYSTEM, Actor, Database
from childface.services.audit_log import neutralise_cell
from childface.services.consistency import REASON as CONSISTENCY_REASON
from childface.services.consistency import ConsistencyCheck
from childface.services.enrollment import (
    MIN_HINT_IOU,
    SAME_FACE_IOU,
    FaceAlreadyStored,
    iou,
    persist_face,
    select_face,
    store_photo,
)
from childface.services.errors import Conflict, InvalidInput, NotFound
from childface.services.file_journal import pending_writes
from childface.services.media import sha256_hex
from childface.services.owners import current_owner, owner_alive
from childface.services.text_input import clean_field, text_problem

if TYPE_CHECKING:
    from childface.vision.exif import PhotoDate

log = logging.getLogger(__name__)

#: a CSV box selects a detected face like the API's hint box: highest IoU, at least this much
MIN_BOX_IOU = MIN_HINT_IOU
#: photos per `FacePipeline.process` call (and per committed batch)
DEFAULT_BATCH_SIZE = 16
MAX_CSV_BYTES = 50 * 1024 * 1024

RowStatus = Literal["imported", "duplicate", "refused"]
BoxFormat = Literal["xyxy", "xywh"]

#: canonical field -> accepted header names (compared lower-case, spaces and dashes as "_"), first wins
ALIASES: dict[str, tuple[str, ...]] = {
    "child_id": ("child_id", "external_id", "child", "childid", "child_external_id", "subject_id",
                 "person_id", "id"),
    "image": ("image", "image_path", "file", "filename", "file_name", "path", "photo", "img", "image_file"),
    "name": ("name", "display_name", "child_name", "full_name"),
    "group": ("group", "group_name", "class", "classroom"),
    "mask": ("mask", "masked", "has_mask", "wearing_mask"),
    "arousal": ("arousal",),
    "valence": ("valence",),
    "sibling_of": ("sibling_of", "siblings", "sibling"),
    "twin_of": ("twin_of", "twin"),
}
#: several child ids in one `sibling_of` / `twin_of` cell are separated by this
RELATIVES_SEPARATOR = "|"
#: four-column box layouts, tried in this order; the column names say which format they are
BOX_LAYOUTS: tuple[tuple[BoxFormat, tuple[str, str, str, str]], ...] = (
    ("xyxy", ("x1", "y1", "x2", "y2")),
    ("xyxy", ("xmin", "ymin", "xmax", "ymax")),
    ("xyxy", ("left", "top", "right", "bottom")),
    ("xywh", ("x", "y", "w", "h")),
    ("xywh", ("x", "y", "width", "height")),
    ("xywh", ("box_x", "box_y", "box_w", "box_h")),
)
#: one-column boxes ("x1 y1 x2 y2", "[x, y, w, h]", ...): the name fixes the format, or `None` = detect
BOX_COLUMNS: dict[str, BoxFormat | None] = {
    "box_xyxy": "xyxy", "bbox_xyxy": "xyxy", "xyxy": "xyxy",
    "box_xywh": "xywh", "bbox_xywh": "xywh", "xywh": "xywh",
    "box": None, "bbox": None, "face_box": None,
}
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


class ImportFormatError(InvalidInput):
    """The file as a whole cannot be imported (not a CSV, a required column missing, ...)."""

    code = "invalid_import"


def _norm(header: str) -> str:
    return re.sub(r"[\s\-]+", "_", header.strip().lstrip("\ufeff").lower())


# ---- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """Which CSV header feeds each field (the headers as written in the file)."""

    child_id: str
    image: str
    name: str | None = None
    group: str | None = None
    mask: str | None = None
    arousal: str | None = None
    valence: str | None = None
    sibling_of: str | None = None
    twin_of: str | None = None
    box: tuple[str, ...] = ()
    #: "xyxy" / "xywh", or None when the file has no box
    box_format: BoxFormat | None = None
    #: how the box format was decided, for the dry-run report
    box_rule: str = ""


@dataclass
class CsvRow:
    """One data row; `error` says why it cannot be imported (then the other fields may be empty)."""

    line: int  # line number in the file, header = 1
    external_id: str
    image: str
    name: str | None = None
    group: str | None = None
    mask: bool | None = None
    arousal: float | None = None
    valence: float | None = None
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in photo pixels
    #: (other child's external id, "sibling" | "twin") from the `sibling_of` / `twin_of` columns
    relatives: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


@dataclass
class ImportTable:
    columns: Columns
    rows: list[CsvRow]


def _resolve_columns(headers: list[str]) -> Columns:
    by_norm: dict[str, str] = {}
    for header in headers:
        by_norm.setdefault(_norm(header), header)

    def find(canonical: str) -> str | None:
        return next((by_norm[a] for a in ALIASES[canonical] if a in by_norm), None)

    child_col, image_col = find("child_id"), find("image")
    missing = [name for name, col in (("child_id", child_col), ("image", image_col)) if col is None]
    if missing:
        raise ImportFormatError(
            f"the CSV has no {' and no '.join(missing)} column (found: {', '.join(headers) or 'nothing'}); "
            "see docs/import-format.md for the accepted names"
        )
    box: tuple[str, ...] = ()
    box_format: BoxFormat | None = None
    rule = ""
    for fmt, names in BOX_LAYOUTS:
        if all(n in by_norm for n in names):
            box, box_format = tuple(by_norm[n] for n in names), fmt
            rule = f"columns {', '.join(box)} read as {'x1,y1,x2,y2' if fmt == 'xyxy' else 'x,y,w,h'}"
            break
    else:
        single = next((n for n in BOX_COLUMNS if n in by_norm), None)
        if single is not None:
            box, box_format = (by_norm[single],), BOX_COLUMNS[single]
            rule = f"column {by_norm[single]}"
    return Columns(
        child_id=child_col,  # type: ignore[arg-type]  # checked above
        image=image_col,  # type: ignore[arg-type]
        name=find("name"),
        group=find("group"),
        mask=find("mask"),
        arousal=find("arousal"),
        valence=find("valence"),
        sibling_of=find("sibling_of"),
        twin_of=find("twin_of"),
        box=box,
        box_format=box_format,
        box_rule=rule,
    )


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not a finite number")
    return value


def _unit(text: str, what: str) -> float | None:
    if not text:
        return None
    value = _number(text, what)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} {value:g} is outside 0..1")
    return value


def _flag(text: str) -> bool | None:
    lowered = text.lower()
    if not lowered:
        return None
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"mask {text!r} is not 0/1")


def _box_values(raw: list[str]) -> list[float] | None:
    if all(not v for v in raw):
        return None
    if len(raw) == 1:
        raw = [v for v in re.split(r"[\s,;]+", raw[0].strip("[]() ")) if v]
        if len(raw) != 4:
            raise ValueError("box must have four numbers")
    if any(not v for v in raw):
        raise ValueError("box is incomplete (some of its four values are empty)")
    return [_number(v, "box value") for v in raw]


def _to_xyxy(values: list[float], fmt: BoxFormat) -> tuple[float, float, float, float]:
    x1, y1, a, b = values
    x2, y2 = (x1 + a, y1 + b) if fmt == "xywh" else (a, b)
    if x2 <= x1 or y2 <= y1:
        raise ValueError("box has no area (" + ("width/height must be > 0" if fmt == "xywh"
                                                else "x2 must exceed x1 and y2 exceed y1") + ")")
    if x2 <= 0 or y2 <= 0:
        raise ValueError("box lies outside the photo")
    return (x1, y1, x2, y2)


def read_table(data: bytes | str) -> ImportTable:
    """Parse and check a CSV; raises ImportFormatError for a file-level problem, marks bad rows."""
    if isinstance(data, bytes):
        if len(data) > MAX_CSV_BYTES:
            raise ImportFormatError(f"the CSV is larger than {MAX_CSV_BYTES // (1024 * 1024)} MB")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ImportFormatError("the CSV is not UTF-8 text") from None
    else:
        text = data.lstrip("\ufeff")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel  # type: ignore[assignment]
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        headers = next(reader)
    except StopIteration:
        raise ImportFormatError("the CSV is empty") from None
    except csv.Error as exc:
        raise ImportFormatError(f"the CSV cannot be read: {exc}") from None
    columns = _resolve_columns(headers)
    index = {h: i for i, h in enumerate(headers)}
    raw_rows: list[tuple[int, dict[str, str]]] = []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            values = {h: (record[i].strip() if i < len(record) else "") for h, i in index.items()}
            raw_rows.append((reader.line_num, values))
    except csv.Error as exc:
        raise ImportFormatError(f"the CSV cannot be read near line {reader.line_num}: {exc}") from None

    box_format = columns.box_format
    if columns.box and box_format is None:
        # A bare `box` column: x1,y1,x2,y2 unless some row cannot be corners (x2 <= x1 or y2 <= y1),
        # in which case the whole file is x,y,w,h. Decided per file, never per row.
        corners = True
        for _, values in raw_rows:
            try:
                vals = _box_values([values[c] for c in columns.box])
            except ValueError:
                continue
            if vals is not None and (vals[2] <= vals[0] or vals[3] <= vals[1]):
                corners = False
                break
        box_format = "xyxy" if corners else "xywh"
        columns = Columns(**{**columns.__dict__, "box_format": box_format,
                             "box_rule": f"{columns.box_rule} detected as "
                             + ("x1,y1,x2,y2" if corners else "x,y,w,h (some rows cannot be corners)")})
    elif columns.box:
        columns = Columns(**{**columns.__dict__, "box_rule": columns.box_rule
                             or f"column {columns.box[0]} read as {box_format}"})

    rows = [_parse_row(line, values, columns) for line, values in raw_rows]
    return ImportTable(columns=columns, rows=rows)


#: the CSV's text fields: (attribute, label in messages, longest value, required); the API's limits
_TEXT_FIELDS = (("external_id", "child id", 128, True), ("name", "name", 200, False),
                ("group", "group", 100, False))


def printable(text: str) -> str:
    """`text` with every character the text check refuses written as an escape (for reports)."""
    return "".join(ch if text_problem(ch) is None else _escape(ch) for ch in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _parse_row(line: int, values: dict[str, str], columns: Columns) -> CsvRow:
    raw = {"external_id": values[columns.child_id], "image": values[columns.image],
           "name": values[columns.name] if columns.name else "",
           "group": values[columns.group] if columns.group else ""}
    row = CsvRow(line=line, external_id=printable(raw["external_id"]), image=printable(raw["image"]))
    problems: list[str] = []
    # the same check as the API's (NFKC, no control or bidi characters, length); bad text is
    # refused with its reason and only ever echoed escaped
    for attr, label, longest, required in _TEXT_FIELDS:
        try:
            setattr(row, attr, clean_field(label, raw[attr], max_length=longest, required=required))
        except InvalidInput as exc:
            problems.append(exc.message)
    # a file name is looked up as written (NFKC would change names a file system keeps apart)
    image_problem = text_problem(raw["image"]) if raw["image"] else "image is empty"
    if image_problem is not None:
        problems.append(image_problem if not raw["image"] else f"image {image_problem}")
    elif len(raw["image"]) > 1000:
        problems.append("image is longer than 1000 characters")
    for attr, column, parse in (
        ("mask", columns.mask, _flag),
        ("arousal", columns.arousal, lambda t: _unit(t, "arousal")),
        ("valence", columns.valence, lambda t: _unit(t, "valence")),
    ):
        if column:
            try:
                setattr(row, attr, parse(values[column]))
            except ValueError as exc:
                problems.append(str(exc))
    if columns.box and columns.box_format:
        try:
            vals = _box_values([values[c] for c in columns.box])
            row.box = None if vals is None else _to_xyxy(vals, columns.box_format)
        except ValueError as exc:
            problems.append(str(exc))
    for label, column, kind in (("sibling_of", columns.sibling_of, "sibling"),
                                ("twin_of", columns.twin_of, "twin")):
        for cell in (values[column].split(RELATIVES_SEPARATOR) if column else []):
            try:
                other = clean_field(label, cell, max_length=128, required=False)
            except InvalidInput as exc:
                problems.append(exc.message)
                continue
            if other == row.external_id:
                problems.append(f"{label} names the row's own child {other}")
            elif other and (other, kind) not in row.relatives:
                row.relatives.append((other, kind))
    row.error = "; ".join(problems) or None
    return row


# ---- where the photos are -------------------------------------------------------------------------


class PhotoSource(Protocol):
    def read(self, name: str) -> bytes:
        """The bytes of the photo the CSV names; FileNotFoundError / ValueError with a reason."""
        ...

    def close(self) -> None: ...


def _safe_parts(name: str) -> tuple[str, ...]:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or any(p == ".." for p in parts) or parts[0] == "/" or re.match(r"^[A-Za-z]:", parts[0]):
        raise ValueError(f"image path {name!r} must be relative and stay inside the images folder")
    return tuple(p for p in parts if p != ".")


class FolderSource:
    """Photos under a folder; CSV paths are relative to it.

    Links inside the folder are followed while they stay inside it; a link
    that leads out of it is refused (a CSV must not reach other files).
    """

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        if not Path(root).is_dir():
            raise ImportFormatError(f"images folder {root} does not exist")
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes

    def read(self, name: str) -> bytes:
        path = self.root.joinpath(*_safe_parts(name))
        real = path.resolve()
        if not real.is_relative_to(self.root):
            raise ValueError(f"{name} is a link that leaves the images folder")
        if not real.is_file():
            raise FileNotFoundError(f"{name} is not in the images folder")
        # O_NOFOLLOW: the checked path is the one read, even if a link is put in its place meanwhile
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise ValueError(f"{name} is larger than {self.max_bytes // (1024 * 1024)} MB")
        return data

    def close(self) -> None:
        return None


#: compression methods Python's zipfile reads (stored, deflate, bzip2, lzma); Deflate64 and others are not
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


class ZipSource:
    """Photos inside a zip; a CSV path may omit one top-level folder the zip wraps everything in."""

    def __init__(self, path_or_file: Path | io.BufferedIOBase | io.BytesIO, *, max_bytes: int) -> None:
        try:
            self.zip = zipfile.ZipFile(path_or_file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise ImportFormatError(f"the photos archive is not a readable zip: {exc}") from None
        self.max_bytes = max_bytes
        self.infos = {info.filename: info for info in self.zip.infolist() if not info.is_dir()}
        tops = {name.split("/", 1)[0] for name in self.infos if "/" in name}
        only_nested = all("/" in name for name in self.infos)
        self.prefix = f"{tops.pop()}/" if len(tops) == 1 and only_nested else ""

    def read(self, name: str) -> bytes:
        key = "/".join(_safe_parts(name))
        info = self.infos.get(key) or self.infos.get(self.prefix + key)
        if info is None:
            raise FileNotFoundError(f"{name} is not in the zip")
        if info.file_size > self.max_bytes:
            raise ValueError(f"{name} is larger than {self.max_bytes // (1024 * 1024)} MB")
        if info.flag_bits & 0x1:
            raise ValueError(f"{name} is encrypted in the zip (password-protected zips are not supported)")
        if info.compress_type not in _ZIP_METHODS:
            raise ValueError(f"{name} is compressed with a method this server cannot read "
                             f"(zip method {info.compress_type}); use Deflate or no compression")
        try:
            # the header's size is not trusted: read at most the limit, and the member's checksum
            # is verified at its end (zipfile raises on a mismatch)
            with self.zip.open(info) as member:
                data = member.read(self.max_bytes + 1)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{name} is damaged in the zip ({exc})") from None
        except (zlib.error, EOFError, lzma.LZMAError, OSError, ValueError, RuntimeError,
                NotImplementedError) as exc:
            raise ValueError(f"{name} is damaged in the zip ({type(exc).__name__}: {exc or 'truncated'})") \
                from None
        if len(data) > self.max_bytes:
            raise ValueError(f"{name} is larger than {self.max_bytes // (1024 * 1024)} MB")
        if len(data) != info.file_size:
            raise ValueError(f"{name} is damaged in the zip (its header says {info.file_size} bytes, "
                             f"it holds {len(data)})")
        return data

    def close(self) -> None:
        self.zip.close()


def open_source(
    *, images_dir: Path | None = None, zip_file: Path | io.BytesIO | None = None, max_bytes: int
) -> PhotoSource:
    if (images_dir is None) == (zip_file is None):
        raise ImportFormatError("give the photos as either an images folder or a zip, not both or neither")
    if zip_file is not None:
        return ZipSource(zip_file, max_bytes=max_bytes)
    return FolderSource(images_dir, max_bytes=max_bytes)  # type: ignore[arg-type]


# ---- the dry run ----------------------------------------------------------------------------------


PlanAction = Literal["import", "done", "duplicate", "refused"]


@dataclass
class PlannedRow:
    row: CsvRow
    action: PlanAction
    reason: str = ""
    sha256: str | None = None
    #: the face id when an earlier run (or enrollment) already has this row's face for this child
    face_id: int | None = None


RelationAction = Literal["add", "exists", "refused"]


@dataclass
class PlannedRelation:
    """A sibling or twin pair the CSV names (`sibling_of` / `twin_of`), and what the import does with it.

    `add`: marked at the end of the import, when both children exist then; `exists`: the pair is
    marked already (an import never changes a marked pair's kind); `refused`: `reason` says why.
    """

    child_id: str
    other_id: str
    kind: str
    lines: list[int]
    action: RelationAction = "add"
    reason: str = ""


@dataclass
class ImportPlan:
    table: ImportTable
    rows: list[PlannedRow]
    new_children: list[str]
    new_photos: int
    relations: list[PlannedRelation] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {"rows": len(self.rows), "to_import": 0, "already_imported": 0, "duplicate": 0,
                  "refused": 0, "new_children": len(self.new_children), "new_photos": self.new_photos}
        for planned in self.rows:
            key = {"import": "to_import", "done": "already_imported"}.get(planned.action, planned.action)
            counts[key] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        """JSON-ready dry-run report (the API's and the CLI's)."""
        return {
            "counts": self.counts(),
            "box_format": self.table.columns.box_format,
            "box_rule": self.table.columns.box_rule or "no box columns",
            "columns": {k: v for k, v in self.table.columns.__dict__.items()
                        if k not in {"box_format", "box_rule"} and v},
            "new_children": self.new_children,
            "rows": [
                {"line": p.row.line, "child_id": p.row.external_id, "image": p.row.image,
                 "action": p.action, "reason": p.reason}
                for p in self.rows
            ],
            "relations": [r.__dict__ for r in self.relations],
        }


#: how far a CSV box may reach past the photo's edge, as a share of the box's own width / height
#: (a face at the edge of a photo has a box that crosses it, as the detector's boxes do)
BOX_EDGE_MARGIN = 0.1
_EXIF_ORIENTATION = 0x0112


def photo_header(data: bytes, max_pixels: int) -> tuple[int, int] | str:
    """The upright (width, height) of a photo from its header, or why it is not a usable photo."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    from childface.vision.decode import ACCEPTED_FORMATS, FORMAT_NAMES  # the decoder's formats (HEIC too)

    try:
        with PILImage.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            width, height = img.size
            # EXIF orientations 5-8 turn the photo a quarter: decoding makes it upright
            if img.getexif().get(_EXIF_ORIENTATION) in {5, 6, 7, 8}:
                width, height = height, width
    except PILImage.DecompressionBombError:
        return "photo has too many pixels"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return f"not a readable photo ({FORMAT_NAMES})"
    if width < 1 or height < 1:
        return "photo has no pixels"
    if width * height > max_pixels:
        return f"photo has {width}x{height} pixels, more than the limit of {max_pixels}"
    return width, height


def row_problem(row: CsvRow, size: tuple[int, int]) -> str | None:
    """Why a row cannot import a photo of `size` (width, height), or None: the decision the dry run and
    the run share for everything the CSV row and the photo's header alone settle."""
    if row.box is None:
        return None
    width, height = size
    x1, y1, x2, y2 = row.box
    mx, my = (x2 - x1) * BOX_EDGE_MARGIN, (y2 - y1) * BOX_EDGE_MARGIN
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return f"box {_box_text(row.box)} lies outside the {width}x{height} photo"
    if x1 < -mx or y1 < -my or x2 > width + mx or y2 > height + my:
        return f"box {_box_text(row.box)} lies partly outside the {width}x{height} photo"
    return None


def _box_text(box: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def plan_import(*, db: Database, table: ImportTable, source: PhotoSource, max_pixels: int) -> ImportPlan:
    """Dry run: what importing `table` would do, without changing anything."""
    planned: list[PlannedRow] = []
    for row in table.rows:
        if row.error:
            planned.append(PlannedRow(row, "refused", row.error))
            continue
        try:
            data = source.read(row.image)
        except (FileNotFoundError, ValueError, OSError) as exc:
            planned.append(PlannedRow(row, "refused", str(exc) or f"{row.image} cannot be read"))
            continue
        header = photo_header(data, max_pixels)
        problem = header if isinstance(header, str) else row_problem(row, header)
        if problem:
            planned.append(PlannedRow(row, "refused", problem))
            continue
        planned.append(PlannedRow(row, "import", sha256=sha256_hex(data)))

    wanted_shas = {p.sha256 for p in planned if p.sha256}
    wanted_ids = {p.row.external_id for p in planned if p.action == "import"}
    stored: dict[str, list[tuple[int, list[float], str | None]]] = {}
    known_children: dict[str, ChildStatus] = {}
    with db.session() as session:
        for chunk in _chunks(sorted(wanted_shas), 500):
            for sha, face_id, x1, y1, x2, y2, ext in session.execute(
                select(Image.sha256, Face.id, Face.box_x1, Face.box_y1, Face.box_x2, Face.box_y2,
                       Child.external_id)
                .join(Face, Face.image_id == Image.id)
                .outerjoin(Child, Child.id == Face.child_id)
                .where(Image.sha256.in_(chunk))
            ):
                stored.setdefault(sha, []).append((face_id, [x1, y1, x2, y2], ext))
        for chunk in _chunks(sorted(wanted_ids), 500):
            query = select(Child.external_id, Child.status).where(Child.external_id.in_(chunk))
            known_children.update((ext, status) for ext, status in session.execute(query))

    # rows are judged in CSV order: the same photo and face twice in the CSV is a duplicate first
    # (so a re-run reports it as the first run did), then the database says what is already there
    seen: dict[str, list[PlannedRow]] = {}  # sha -> earlier rows of that photo that import or did
    for p in planned:
        if p.action != "import":
            continue
        assert p.sha256 is not None
        box = p.row.box
        for earlier in seen.get(p.sha256, []):
            other = earlier.row.box
            # no box twice, or two boxes on one face; a boxed and an unboxed row are told apart at
            # detection (the same face twice becomes a duplicate there, an unboxed group photo is refused)
            if (box is None and other is None) or (
                box is not None and other is not None and iou(box, other) >= SAME_FACE_IOU
            ):
                p.action = "duplicate"
                p.reason = f"same photo{' and face' if box else ''} as line {earlier.row.line}"
                break
        if p.action != "import":
            continue
        if known_children.get(p.row.external_id) == ChildStatus.archived:
            p.action, p.reason = "refused", f"child {p.row.external_id} is archived (unarchive to add photos)"
            continue
        for face_id, face_box, owner in stored.get(p.sha256, []):
            if box is None or iou(box, face_box) >= MIN_BOX_IOU:
                if owner == p.row.external_id:
                    p.action, p.face_id = "done", face_id
                    p.reason = f"already imported (face {face_id})"
                else:
                    p.action = "duplicate"
                    p.reason = (f"this face is already enrolled for child {owner}" if owner
                                else "this face is already in the database (awaiting review)")
                break
        if p.action in {"import", "done"}:
            seen.setdefault(p.sha256, []).append(p)

    importing = [p for p in planned if p.action == "import"]
    new_children = sorted({p.row.external_id for p in importing} - set(known_children))
    new_photos = len({p.sha256 for p in importing} - set(stored))
    return ImportPlan(table=table, rows=planned, new_children=new_children, new_photos=new_photos,
                      relations=plan_relations(db, planned))


def plan_relations(db: Database, planned: list[PlannedRow]) -> list[PlannedRelation]:
    """The sibling and twin pairs the CSV names, each with its action (`PlannedRelation`).

    A pair may name a child of the file (one with a row that imports or was imported) or one
    already in the database; a child merged into another, a child found in neither, or one pair
    named as siblings and as twins is refused. The dry run and the import share this decision.
    """
    from childface.services.relations import pair_kinds

    pairs: dict[tuple[str, str], PlannedRelation] = {}
    for p in planned:
        for other, kind in p.row.relatives:
            key = tuple(sorted((p.row.external_id, other)))
            relation = pairs.setdefault(key, PlannedRelation(p.row.external_id, other, kind, []))
            if p.row.line not in relation.lines:
                relation.lines.append(p.row.line)
            if relation.kind != kind:
                relation.action = "refused"
                relation.reason = f"{key[0]} and {key[1]} are named both siblings and twins"
    if not pairs:
        return []
    in_file = {p.row.external_id for p in planned if p.action in {"import", "done"}}
    named = sorted({ext for key in pairs for ext in key})
    with db.session() as session:
        known: dict[str, tuple[int, int | None]] = {}  # external id -> (id, merged into)
        for chunk in _chunks(named, 500):
            query = select(Child.external_id, Child.id, Child.merged_into_id).where(
                Child.external_id.in_(chunk))
            known.update((ext, (cid, merged)) for ext, cid, merged in session.execute(query))
        ids = {key: (known[key[0]][0], known[key[1]][0]) for key in pairs
               if key[0] in known and key[1] in known}
        marked = pair_kinds(session, [tuple(sorted(pair)) for pair in ids.values()])
    for key, relation in pairs.items():
        if relation.action == "refused":
            continue
        for ext in key:
            if ext in known and known[ext][1] is not None:
                relation.action, relation.reason = "refused", f"child {ext} was merged into another child"
            elif ext not in known and ext not in in_file:
                relation.action = "refused"
                relation.reason = f"child {ext} is neither imported by this file nor in the database"
        kind = marked.get(tuple(sorted(ids[key]))) if key in ids else None
        if relation.action == "add" and kind is not None:
            relation.action = "exists"
            relation.reason = f"already marked as {kind.value}s" + (
                "" if kind.value == relation.kind else " (an import does not change a marked pair)")
    return list(pairs.values())


def _mark_relations(db: Database, actor: Actor, plan: ImportPlan) -> dict[str, int]:
    """Mark the plan's `add` pairs whose children both exist now (one unit of work and event each)."""
    from childface.services.relations import set_relation

    adding = [r for r in plan.relations if r.action == "add"]
    named = sorted({ext for r in adding for ext in (r.child_id, r.other_id)})
    ids: dict[str, int] = {}
    with db.session() as session:
        for chunk in _chunks(named, 500):
            query = select(Child.external_id, Child.id).where(Child.external_id.in_(chunk))
            ids.update((ext, cid) for ext, cid in session.execute(query))
    counts = {"relations_added": 0, "relations_skipped": 0}
    for relation in adding:
        if relation.child_id not in ids or relation.other_id not in ids:
            counts["relations_skipped"] += 1  # a child none of whose rows imported
            continue
        try:
            set_relation(db=db, actor=actor, child_id=ids[relation.child_id], other_id=ids[relation.other_id],
                         kind=relation.kind)
            counts["relations_added"] += 1
        except (Conflict, InvalidInput, NotFound):  # marked, merged or erased meanwhile
            counts["relations_skipped"] += 1
    return counts


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---- the report -----------------------------------------------------------------------------------


@dataclass
class RowOutcome:
    line: int
    child_id: str
    image: str
    status: RowStatus
    reason: str = ""
    face_id: int | None = None


REPORT_FIELDS = ("line", "child_id", "image", "status", "reason", "face_id")


def _cell(value: object) -> str:
    # staff open reports in spreadsheets: cells a spreadsheet would run as a formula are made inert
    return "" if value is None else neutralise_cell(str(value))


def write_report(outcomes: Iterable[RowOutcome], stream: io.TextIOBase | Any) -> None:
    writer = csv.writer(stream)
    writer.writerow(REPORT_FIELDS)
    for o in outcomes:
        writer.writerow([_cell(getattr(o, f)) for f in REPORT_FIELDS])


def report_csv(outcomes: Iterable[RowOutcome]) -> str:
    buffer = io.StringIO()
    write_report(outcomes, buffer)
    return buffer.getvalue()


def outcomes_from_plan(plan: ImportPlan) -> dict[int, RowOutcome]:
    """What the plan already decides (refused, duplicate, already imported), by line."""
    decided: dict[int, RowOutcome] = {}
    for p in plan.rows:
        if p.action == "import":
            continue
        status: RowStatus = "imported" if p.action == "done" else p.action  # type: ignore[assignment]
        decided[p.row.line] = RowOutcome(p.row.line, p.row.external_id, p.row.image, status, p.reason,
                                         p.face_id)
    return decided


# ---- the import -----------------------------------------------------------------------------------


@dataclass
class ImportProgress:
    """Passed to the progress callback after each batch (and once at the start)."""

    done: int  # rows with a final outcome
    total: int
    counts: dict[str, int]


@dataclass
class ImportResult:
    run_id: int
    outcomes: list[RowOutcome]
    counts: dict[str, int]
    seconds: float
    photos_processed: int
    report_path: Path | None = None

    @property
    def photos_per_second(self) -> float:
        return self.photos_processed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Photo:
    """One distinct photo of a batch and the CSV rows that point at it."""

    sha256: str
    rows: list[PlannedRow]
    data: bytes = b""
    rgb: np.ndarray | None = None
    error: str | None = None
    #: when it was taken (EXIF or the time it was read), read with the pixels: never under the write lock
    taken: PhotoDate | None = None
    #: rows of this photo refused by `row_problem`: line -> reason
    refused: dict[int, str] = field(default_factory=dict)


@dataclass
class _Accepted:
    planned: PlannedRow
    photo: _Photo
    face: Any  # childface.vision.pipeline.DetectedFace


@dataclass
class _Batch:
    photos: list[_Photo] = field(default_factory=list)


def _count(outcomes: Iterable[RowOutcome]) -> dict[str, int]:
    counts = {"imported": 0, "duplicate": 0, "refused": 0}
    for o in outcomes:
        counts[o.status] += 1
    return counts


#: enrollment's reason codes in the words the report uses
REASON_WORDS = {
    "no_face": "no face found in the photo",
    "several_faces_no_hint": "several faces in the photo and no box says which one",
    "hint_matches_no_face": f"the box matches no detected face (overlap below {MIN_BOX_IOU})",
    "too_small": "face too small",
    "blurred": "blurred",
    "profile": "face turned away",
    "tilted": "head tilted too far",
    "low_detector_score": "face unclear",
    "low_quality": "low overall quality",
}


def _words(codes: Iterable[str]) -> str:
    return ", ".join(REASON_WORDS.get(code, code.replace("_", " ")) for code in codes)


def run_import(
    *,
    db: Database,
    media: Any,  # childface.services.media.MediaStore
    pipeline: Any,  # childface.vision.pipeline.FacePipeline
    model_db_id: int,
    table: ImportTable,
    source: PhotoSource,
    actor: Actor,
    source_name: str,
    max_pixels: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    report_path: Path | None = None,
    progress: Callable[[ImportProgress], None] | None = None,
    after_commit: Callable[[], None] | None = None,
    plan: ImportPlan | None = None,
    run_id: int | None = None,
    consistency: ConsistencyCheck | None = None,
    strict: bool = False,
    local_zone: str = "UTC",
) -> ImportResult:
    """Import every importable row; see the module docstring for batches, audit and resume.

    `run_id`: a run opened beforehand with `start_run` (the API answers with it before the
    import ends); by default one is opened here.
    `consistency`: check each face against its child's templates (services/consistency.py): a row
    whose face fails is imported with the reason `inconsistent_with_child: <scores>`, or refused
    with it when `strict`; counted in `counts["inconsistent"]`.
    `local_zone`: the zone of EXIF dates that carry no offset (`attendance_timezone`).
    """
    from childface.vision.decode import ImageDecodeError, decode_image
    from childface.vision.exif import photo_date

    started = time.perf_counter()
    plan = plan or plan_import(db=db, table=table, source=source, max_pixels=max_pixels)
    decided = outcomes_from_plan(plan)
    outcomes: dict[int, RowOutcome] = dict(decided)
    total = len(plan.rows)
    # rows an earlier run imported count as imported, and also here: staff compare them with the check's
    already = {"already_imported": sum(p.action == "done" for p in plan.rows)}
    flagged: dict[int, str] = {}  # line -> why its face failed the consistency check
    names = _child_names(table)

    if run_id is None:
        run_id = start_run(db=db, actor=actor, source_name=source_name, plan=plan)

    def notify() -> None:
        if progress is not None:
            progress(ImportProgress(done=len(outcomes), total=total,
                                    counts={**_count(outcomes.values()), **already,
                                            "inconsistent": len(flagged)}))

    def load(batch: _Batch) -> _Batch:
        # runs in a worker thread, overlapped with the previous batch's inference
        for photo in batch.photos:
            try:
                photo.data = source.read(photo.rows[0].row.image)
                photo.rgb = decode_image(photo.data, max_pixels=max_pixels)
            except (ImageDecodeError, FileNotFoundError, ValueError, OSError) as exc:
                photo.error = f"photo cannot be read: {exc}"
                continue
            photo.taken = photo_date(photo.data, local_zone=local_zone)
            # the dry run's decision again, on the photo as read now (the plan may be older)
            size = (int(photo.rgb.shape[1]), int(photo.rgb.shape[0]))
            photo.refused = {p.row.line: why for p in photo.rows if (why := row_problem(p.row, size))}
        return batch

    batches = _batches([p for p in plan.rows if p.action == "import"], batch_size)
    photos_processed = 0
    status = ImportStatus.failed
    error: str | None = None
    children: dict[str, int] = {}
    created: list[str] = []
    related: dict[str, int] = {}  # relations_added, relations_skipped (a CSV with sibling_of / twin_of)
    heartbeat = _Heartbeat(db, run_id)
    try:
        notify()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-decode") as pool:
            pending: Future[_Batch] | None = pool.submit(load, batches[0]) if batches else None
            for k in range(len(batches)):
                batch = pending.result()  # type: ignore[union-attr]
                pending = pool.submit(load, batches[k + 1]) if k + 1 < len(batches) else None
                photos_processed += len(batch.photos)
                accepted = _detect_and_select(pipeline, batch, outcomes)
                if accepted:
                    _ensure_children(db, actor, accepted, names, children, created)
                    if consistency is not None:
                        accepted = _check_consistency(db, consistency, accepted, children, outcomes, flagged,
                                                      strict)
                    if accepted:  # strict may have refused them all
                        _commit_batch(db, media, actor, run_id, model_db_id, accepted, children, outcomes)
                    for line, note in flagged.items():  # imported despite the check: the report says so
                        if outcomes[line].status == "imported" and not outcomes[line].reason:
                            outcomes[line].reason = note
                    if after_commit is not None:
                        after_commit()
                notify()
        if plan.relations:
            related = _mark_relations(db, actor, plan)
        status = ImportStatus.finished
    except BaseException as exc:
        # the kind of failure only: a driver's message may quote row values (names) into the audit
        error = f"stopped by {type(exc).__name__}"
        raise
    finally:
        heartbeat.stop()
        ordered = [outcomes[p.row.line] for p in plan.rows if p.row.line in outcomes]
        if report_path is not None:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            with report_path.open("w", newline="", encoding="utf-8") as fh:
                write_report(ordered, fh)
        counts = {**_count(ordered), **already, "inconsistent": len(flagged), "rows": total,
                  "children_created": len(created), **related}
        _finish_run(db, actor, run_id, status, counts, report_path, error)
    return ImportResult(run_id=run_id, outcomes=ordered, counts=counts, seconds=time.perf_counter() - started,
                        photos_processed=photos_processed, report_path=report_path)


def _child_names(table: ImportTable) -> dict[str, tuple[str | None, str | None]]:
    """external id -> (first name given, first group given) across the whole CSV."""
    names: dict[str, tuple[str | None, str | None]] = {}
    for row in table.rows:
        if row.error:
            continue
        name, group = names.get(row.external_id, (None, None))
        names[row.external_id] = (name or row.name, group or row.group)
    return names


def _batches(rows: list[PlannedRow], batch_size: int) -> list[_Batch]:
    """Group rows by photo (a group photo is decoded and detected once), `batch_size` photos a batch."""
    photos: dict[str, _Photo] = {}
    for p in rows:
        assert p.sha256 is not None
        photos.setdefault(p.sha256, _Photo(sha256=p.sha256, rows=[])).rows.append(p)
    ordered = list(photos.values())
    return [_Batch(ordered[i : i + batch_size]) for i in range(0, len(ordered), batch_size)]


def _detect_and_select(pipeline: Any, batch: _Batch, outcomes: dict[int, RowOutcome]) -> list[_Accepted]:
    def refuse(p: PlannedRow, reason: str) -> None:
        outcomes[p.row.line] = RowOutcome(p.row.line, p.row.external_id, p.row.image, "refused", reason)

    readable = [photo for photo in batch.photos if photo.error is None]
    for photo in batch.photos:
        if photo.error is not None:
            for p in photo.rows:
                refuse(p, photo.error)
    results = pipeline.process([photo.rgb for photo in readable]) if readable else []
    accepted: list[_Accepted] = []
    for photo, faces in zip(readable, results, strict=True):
        claimed: dict[int, PlannedRow] = {}
        for p in photo.rows:
            if p.row.line in photo.refused:
                refuse(p, photo.refused[p.row.line])
                continue
            index, codes = select_face(faces, p.row.box)
            if index is None:
                refuse(p, _words(codes))
                continue
            if index in claimed:
                outcomes[p.row.line] = RowOutcome(p.row.line, p.row.external_id, p.row.image, "duplicate",
                                                  f"same face as line {claimed[index].row.line}")
                continue
            face = faces[index]
            if not face.quality.passed or face.embedding is None:
                why = _words(face.quality.reasons) or "low quality"
                refuse(p, f"face refused by the quality gate: {why}")
                continue
            claimed[index] = p
            accepted.append(_Accepted(p, photo, face))
    return accepted


def _check_consistency(
    db: Database,
    check: ConsistencyCheck,
    accepted: list[_Accepted],
    children: dict[str, int],
    outcomes: dict[int, RowOutcome],
    flagged: dict[int, str],
    strict: bool,
) -> list[_Accepted]:
    """The consistency check on a batch's faces, in CSV order; the rows to store.

    A face is compared with its child's stored templates and with the faces of this batch kept
    before it for the same child. A failing row is noted in `flagged`; with `strict` it is refused.
    """
    kept: list[_Accepted] = []
    batch_faces: dict[str, list[np.ndarray]] = {}  # this batch's kept faces per child, not stored yet
    for a in accepted:
        row = a.planned.row
        verdict = check.check(children.get(row.external_id), a.face.embedding,
                              also_own=batch_faces.get(row.external_id, []))
        if verdict is not None and not verdict.consistent:
            other = None
            if verdict.other_child_id is not None:
                with db.session() as session:
                    query = select(Child.external_id).where(Child.id == verdict.other_child_id)
                    other = session.scalar(query)
            flagged[row.line] = f"{CONSISTENCY_REASON}: {verdict.words(other)}"
            if strict:
                outcomes[row.line] = RowOutcome(row.line, row.external_id, row.image, "refused",
                                                f"{flagged[row.line]} (strict import)")
                continue
        batch_faces.setdefault(row.external_id, []).append(a.face.embedding)
        kept.append(a)
    return kept


def _ensure_children(
    db: Database,
    actor: Actor,
    accepted: list[_Accepted],
    names: dict[str, tuple[str | None, str | None]],
    children: dict[str, int],
    created: list[str],
) -> None:
    """Find or create (one `child.created` unit of work each) the children this batch needs."""
    from childface.services.children import create_child

    wanted = sorted({a.planned.row.external_id for a in accepted} - set(children))
    if not wanted:
        return
    with db.session() as session:
        for ext, child_id in session.execute(
            select(Child.external_id, Child.id).where(Child.external_id.in_(wanted))
        ):
            children[ext] = child_id
    for ext in wanted:
        if ext in children:
            continue
        name, group = names.get(ext, (None, None))
        try:
            child = create_child(db=db, actor=actor, external_id=ext, name=name or ext, group=group)
            children[ext] = child.id
            created.append(ext)
        except Conflict:  # created meanwhile by someone else: use theirs
            with db.session() as session:
                children[ext] = session.scalar(select(Child.id).where(Child.external_id == ext))


def _commit_batch(
    db: Database,
    media: Any,
    actor: Actor,
    run_id: int,
    model_db_id: int,
    accepted: list[_Accepted],
    children: dict[str, int],
    outcomes: dict[int, RowOutcome],
) -> None:
    """Store the batch's photos and faces in one unit of work with one `import.batch` event.

    A face some other writer stored meanwhile (another import, an enrollment) is not stored twice:
    `persist_face` refuses it under the photo's lock and the row becomes a `duplicate`.
    """
    from childface.db.models import ImageSource
    photos: dict[str, _Photo] = {}
    for a in accepted:
        photos.setdefault(a.photo.sha256, a.photo)
    stored: list[tuple[_Accepted, Face]] = []
    duplicates: list[tuple[_Accepted, FaceAlreadyStored]] = []
    with ExitStack() as held:
        # media contract: hold each photo (in a fixed order: no deadlock) across file write and commit
        for sha in sorted(photos):
            held.enter_context(media.hold(sha))
        paths = {sha: media.locate(photo.data)[1] for sha, photo in photos.items()}
        # announced before they are written, settled after the commit: a crash strands no file
        held.enter_context(pending_writes(db, media, paths.items()))
        for photo in photos.values():
            store_photo(media, photo.data)
        with db.unit_of_work(actor) as uow:
            for a in accepted:
                row, rgb = a.planned.row, a.photo.rgb
                assert rgb is not None
                try:
                    face = persist_face(
                        uow.session, sha256=a.photo.sha256, path=paths[a.photo.sha256],
                        width=int(rgb.shape[1]), height=int(rgb.shape[0]),
                        source=ImageSource.csv_import, uploaded_by=str(actor), face=a.face,
                        child_id=children[row.external_id], model_db_id=model_db_id, mask=row.mask,
                        arousal=row.arousal, valence=row.valence, taken=a.photo.taken,
                    )
                except FaceAlreadyStored as dup:
                    duplicates.append((a, dup))
                    continue
                stored.append((a, face))
            face_ids = [face.id for _, face in stored]
            uow.audit("import.batch", target_type="import_run", target_id=run_id,
                      after={"run_id": run_id, "photos": len(photos), "faces": len(face_ids),
                             "lines": [a.planned.row.line for a, _ in stored],
                             "duplicate_lines": [a.planned.row.line for a, _ in duplicates]},
                      face_ids=face_ids,
                      # each child that got a face: the batch is in that child's history
                      child_ids={children[a.planned.row.external_id] for a, _ in stored})
    for a, face in stored:
        row = a.planned.row
        outcomes[row.line] = RowOutcome(row.line, row.external_id, row.image, "imported", "", face.id)
    for a, dup in duplicates:
        row = a.planned.row
        outcomes[row.line] = RowOutcome(row.line, row.external_id, row.image, "duplicate",
                                        f"this face was stored meanwhile (face {dup.face_id})", dup.face_id)


# ---- one import at a time, across processes --------------------------------------------------------

#: how often a running import renews `import_runs.heartbeat_at`
HEARTBEAT_S = 10.0
#: a `running` run without a heartbeat for this long was interrupted (a crash, a lost machine)
STALE_AFTER_S = 90.0


def start_run(*, db: Database, actor: Actor, source_name: str, plan: ImportPlan) -> int:
    """Open an import run (`import_runs` row + `import.started` event); returns its id.

    At most one run is `running` in a deployment: the database's partial unique
    index refuses a second row, whichever process inserts it, and this raises
    Conflict `import_running`. A run left `running` by a process that died is
    failed first (`fail_interrupted_runs`), so a crash never blocks imports for good.
    """
    source_name = printable(source_name)[:500]  # file names are the client's text too
    for attempt in range(2):
        try:
            with db.unit_of_work(actor) as uow:
                run = ImportRun(source_name=source_name, status=ImportStatus.running,
                                started_by=str(actor), owner=current_owner(),
                                heartbeat_at=datetime.now(UTC))
                uow.session.add(run)
                uow.session.flush()
                uow.audit("import.started", target_type="import_run", target_id=run.id,
                          after={"source": source_name, "plan": plan.counts()})
            return run.id
        except IntegrityError:
            if attempt or not fail_interrupted_runs(db, stale_after_s=STALE_AFTER_S):
                break
    with db.session() as session:
        other = session.scalar(select(ImportRun).where(ImportRun.status == ImportStatus.running))
    detail = (f" (run {other.id}, {other.source_name}, started by {other.started_by} at "
              f"{other.started_at:%Y-%m-%d %H:%M} UTC)") if other is not None else ""
    raise Conflict(f"another import is running{detail}; wait for it to finish", code="import_running")


def _running_runs(db: Database) -> list[Any]:
    with db.session() as session:
        return list(session.execute(
            select(ImportRun.id, ImportRun.owner, ImportRun.heartbeat_at, ImportRun.started_at)
            .where(ImportRun.status == ImportStatus.running)
        ))


def _interruption(owner: str | None, beat: datetime | None, started: datetime,
                  cutoff: datetime) -> tuple[str, Any] | None:
    """Why a running run counts as interrupted (its error text and the condition that must still hold
    when it is marked), or None while its process may still be at work."""
    last = beat or started
    if owner_alive(owner, started) is False:
        return (f"interrupted: the importing process {owner} is no longer running",
                ImportRun.owner == owner)
    if last < cutoff:
        return (f"interrupted: no sign of life from {owner or 'the importing process'} since "
                f"{last:%Y-%m-%d %H:%M:%S} UTC",
                or_(ImportRun.heartbeat_at.is_(None), ImportRun.heartbeat_at < cutoff))
    return None


def interrupted_runs(db: Database, *, stale_after_s: float) -> list[int]:
    """Runs `fail_interrupted_runs` would mark failed now (read only)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
    return [run_id for run_id, owner, beat, started in _running_runs(db)
            if _interruption(owner, beat, started, cutoff) is not None]


def fail_interrupted_runs(db: Database, *, stale_after_s: float) -> list[int]:
    """Mark `running` runs whose process is gone as `failed` (`error` "interrupted: ..."); their ids.

    Gone: the owner ran on this host and is no longer alive (`services.owners`: a pid
    reused by a later process does not count), or no heartbeat came
    for `stale_after_s` seconds. Each is one unit of work with an `import.interrupted`
    event by the system. The finished batches of such a run stay; importing the same
    files again resumes it.
    """
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=stale_after_s)
    failed: list[int] = []
    for run_id, owner, beat, started in _running_runs(db):
        verdict = _interruption(owner, beat, started, cutoff)
        if verdict is None:
            continue
        error, still = verdict
        try:
            with db.unit_of_work(SYSTEM) as uow:
                changed = uow.session.execute(
                    update(ImportRun)
                    .where(ImportRun.id == run_id, ImportRun.status == ImportStatus.running, still)
                    .values(status=ImportStatus.failed, finished_at=now, error=error)
                ).rowcount
                if not changed:
                    raise _StillRunning  # it beat or finished meanwhile: nothing to record
                uow.audit("import.interrupted", target_type="import_run", target_id=run_id,
                          after={"status": ImportStatus.failed.value, "error": error})
        except _StillRunning:
            continue
        failed.append(run_id)
    return failed


class _StillRunning(Exception):
    pass


class _Heartbeat:
    """Renews a run's `heartbeat_at` every HEARTBEAT_S seconds from a thread, until stopped."""

    def __init__(self, db: Database, run_id: int) -> None:
        self.db, self.run_id = db, run_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"import-{run_id}-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                with self.db.transaction() as session:
                    session.execute(
                        update(ImportRun)
                        .where(ImportRun.id == self.run_id, ImportRun.status == ImportStatus.running)
                        .values(heartbeat_at=datetime.now(UTC))
                    )
            except SQLAlchemyError:  # a busy or briefly unreachable database: try again next beat
                log.warning("import run %s: heartbeat not recorded", self.run_id, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def _finish_run(
    db: Database, actor: Actor, run_id: int, status: ImportStatus, counts: dict[str, int],
    report_path: Path | None, error: str | None,
) -> None:
    with db.unit_of_work(actor) as uow:
        run = uow.session.get(ImportRun, run_id)
        run.status = status
        run.finished_at = datetime.now(UTC)
        run.counts = counts
        run.error = error
        run.report_path = str(report_path) if report_path is not None else None
        uow.audit("import.finished" if status == ImportStatus.finished else "import.failed",
                  target_type="import_run", target_id=run_id,
                  after={"status": status.value, **counts, **({"error": error} if error else {})})
