"""admin for daily work: children an event concerns, forced password change, dismissed duplicates,
run-time settings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 01:40:00

- audit_event_children: (seq, child_id) for every child an event concerns, backfilled from each
  event's `child_id`, a child target, the previous owner of a reassigned face (`before.child_id`),
  the children an erasure lists (`after.child_ids`) and, for events that list faces but name no
  child (import batches), the faces' current children.
- users.must_change_password.
- duplicate_dismissals and runtime_settings tables.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_event_children",
        sa.Column("seq", _BigId, nullable=False),
        sa.Column("child_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["seq"], ["audit_events.seq"], name=op.f("fk_audit_event_children_seq_audit_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", "child_id", name=op.f("pk_audit_event_children")),
    )
    op.create_index(op.f("ix_audit_event_children_child_id"), "audit_event_children", ["child_id"])
    _backfill_event_children(op.get_bind())

    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("must_change_password", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    op.create_table(
        "duplicate_dismissals",
        sa.Column("id", _BigId, nullable=False),
        sa.Column("child_a_id", _BigId, nullable=False),
        sa.Column("child_b_id", _BigId, nullable=False),
        sa.Column("dismissed_by", sa.String(length=200), nullable=False),
        sa.Column("dismissed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_a_id"], ["children.id"], name=op.f("fk_duplicate_dismissals_child_a_id_children"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["child_b_id"], ["children.id"], name=op.f("fk_duplicate_dismissals_child_b_id_children"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_duplicate_dismissals")),
        sa.UniqueConstraint("child_a_id", "child_b_id", name="uq_duplicate_dismissals_pair"),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_duplicate_dismissals_child_a_id"), "duplicate_dismissals", ["child_a_id"])
    op.create_index(op.f("ix_duplicate_dismissals_child_b_id"), "duplicate_dismissals", ["child_b_id"])

    op.create_table(
        "runtime_settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_runtime_settings")),
    )


def _json(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def _backfill_event_children(bind: sa.engine.Connection) -> None:
    events = sa.table(
        "audit_events", sa.column("seq"), sa.column("child_id"), sa.column("target_type"),
        sa.column("target_id"), sa.column("before"), sa.column("after"), sa.column("face_ids"),
    )
    faces = sa.table("faces", sa.column("id"), sa.column("child_id"))
    table = sa.table("audit_event_children", sa.column("seq"), sa.column("child_id"))
    owned = sa.select(faces.c.id, faces.c.child_id).where(faces.c.child_id.is_not(None))
    owner = dict(bind.execute(owned).all())
    pending: list[dict[str, int]] = []
    # streamed: a long audit trail is never held in memory at once
    rows = bind.execute(sa.select(events).order_by(events.c.seq).execution_options(yield_per=5000))
    for seq, child_id, target_type, target_id, before, after, face_ids in rows:
        concerned: set[int] = set()
        if child_id is not None:
            concerned.add(int(child_id))
        if target_type == "child" and target_id and str(target_id).isdigit():
            concerned.add(int(target_id))
        before, after, face_ids = _json(before), _json(after), _json(face_ids)
        if isinstance(before, dict) and isinstance(before.get("child_id"), int):
            concerned.add(before["child_id"])
        if isinstance(after, dict):
            concerned.update(c for c in after.get("child_ids") or () if isinstance(c, int))
        if not concerned and face_ids:
            concerned.update(owner[f] for f in face_ids if f in owner)
        pending.extend({"seq": int(seq), "child_id": c} for c in sorted(concerned))
        if len(pending) >= 5000:
            bind.execute(table.insert(), pending)
            pending = []
    if pending:
        bind.execute(table.insert(), pending)


def downgrade() -> None:
    op.drop_table("runtime_settings")
    op.drop_index(op.f("ix_duplicate_dismissals_child_b_id"), table_name="duplicate_dismissals")
    op.drop_index(op.f("ix_duplicate_dismissals_child_a_id"), table_name="duplicate_dismissals")
    op.drop_table("duplicate_dismissals")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("must_change_password")
    op.drop_index(op.f("ix_audit_event_children_child_id"), table_name="audit_event_children")
    op.drop_table("audit_event_children")
