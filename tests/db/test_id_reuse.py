"""Migrating an existing SQLite database: id counters start above every id the audit trail knows.

Before migration 0002, SQLite handed out max(id) + 1, so erasing the child (or
face) with the highest id gave its id to the next one, which then inherited
the erased one's audit history and tombstone. (The same on a fresh database is
in tests/api/test_id_reuse.py, on both back ends.)
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from childface.db import Actor, Database
from childface.db.migrate import upgrade
from childface.services.children import create_child

NOW = "2026-01-01 00:00:00.000000"


def test_migrating_a_0001_database_keeps_counters_above_erased_ids(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(database, "0001")
        with database.engine.begin() as conn:
            for child_id in (1, 2):
                conn.execute(text(
                    "INSERT INTO children (id, external_id, display_name, status, created_at, updated_at) "
                    "VALUES (:id, :ext, 'Kid', 'active', :now, :now)"
                ), {"id": child_id, "ext": f"K{child_id}", "now": NOW})
            # children 3..7 and faces up to 12 existed once; child 7 was erased last (its tombstone)
            conn.execute(text(
                "INSERT INTO audit_events (at, actor, action, target_type, target_id, child_id, before, "
                "after, face_ids) VALUES (:now, 'user:admin', 'child.erased', 'child', '7', 7, :before, "
                ":after, :faces)"
            ), {"now": NOW, "before": json.dumps({"external_id": "K7"}),
                "after": json.dumps({"erased": True}), "faces": json.dumps([11, 12])})

        upgrade(database)

        child = create_child(db=database, actor=Actor("user", "admin"), external_id="K8", name="New")
        assert child.id == 8  # not 3: ids 3..7 belong to the audit trail
        with database.engine.begin() as conn:
            seqs = dict(conn.execute(text("SELECT name, seq FROM sqlite_sequence")).all())
        assert seqs["faces"] >= 12 and seqs["children"] == 8
    finally:
        database.dispose()
