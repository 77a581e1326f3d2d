"""Audit (page 8) in words for people: action names and one sentence of details, while the API keeps its
codes and the CSV export stays as it was."""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, client, enroll, unique


def test_every_action_has_words_and_details_are_sentences() -> None:
    from admin_ui import describe

    names = {1: "Ada Lovelace (A1)", 2: "Bob Byte (B2)"}.get

    def say(action: str, **event: object) -> str:
        return describe.sentence({"action": action, "child_id": None, "target_id": None, **event},
                                 lambda cid: names(cid, "?"))

    assert say("face.reassigned", target_id="12", before={"child_id": 1}, after={"child_id": 2}) == \
        "Face 12 moved from Ada Lovelace (A1) to Bob Byte (B2)"
    assert say("face.enrolled", target_id="7", child_id=1, after={"source": "csv_import"}) == \
        "Face 7 of Ada Lovelace (A1) enrolled from an import"
    assert say("child.erased", after={"child_ids": [1, 3], "faces_deleted": 4, "images_deleted": 1}) == \
        "Child erased (and 1 merged record): 4 faces and 1 photo deleted"
    assert say("child.updated", child_id=1, before={"name": "Ada", "group": None},
               after={"name": "Ada L.", "group": "Owls"}) == \
        "Ada L.: name from 'Ada' to 'Ada L.', group from nothing to 'Owls'"
    assert say("duplicates.dismissed", after={"child_ids": [1, 2]}) == \
        "Ada Lovelace (A1) and Bob Byte (B2) marked as different children (not a duplicate)"
    assert say("review.resolved", target_id="3", after={"resolution": "confirm", "child_id": 2,
                                                         "template_added": True}) == \
        "Review 3: confirmed as Bob Byte (B2); kept as a new photo of the child"
    assert describe.actor_words("api_key:door") == "API key door"
    assert describe.actor_words("user:anna") == "anna"
    assert all("{" not in describe.action_words(code) for code in describe.ACTIONS)
    assert describe.action_words("something.new_here") == "Something: new here"


def test_the_audit_page_says_what_happened(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    api = start_api()  # its own server: the shared one has these example photos enrolled
    ada = enroll(api, example, "Ada Words", ["c004/portrait.jpg", "c004/mirrored.jpg"])
    bob = client(api).post("/children", json={"external_id": unique("B"), "name": "Bob Words"})
    face = client(api).get(f"/children/{ada['id']}/faces")[0]["id"]
    client(api).post(f"/faces/{face}/reassign", json={"child_id": bob["id"]})
    client(api).post(f"/children/{bob['id']}/erase", json={"confirm": "ERASE"})
    assert client(api).get("/audit", limit=1)["items"][0]["action"] == "child.erased"  # the API keeps codes

    at = signed_in(api, "viewer")
    at.switch_page("views/audit.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["What"][:2]) == ["Child erased", "Face moved"]
    assert table["Details"][0] == "Child erased: 1 face and 1 photo deleted"
    # Bob was erased: his name is gone from the record, and the page does not invent it
    moved = f"Face {face} moved from Ada Words ({ada['external_id']}) to an erased child"
    assert table["Details"][1] == moved
    assert set(table["Who"][:2]) == {"admin"}
