"""Children (page 2): search, add, edit, archive, and erase behind a typed confirmation (admin only)."""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from .conftest import LiveApi, click, client, texts, unique


def test_add_find_edit_archive_and_erase_a_child(api: LiveApi, signed_in: Callable[..., AppTest]) -> None:
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

    at.text_input(key="edit_name").input("Kim Edited")
    click(at, "Save changes")
    assert list(at.dataframe[0].value["Name"]) == ["Kim Edited"]

    at.button(key="child_archive").click().run()
    assert "Archived." in texts(at)
    at.selectbox(key="children_status").select("Archived").run()
    assert list(at.dataframe[0].value["Status"]) == ["archived"]

    # erasing needs the word typed exactly; until then the button does nothing
    assert at.button(key="erase_button").disabled
    at.text_input(key="erase_confirm").input("ERASE").run()
    at.button(key="erase_button").click().run()
    assert not at.exception, at.exception
    assert "Erased Kim Edited" in texts(at)
    found = client(api).get("/children", q=external_id, status="archived")
    assert found["total"] == 0


def test_staff_cannot_erase(api: LiveApi, signed_in: Callable[..., AppTest]) -> None:
    client(api).post("/children", json={"external_id": unique("S"), "name": "Sam Staffcase"})
    at = signed_in(api, "staff")
    at.text_input(key="children_query").input("Staffcase").run()
    assert at.button(key="child_archive") is not None
    assert not [b for b in at.button if b.key == "erase_button"]
