"""video: sightings, arrivals, camera status, webhook outbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 04:20:00

- sightings: one row per face track per source (`childface watch`), unique by (source, track_id).
- arrivals: a child's first confident match of a day; UNIQUE(child_id, day).
- camera_status: each source's heartbeat and, on request, its latest annotated frame.
- webhook_deliveries: the outbox of events for other systems, one row per event and URL.

New tables only: every id table is AUTOINCREMENT on SQLite (ids are never reused).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.create_table(
        "sightings",
        sa.Column("id", _BigId, nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("track_id", sa.String(length=64), nullable=False),
        sa.Column("child_id", _BigId, nullable=True),
        sa.Column("decision", _enum("sighting_decision", "match", "review", "unknown"), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("best_crop_path", sa.String(length=500), nullable=True),
        sa.Column("face_id", _BigId, nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_id"], ["children.id"], name=op.f("fk_sightings_child_id_children"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["face_id"], ["faces.id"], name=op.f("fk_sightings_face_id_faces"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sightings")),
        sa.UniqueConstraint("source", "track_id", name="uq_sightings_source_track"),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_sightings_child_id"), "sightings", ["child_id"])
    op.create_index(op.f("ix_sightings_face_id"), "sightings", ["face_id"])
    op.create_index("ix_sightings_first_seen", "sightings", ["first_seen"])

    op.create_table(
        "arrivals",
        sa.Column("id", _BigId, nullable=False),
        sa.Column("child_id", _BigId, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("sighting_id", _BigId, nullable=True),
        sa.Column("arrived_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_id"], ["children.id"], name=op.f("fk_arrivals_child_id_children"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["sighting_id"], ["sightings.id"], name=op.f("fk_arrivals_sighting_id_sightings"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_arrivals")),
        sa.UniqueConstraint("child_id", "day", name="uq_arrivals_child_day"),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_arrivals_child_id"), "arrivals", ["child_id"])
    op.create_index(op.f("ix_arrivals_day"), "arrivals", ["day"])

    op.create_table(
        "camera_status",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("uri_kind", sa.String(length=16), nullable=False),
        sa.Column(
            "state", _enum("camera_state", "starting", "running", "reconnecting", "stopped", "error"),
            nullable=False,
        ),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("faces_per_s", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("frame_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("frame_jpeg", sa.LargeBinary(), nullable=True),
        sa.Column("frame_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_camera_status")),
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _BigId, nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("child_id", _BigId, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_id"], ["children.id"], name=op.f("fk_webhook_deliveries_child_id_children"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_webhook_deliveries_child_id"), "webhook_deliveries", ["child_id"])
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_index(op.f("ix_webhook_deliveries_child_id"), table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("camera_status")
    op.drop_index(op.f("ix_arrivals_day"), table_name="arrivals")
    op.drop_index(op.f("ix_arrivals_child_id"), table_name="arrivals")
    op.drop_table("arrivals")
    op.drop_index("ix_sightings_first_seen", table_name="sightings")
    op.drop_index(op.f("ix_sightings_face_id"), table_name="sightings")
    op.drop_index(op.f("ix_sightings_child_id"), table_name="sightings")
    op.drop_table("sightings")
