"""Child detail: staff undo a change from the history (with a confirmation), see the refusal in words when a
later change touched the child, viewers get no undo; near the erase button: erasure cannot be undone."""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, client, enroll, texts


def _open(at: AppTest, child_id: int) -> AppTest:
    at.session_state["child_id"] = child_id
    at.switch_page("views/child_detail.py").run()
    assert not at.exception, at.exception
    return at


def _undo_buttons(at: AppTest) -> list[str]:
    return [b.key for b in at.button if b.key and b.key.startswith("history_undo_") and b.label == "Undo"]


def test_undo_from_the_history_with_confirmation_and_refusal(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    live = start_api()  # its own server: the shared one has these example photos enrolled
    child = enroll(live, example, "Una Undo", ["c005/portrait.jpg"])
    http = client(live, "staff")
    http.post(f"/children/{child['id']}/archive")
    archived = http.get(f"/children/{child['id']}/history")["items"][0]
    assert archived["action"] == "child.archived"

    # a viewer reads the history but is offered no undo
    at = _open(signed_in(live, "viewer"), child["id"])
    assert _undo_buttons(at) == []

    at = _open(signed_in(live, "staff"), child["id"])
    assert _undo_buttons(at) == [f"history_undo_{archived['seq']}"]
    at.button(key=f"history_undo_{archived['seq']}").click().run()
    assert "Undo this change?" in texts(at)
    assert client(live).get(f"/children/{child['id']}")["status"] == "archived"  # not before it is confirmed
    at.button(key=f"history_undo_yes_{archived['seq']}").click().run()
    assert not at.exception, at.exception
    assert {m.label: m.value for m in at.metric}["Status"] == "Active"
    assert "Undone: Una Undo archived" in texts(at)
    history = at.dataframe[-1].value
    assert list(history["What"])[:2] == ["Change undone", "Child archived"]

    # offered, but meanwhile someone archived the child again: the refusal names that change in words
    undo_seq = http.get(f"/children/{child['id']}/history")["items"][0]["seq"]
    assert _undo_buttons(at) == [f"history_undo_{undo_seq}"]
    at.button(key=f"history_undo_{undo_seq}").click().run()
    client(live, "admin").post(f"/children/{child['id']}/archive")
    at.button(key=f"history_undo_yes_{undo_seq}").click().run()
    refusal = [e.value for e in at.error]
    assert len(refusal) == 1 and "a later change touched the same child or face" in refusal[0], refusal
    assert "“Child archived”" in refusal[0] and "by admin" in refusal[0]
    assert "Undo that one first" in refusal[0]
    assert client(live).get(f"/children/{child['id']}")["status"] == "archived"

    # removing a face says until when it can be restored, and the history offers that undo
    (face,) = http.get(f"/children/{child['id']}/faces")
    at = _open(signed_in(live, "staff"), child["id"])
    at.button(key=f"remove_{face['id']}").click().run()
    assert "can be restored from the History below" in texts(at)
    at.button(key=f"remove_yes_{face['id']}").click().run()
    assert not at.exception, at.exception
    assert "Face removed. It can be restored from the History (Undo) until " in texts(at)
    removal = http.get(f"/children/{child['id']}/history")["items"][0]
    assert removal["action"] == "face.removed"
    assert _undo_buttons(at) == [f"history_undo_{removal['seq']}"]
    assert "(can be restored until " in at.dataframe[-1].value["Details"][0]


def test_erasure_says_it_cannot_be_undone(
    api: LiveApi, example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    child = client(api).post("/children", json={"external_id": "ERASE-NOTE-1", "name": "Eva Note"})
    at = _open(signed_in(api, "admin"), child["id"])
    assert "Erasure cannot be undone" in texts(at)
