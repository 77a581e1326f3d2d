"""ids never reused, one import at a time, durable file deletion, sign-in throttles

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 01:00:00

- SQLite: every table with a surrogate id is rebuilt with AUTOINCREMENT, so an
  erased child's (or face's) id never comes back; each table's counter starts
  above the highest id the audit trail has ever mentioned, not only the highest
  row left. PostgreSQL identities never go back: nothing to do there.
- import_runs: `heartbeat_at`, `error`, and a partial unique index that lets
  at most one run be `running`. Runs left `running` by a crash are marked
  failed first (a running process renews its heartbeat; there was none before).
- file_deletions: the journal of media files to delete after a commit.
- login_throttles: failed sign-ins per client address and per address+account.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID_TABLES = (
    "children",
    "images",
    "faces",
    "embedding_models",
    "embeddings",
    "audit_events",
    "users",
    "staff_sessions",
    "api_keys",
    "review_items",
    "import_runs",
)


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    if sqlite:
        _sqlite_autoincrement(bind)

    with op.batch_alter_table("import_runs") as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
    op.execute(
        "UPDATE import_runs SET status = 'failed', "
        "error = 'interrupted: the importing process stopped before it finished' "
        "WHERE status = 'running'"
    )
    op.create_index(
        "uq_import_runs_one_running",
        "import_runs",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )

    op.create_table(
        "file_deletions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_deletions")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_file_deletions_sha256"), "file_deletions", ["sha256"], unique=False)

    op.create_table(
        "login_throttles",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_throttles")),
    )


def _sqlite_autoincrement(bind: sa.engine.Connection) -> None:
    """Rebuild each id table as AUTOINCREMENT and seed its counter from everything ever issued.

    Foreign keys must be off while parents are rebuilt (a DROP of a parent would
    cascade): `childface.db.migrate` turns them off around the whole upgrade on
    SQLite and runs `PRAGMA foreign_key_check` after it.
    """
    highest = {table: _max(bind, f"SELECT max({_pk(table)}) FROM {table}") for table in _ID_TABLES}
    # ids the audit trail mentions may belong to rows that are gone (erased): stay above them
    highest["children"] = max(highest["children"], _max(bind, "SELECT max(child_id) FROM audit_events"))
    highest["faces"] = max(
        highest["faces"],
        _max(
            bind,
            "SELECT max(CAST(j.value AS INTEGER)) FROM audit_events, json_each(audit_events.face_ids) j",
        ),
    )
    for table, target_type in (("children", "child"), ("faces", "face"), ("images", "image"),
                               ("users", "user"), ("api_keys", "api_key"), ("import_runs", "import_run"),
                               ("review_items", "review_item")):
        highest[table] = max(
            highest[table],
            _max(
                bind,
                "SELECT max(CAST(target_id AS INTEGER)) FROM audit_events "
                f"WHERE target_type = '{target_type}' AND target_id NOT GLOB '*[^0-9]*' AND target_id <> ''",
            ),
        )
    for table in _ID_TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    for table in _ID_TABLES:
        bind.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        bind.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, highest[table]))


def _pk(table: str) -> str:
    return "seq" if table == "audit_events" else "id"


def _max(bind: sa.engine.Connection, query: str) -> int:
    return int(bind.exec_driver_sql(query).scalar() or 0)


def downgrade() -> None:
    op.drop_table("login_throttles")
    op.drop_index(op.f("ix_file_deletions_sha256"), table_name="file_deletions")
    op.drop_table("file_deletions")
    op.drop_index("uq_import_runs_one_running", table_name="import_runs")
    with op.batch_alter_table("import_runs") as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("owner")
        batch_op.drop_column("heartbeat_at")
