"""The migrated schema is exactly the models' metadata, on both back ends."""

from __future__ import annotations

from sqlalchemy import inspect

from childface.db import Database
from childface.db.migrate import current_revision, head_revision, schema_differences
from childface.db.models import Base


def test_migrated_schema_equals_models(database: Database) -> None:
    assert current_revision(database) == head_revision()
    assert schema_differences(database) == []


def test_every_model_table_exists(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_schema_drift_is_detected(database: Database) -> None:
    # the comparison must be able to fail: drop a column behind Alembic's back
    with database.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE import_runs DROP COLUMN report_path")
    assert any("report_path" in repr(diff) for diff in schema_differences(database))
