"""Children (page 2): search, filter, sort and pages in one API request per view; a clicked row opens the
child, whose page edits, archives, and (administrators only) erases behind a typed confirmation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from .conftest import LiveApi, click, client, texts, unique


def open_row(at: AppTest, row: int) -> AppTest:
    """Click a row of the children table (a selection, as the browser sends it)."""
    (table,) = [d for d in at.dataframe if d.key and d.key.startswith("children_table_")]
    at.session_state[table.key] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    return at.run()


def test_add_find_open_edit_archive_and_erase_a_child(
    api: LiveApi, signed_in: Callable[..., AppTest]
) -> None:
    at = signed_in(api, "admin")
    external_id = unique("K")
    at.text_input(key="create_external_id").input(external_id)
    at.text_input(key="create_name").input("Kim Example")
    at.text_input(key="create_group").input("Robins")
    click(at, "Add child")
    assert not at.exception, at.exception
    assert "Added Kim Example" in texts(at)

    at.text_input(key="children_query").input(external_id).run()
    table = at.dataframe[0].value
    assert list(table["Name"]) == ["Kim Example"] and list(table["Group"]) == ["Robins"]

    open_row(at, 0)
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Child detail"] and at.header[0].value == "Kim Example"
    at.text_input(key="edit_name").input("Kim Edited")
    click(at, "Save changes")
    assert at.header[0].value == "Kim Edited"

    at.button(key="child_archive").click().run()
    assert "Archived." in texts(at)
    assert [m.value for m in at.metric][3] == "Archived"

    # erasing needs the word typed exactly; until then the button does nothing
    assert at.button(key="erase_button").disabled
    at.text_input(key="erase_confirm").input("ERASE").run()
    at.button(key="erase_button").click().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Children"] and "Erased Kim Edited" in texts(at)
    found = client(api).get("/children", q=external_id, status="archived")
    assert found["total"] == 0


def test_staff_cannot_erase(api: LiveApi, signed_in: Callable[..., AppTest]) -> None:
    client(api).post("/children", json={"external_id": unique("S"), "name": "Sam Staffcase"})
    at = signed_in(api, "staff")
    at.text_input(key="children_query").input("Staffcase").run()
    open_row(at, 0)
    assert at.header[0].value == "Sam Staffcase"
    assert at.button(key="child_archive") is not None
    assert not [b for b in at.button if b.key == "erase_button"]


def test_sort_filter_and_pages_with_one_request_per_view(
    api: LiveApi, signed_in: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch
) -> None:
    from admin_ui.client import Api

    group = unique("Owls")
    names = [f"Owl {n:02d}" for n in range(30)]
    http = client(api)
    for n, name in enumerate(names):
        http.post("/children", json={"external_id": f"{group}-{n:02d}", "name": name, "group": group})
    at = signed_in(api, "viewer")
    at.text_input(key="children_group").input(group).run()
    assert list(at.dataframe[0].value["Name"]) == names  # 50 a page by default
    at.selectbox(key="children_page_size").select(25).run()
    assert list(at.dataframe[0].value["Name"]) == names[:25]
    assert "Children 1-25 of 30 · page 1 of 2" in texts(at)
    at.number_input(key="children_page").set_value(2).run()
    assert list(at.dataframe[0].value["Name"]) == names[25:]
    # another order starts again at its first page
    at.selectbox(key="children_order").select("Descending").run()
    assert list(at.dataframe[0].value["Name"]) == names[::-1][:25]
    assert at.number_input(key="children_page").value == 1
    at.selectbox(key="children_sort").select("ID").run()
    at.number_input(key="children_page").set_value(2).run()
    assert list(at.dataframe[0].value["ID"]) == [f"{group}-{n:02d}" for n in range(4, -1, -1)]

    calls: list[str] = []
    request = Api._request

    def counted(self: Api, method: str, path: str, **kwargs: object) -> object:
        calls.append(f"{method} {path}")
        return request(self, method, path, **kwargs)

    monkeypatch.setattr(Api, "_request", counted)
    at.number_input(key="children_page").set_value(1).run()
    assert not at.exception, at.exception
    assert calls == ["GET /children"]  # the rows' pictures: none here (no faces), else kept per session
