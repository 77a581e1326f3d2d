"""data lifecycle and identity care: checksums, model states, re-embedding jobs, removed faces kept for
undo, sibling and twin relations, photo dates, retired templates, review reasons

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 07:20:00

- embeddings.checksum: sha256 over the model row id and the vector bytes, backfilled.
- embedding_models.spec (how to load the embedder) and .state ("current" for at most one model).
- reembed_jobs: `childface reembed` runs (at most one running).
- removed_faces: a removed face's columns and embeddings, kept so the removal can be undone.
- child_relations: siblings and twins.
- images.taken_at / taken_at_source, backfilled with the upload time ("upload").
- faces.retired_at: templates the template policy retired (kept, not searched).
- children.archived_at, backfilled from updated_at for archived children.
- review_items.reasons.
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_BATCH = 5000


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    with op.batch_alter_table("embeddings") as batch_op:
        batch_op.add_column(sa.Column("checksum", sa.String(length=64), nullable=True))
    with op.batch_alter_table("embedding_models") as batch_op:
        batch_op.add_column(sa.Column("spec", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), nullable=False, server_default="available")
        )
    op.create_index(
        "uq_embedding_models_one_current", "embedding_models", ["state"], unique=True,
        sqlite_where=sa.text("state = 'current'"), postgresql_where=sa.text("state = 'current'"),
    )
    with op.batch_alter_table("images") as batch_op:
        batch_op.add_column(sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("taken_at_source", sa.String(length=16), nullable=True))
    with op.batch_alter_table("faces") as batch_op:
        batch_op.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("children") as batch_op:
        batch_op.add_column(sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("review_items") as batch_op:
        batch_op.add_column(sa.Column("reasons", sa.JSON(), nullable=True))

    op.create_table(
        "reembed_jobs",
        sa.Column("id", _BigId, nullable=False),
        sa.Column("model_id", _BigId, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_by", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("faces_per_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["embedding_models.id"], name=op.f("fk_reembed_jobs_model_id_embedding_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reembed_jobs")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_reembed_jobs_model_id"), "reembed_jobs", ["model_id"])
    op.create_index(
        "uq_reembed_jobs_one_running", "reembed_jobs", ["status"], unique=True,
        sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"),
    )

    op.create_table(
        "removed_faces",
        sa.Column("face_id", sa.BigInteger(), nullable=False),
        sa.Column("child_id", sa.BigInteger(), nullable=True),
        sa.Column("image_id", _BigId, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_removed_faces_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("face_id", name=op.f("pk_removed_faces")),
    )
    op.create_index(op.f("ix_removed_faces_child_id"), "removed_faces", ["child_id"])
    op.create_index(op.f("ix_removed_faces_image_id"), "removed_faces", ["image_id"])
    op.create_index(op.f("ix_removed_faces_seq"), "removed_faces", ["seq"])
    op.create_index(op.f("ix_removed_faces_removed_at"), "removed_faces", ["removed_at"])

    op.create_table(
        "child_relations",
        sa.Column("id", _BigId, nullable=False),
        sa.Column("child_a_id", _BigId, nullable=False),
        sa.Column("child_b_id", _BigId, nullable=False),
        sa.Column("kind", _enum("relation_kind", "sibling", "twin"), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_a_id"], ["children.id"], name=op.f("fk_child_relations_child_a_id_children"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["child_b_id"], ["children.id"], name=op.f("fk_child_relations_child_b_id_children"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_child_relations")),
        sa.UniqueConstraint("child_a_id", "child_b_id", name="uq_child_relations_pair"),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_child_relations_child_a_id"), "child_relations", ["child_a_id"])
    op.create_index(op.f("ix_child_relations_child_b_id"), "child_relations", ["child_b_id"])

    bind = op.get_bind()
    _backfill_checksums(bind)
    bind.execute(sa.text("UPDATE images SET taken_at = created_at, taken_at_source = 'upload'"))
    bind.execute(sa.text("UPDATE children SET archived_at = updated_at WHERE status = 'archived'"))


def _backfill_checksums(bind: sa.engine.Connection) -> None:
    # keyset pages: neither back end holds the whole table, and updates don't disturb the cursor
    embeddings = sa.table("embeddings", sa.column("id"), sa.column("model_id"), sa.column("vector"),
                          sa.column("checksum"))
    last = 0
    while True:
        rows = bind.execute(
            sa.select(embeddings.c.id, embeddings.c.model_id, embeddings.c.vector)
            .where(embeddings.c.id > last).order_by(embeddings.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        bind.execute(
            embeddings.update().where(embeddings.c.id == sa.bindparam("row_id")),
            [
                {"row_id": row_id,
                 "checksum": hashlib.sha256(b"%d:" % model_id + bytes(vector)).hexdigest()}
                for row_id, model_id, vector in rows
            ],
        )
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_index(op.f("ix_child_relations_child_b_id"), table_name="child_relations")
    op.drop_index(op.f("ix_child_relations_child_a_id"), table_name="child_relations")
    op.drop_table("child_relations")
    for name in ("removed_at", "seq", "image_id", "child_id"):
        op.drop_index(op.f(f"ix_removed_faces_{name}"), table_name="removed_faces")
    op.drop_table("removed_faces")
    op.drop_index("uq_reembed_jobs_one_running", table_name="reembed_jobs")
    op.drop_index(op.f("ix_reembed_jobs_model_id"), table_name="reembed_jobs")
    op.drop_table("reembed_jobs")
    with op.batch_alter_table("review_items") as batch_op:
        batch_op.drop_column("reasons")
    with op.batch_alter_table("children") as batch_op:
        batch_op.drop_column("archived_at")
    with op.batch_alter_table("faces") as batch_op:
        batch_op.drop_column("retired_at")
    with op.batch_alter_table("images") as batch_op:
        batch_op.drop_column("taken_at_source")
        batch_op.drop_column("taken_at")
    op.drop_index("uq_embedding_models_one_current", table_name="embedding_models")
    with op.batch_alter_table("embedding_models") as batch_op:
        batch_op.drop_column("state")
        batch_op.drop_column("spec")
    with op.batch_alter_table("embeddings") as batch_op:
        batch_op.drop_column("checksum")
