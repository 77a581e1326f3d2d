"""GET /audit: filters, pagination, CSV export with formula injection neutralised."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from childface.db import Actor

from .support import create_child


def test_filters_and_pagination(client: TestClient, auth) -> None:  # noqa: ANN001
    staff, admin, viewer = auth("staff"), auth("admin"), auth("viewer")
    a = create_child(client, staff, "A")
    b = create_child(client, auth(key="enroll"), "B")
    client.patch(f"/children/{a}", json={"notes": "likes trains"}, headers=staff)
    client.post(f"/children/{a}/archive", headers=staff)
    middle = datetime.now(UTC)
    time.sleep(0.05)
    client.post(f"/children/{b}/archive", headers=staff)

    def query(**params: object) -> dict:
        response = client.get("/audit", params=params, headers=viewer)
        assert response.status_code == 200, response.text
        return response.json()

    assert [e["action"] for e in query(child_id=a)["items"]] == [
        "child.archived",
        "child.updated",
        "child.created",
    ]
    assert query(actor="api_key:test-enroll")["items"][0]["child_id"] == b
    assert query(action="child.archived")["total"] == 2
    assert query(action="child.*", child_id=b)["total"] == 2
    assert [e["child_id"] for e in query(since=middle.isoformat())["items"]] == [b]
    assert query(until=middle.isoformat(), action="child.*")["total"] == 4
    assert query(since=(middle + timedelta(hours=1)).isoformat())["total"] == 0
    page = query(action="child.*", limit=2, offset=1)
    assert page["total"] == 5 and len(page["items"]) == 2 and page["items"][0]["child_id"] == a
    assert client.get("/audit", params={"limit": 0}, headers=admin).status_code == 422
    assert client.get("/audit", params={"since": "yesterday"}, headers=admin).status_code == 422


def test_csv_export_neutralises_formulas(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    child_id = create_child(client, staff, "X", name='=HYPERLINK("http://evil","x")')
    # events whose plain-text cells start with formula characters
    for value in ("=1+1", "+1", "-2", "@SUM(A1)", "\tTAB", "\rCR"):
        with runtime.db.unit_of_work(Actor("system", "test")) as uow:
            uow.audit("test.marker", target_type="note", target_id=value, child_id=child_id)
    for url, params in (("/audit.csv", {}), ("/audit", {"format": "csv"})):
        response = client.get(url, params={**params, "child_id": child_id}, headers=auth("viewer"))
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert len(rows) == 7
        targets = [r["target_id"] for r in rows if r["action"] == "test.marker"]
        assert targets == ["'=1+1", "'+1", "'-2", "'@SUM(A1)", "'\tTAB", "'\rCR"]
        for row in rows:
            assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values())
        assert "=HYPERLINK" in rows[0]["after"]  # inside the JSON cell, which starts with "{"
    assert client.get("/audit.csv").status_code == 401
