"""Attendance: the day's arrivals per group with times and cameras, who has not arrived, another day, a
group filter, and a click that opens the child; arrivals recorded the way `childface watch` records them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from admin_ui import live, ui
from streamlit.testing.v1 import AppTest

from childface.services.sightings import TrackReport, record_track

from .conftest import LiveApi, client, texts, unique


def _answer() -> list[dict]:
    return [
        {"group": "robins", "arrived": [
            {"child_id": 2, "external_id": "R2", "name": "Zoe", "arrived_at": "2026-11-26T07:55:00+00:00",
             "source": "front-door"},
            {"child_id": 1, "external_id": "R1", "name": "Ada", "arrived_at": "2026-11-26T08:10:00Z",
             "source": "garden"}],
         "absent": [{"child_id": 3, "external_id": "R3", "name": "bea"},
                    {"child_id": 4, "external_id": "R4", "name": "Ava"}]},
        {"group": None, "arrived": [], "absent": [{"child_id": 5, "external_id": "N1", "name": "Nia"}]},
        {"group": "Owls", "arrived": [], "absent": []},
    ]


def test_groups_are_named_ordered_and_filtered() -> None:
    groups = _answer()
    assert live.group_names(groups) == ["Owls", "robins", "(no group)"]  # no group last
    assert [g["group"] for g in live.pick_groups(groups, live.ALL_GROUPS)] == ["Owls", "robins", None]
    assert [g["group"] for g in live.pick_groups(groups, "(no group)")] == [None]
    assert live.pick_groups(groups, "Eagles") == []
    assert live.totals(groups) == (2, 3)
    assert live.totals(live.pick_groups(groups, "robins")) == (2, 2)


def test_arrivals_in_the_order_they_came_at_local_times_and_absent_children_by_name() -> None:
    robins = _answer()[0]
    berlin = ZoneInfo("Europe/Berlin")  # UTC+1 in November
    assert live.arrival_rows(live.arrived_children(robins), berlin) == [
        {"Time": "08:55", "Name": "Zoe", "ID": "R2", "Camera": "front-door"},
        {"Time": "09:10", "Name": "Ada", "ID": "R1", "Camera": "garden"},
    ]
    assert live.absent_rows(live.absent_children(robins)) == [{"Name": "Ava", "ID": "R4"},
                                                              {"Name": "bea", "ID": "R3"}]
    assert live.group_heading(robins, today=True) == "robins: 2 of 4 arrived, 2 not yet"
    assert live.group_heading(robins, today=False) == "robins: 2 of 4 arrived, 2 did not come"
    assert live.group_heading(_answer()[2], today=True) == "Owls: 0 of 0 arrived"


def test_time_zones_from_the_api_and_naive_times_as_utc() -> None:
    assert live.zone_named("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert live.zone_named("Not/AZone") is UTC and live.zone_named(None) is UTC
    assert live.parse_time("2026-11-26T07:55:00") == datetime(2026, 11, 26, 7, 55, tzinfo=UTC)
    assert live.clock("2026-11-26T23:30:00Z", ZoneInfo("Asia/Tokyo")) == "08:30"


# ---- the page, against the real API --------------------------------------------------------------

TOKYO = ZoneInfo("Asia/Tokyo")  # the kindergarten's zone here: far from the test machine's, no DST


def arrive(server: LiveApi, child_id: int, source: str, at: datetime) -> list[str]:
    """A confident match of the child at a camera, recorded as `childface watch` records it."""
    report = TrackReport(source=source, track_id=unique("track"), decision="match", child_id=child_id,
                         score=0.93, candidates=[(child_id, 0.93)], first_seen=at,
                         last_seen=at + timedelta(seconds=3), frames=40, best_chip=None,
                         best_embedding=None, final=True)
    return record_track(server.runtime, report)


def test_arrivals_per_group_another_day_a_group_and_a_click_opens_the_child(
    start_api: Callable[..., LiveApi], signed_in: Callable[..., AppTest]
) -> None:
    server = start_api(attendance_timezone="Asia/Tokyo")  # its own children: the totals are exact
    http = client(server)
    robins = unique("Robins")
    ada, ben, cleo = (http.post("/children", json={"external_id": unique(n[0]), "name": n, "group": robins})
                      for n in ("Ada", "Ben", "Cleo"))
    http.post("/children", json={"external_id": unique("N"), "name": "Nia"})
    now = datetime.now(UTC)
    assert arrive(server, ada["id"], "front-door", now) == ["arrival", "sighting"]
    assert arrive(server, ada["id"], "hall", now + timedelta(seconds=5)) == ["sighting"]  # arrived already
    arrive(server, ben["id"], "garden", now - timedelta(days=1))

    at = signed_in(server, "viewer")
    at.switch_page("views/attendance.py").run()
    assert not at.exception, at.exception
    today = now.astimezone(TOKYO).date()
    assert at.date_input(key="attendance_day").value == today  # the kindergarten's today
    assert {m.label: m.value for m in at.metric} == {"Arrived": "1", "Not arrived yet": "3", "Children": "4"}
    assert [h.value for h in at.subheader] == [ui.md(f"{robins}: 1 of 3 arrived, 2 not yet"),
                                               ui.md("(no group): 0 of 1 arrived, 1 not yet")]
    came, missing, nobody = (d.value for d in at.dataframe)
    assert came.to_dict("records") == [{"Time": now.astimezone(TOKYO).strftime("%H:%M"), "Name": "Ada",
                                        "ID": ada["external_id"], "Camera": "front-door"}]
    assert list(missing["Name"]) == ["Ben", "Cleo"] and list(nobody["Name"]) == ["Nia"]
    assert "Times in Asia/Tokyo" in texts(at)

    at.date_input(key="attendance_day").set_value(today - timedelta(days=1)).run()
    assert not at.exception, at.exception
    assert {m.label: m.value for m in at.metric}["Did not come"] == "3"
    assert at.subheader[0].value == ui.md(f"{robins}: 1 of 3 arrived, 2 did not come")
    yesterday = at.dataframe[0].value
    assert list(yesterday["Name"]) == ["Ben"] and list(yesterday["Camera"]) == ["garden"]
    at.button(key="attendance_today").click().run()
    assert at.date_input(key="attendance_day").value == today

    came_table = at.dataframe[0]
    at.session_state[came_table.key] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Child detail"] and at.header[0].value == "Ada"
    at.switch_page("views/attendance.py").run()
    assert [t.value for t in at.title] == ["Attendance"]  # coming back does not reopen Ada

    at.selectbox(key="attendance_group").select("(no group)").run()
    assert [h.value for h in at.subheader] == [ui.md("(no group): 0 of 1 arrived, 1 not yet")]
    assert [list(d.value["Name"]) for d in at.dataframe] == [["Nia"]]
