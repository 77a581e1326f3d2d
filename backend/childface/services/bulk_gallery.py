"""The bulk path: children, photos, faces and embeddings inserted by the ten thousand.

The ORM path (one `Face` object, one flush, one overlap check per face) runs at
a few thousand faces a second; a million-face gallery would take over an hour.
Here each batch is one transaction of driver-level `executemany` inserts with
ids allocated up front (PostgreSQL: the table's own sequence; SQLite: past the
highest id ever issued), so the rows need no `RETURNING`, and it carries its one
audit event (DESIGN invariant 2):
`faces.bulk_insert`, listing every face id of the batch in `face_ids` and every
child in its history, so a running gallery catches up from the change feed
exactly as it does after an import.

What the caller vouches for: rows are new (no overlap check against stored
faces, unlike enrollment; photos are unique by sha256 as the schema insists),
vectors are the unit embeddings of `model_row`'s model, and the photo files
are in the media store (or, for a synthetic benchmark gallery, knowingly not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Table, insert, text
from sqlalchemy.orm import Session

from childface.db.models import Child, ChildStatus, Embedding, Face, Image, ReviewState, embedding_checksum
from childface.db.session import Actor, Database
from childface.index.base import check_vectors

BULK_ACTION = "faces.bulk_insert"


@dataclass
class BulkBatch:
    """One transaction's rows. Faces point at this batch's children and images by position
    (`child_index`, `image_index`), or at a stored child by `child_id`."""

    children: list[dict[str, Any]] = field(default_factory=list)  # Child columns (external_id, display_name)
    images: list[dict[str, Any]] = field(default_factory=list)  # Image columns (sha256, path, ...)
    faces: list[dict[str, Any]] = field(default_factory=list)  # Face columns + child_index/image_index
    vectors: np.ndarray | None = None  # (len(faces), dim) unit float32

    def __len__(self) -> int:
        return len(self.faces)


@dataclass(frozen=True)
class BulkResult:
    child_ids: list[int]
    face_ids: list[int]
    batches: int


def insert_batch(db: Database, actor: Actor, model_row: int, dim: int, batch: BulkBatch) -> tuple[list, list]:
    """Insert one batch in one transaction with its audit event; returns (child ids, face ids)."""
    vectors = check_vectors(batch.vectors if batch.vectors is not None else np.empty((0, dim)), dim)
    if len(vectors) != len(batch.faces):
        raise ValueError(f"{len(batch.faces)} faces but {len(vectors)} vectors")
    with db.unit_of_work(actor) as uow:
        session = uow.session
        child_ids = _insert(session, Child, [{"status": ChildStatus.active} | c for c in batch.children])
        image_ids = _insert(session, Image, batch.images)
        face_rows = []
        for face in batch.faces:
            row = {k: v for k, v in face.items() if k not in ("child_index", "image_index")}
            if "child_index" in face:
                row["child_id"] = child_ids[face["child_index"]]
            if "image_index" in face:
                row["image_id"] = image_ids[face["image_index"]]
            row.setdefault("review_state", ReviewState.enrolled)
            face_rows.append(row)
        face_ids = _insert(session, Face, face_rows)
        if face_ids:
            blobs = [v.astype("<f4").tobytes() for v in vectors]
            _executemany(
                session,
                Embedding.__table__,
                [
                    {"face_id": f, "model_id": model_row, "vector": b,
                     "checksum": embedding_checksum(model_row, b)}
                    for f, b in zip(face_ids, blobs, strict=True)
                ],
            )
        touched = sorted(set(child_ids) | {r["child_id"] for r in face_rows if r.get("child_id") is not None})
        uow.audit(
            BULK_ACTION,
            target_type="gallery",
            after={"children": len(child_ids), "images": len(image_ids), "faces": len(face_ids)},
            face_ids=face_ids,
            child_ids=touched,
        )
    return child_ids, face_ids


def bulk_insert(
    db: Database,
    actor: Actor,
    model_row: int,
    dim: int,
    batches: Iterable[BulkBatch],
    *,
    progress: Callable[[int], None] | None = None,
) -> BulkResult:
    """Insert every batch, one transaction each; `progress(faces so far)` after each."""
    all_children: list[int] = []
    all_faces: list[int] = []
    n = 0
    for batch in batches:
        children, faces = insert_batch(db, actor, model_row, dim, batch)
        n += 1
        all_children.extend(children)
        all_faces.extend(faces)
        if progress is not None:
            progress(len(all_faces))
    return BulkResult(all_children, all_faces, n)


def _insert(session: Session, model: type, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Plain executemany with ids allocated up front: the new ids, in the rows' order.

    `INSERT ... RETURNING` per row costs a statement per few hundred rows on SQLite
    and the ORM's bookkeeping per row; allocating the ids first lets the driver's
    own executemany run the batch.
    """
    if not rows:
        return []
    ids = _allocate_ids(session, model.__table__.name, len(rows))
    _executemany(session, model.__table__, [row | {"id": i} for row, i in zip(rows, ids, strict=True)])
    return ids


def _executemany(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """One driver-level executemany: the columns' own bind processors (enum, JSON, UTC
    datetime) applied once per value, Python-side defaults evaluated once per batch.

    SQLAlchemy's executemany builds and processes a parameter dict per row, which is most
    of the cost of a bulk insert; here each row is one tuple (or dict) straight to the driver.
    """
    keys = list(rows[0])
    if any(len(row) != len(keys) or row.keys() != rows[0].keys() for row in rows):
        raise ValueError(f"rows of {table.name} must all have the same columns")
    constants: dict[str, Any] = {}
    for column in table.columns:
        default = column.default
        if column.key not in rows[0] and default is not None and not default.is_sequence:
            constants[column.key] = default.arg(None) if default.is_callable else default.arg
    columns = [table.c[k] for k in keys + list(constants)]
    dialect = session.get_bind().dialect
    compiled = insert(table).compile(dialect=dialect, column_keys=[c.key for c in columns])
    # the dialect's own type (e.g. SQLite's DATETIME string format), as SQLAlchemy would use
    processors = {c.key: c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns}
    fixed = {k: (processors[k](v) if processors[k] else v) for k, v in constants.items()}
    names = compiled.positiontup if compiled.positional else [c.key for c in columns]
    plan = [(name, processors.get(name)) for name in names]
    values = []
    for row in rows:
        processed = [
            fixed[name] if name in fixed else (proc(row[name]) if proc else row[name]) for name, proc in plan
        ]
        values.append(tuple(processed) if compiled.positional else dict(zip(names, processed, strict=True)))
    session.connection().exec_driver_sql(str(compiled), values)


def _allocate_ids(session: Session, table: str, n: int) -> list[int]:
    """`n` fresh ids of `table`, never issued before (the schema's no-reuse rule holds)."""
    if session.get_bind().dialect.name == "postgresql":
        # the identity's own sequence: concurrent writers get other ids
        return list(
            session.scalars(
                text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
                {"t": table, "n": n},
            )
        )
    # SQLite: this unit of work holds the write lock (BEGIN IMMEDIATE); AUTOINCREMENT keeps
    # the highest id ever issued in sqlite_sequence, and explicit ids move it on
    issued = session.scalar(text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}) or 0
    highest = session.scalar(text(f"SELECT coalesce(max(id), 0) FROM {table}")) or 0  # noqa: S608 - our name
    first = max(int(issued), int(highest)) + 1
    return list(range(first, first + n))
