"""One child: details (edit, archive, erase), enrolled faces with their original photos, remove or move a
face, merge a duplicate child in, mark siblings and twins, and the child's history in words.

The child comes from the Children page (a clicked row), a link (`?child=ID`), or
the search box here. Times are shown in the browser's time zone (the server's
when the browser does not say).
"""

from __future__ import annotations

import streamlit as st

from admin_ui import describe, ui, widgets
from admin_ui import undo as undo_ui

ui.require("read")
api = ui.api()
st.title("Child detail")
zone, zone_note = widgets.local_zone()

# a link (?child=ID) opens that child; the page keeps the address in step with the child shown
linked = st.query_params.get("child")
if linked and linked.isdigit() and linked != st.session_state.get("detail_link"):
    st.session_state.child_id = int(linked)
with st.expander("Find another child", expanded="child_id" not in st.session_state, icon=":material/search:"):
    found = widgets.find_child("Search name or ID", "detail_find", status=None)
    if found is not None and found != st.session_state.get("child_id"):
        st.session_state.child_id = found
        st.rerun()
child_id = st.session_state.get("child_id")
if child_id is None:
    st.info("Open a child from the Children page, or search for one above.")
    st.stop()
child = ui.call(lambda: api.get(f"/children/{child_id}"))
if child is None:
    st.stop()
st.query_params["child"] = st.session_state.detail_link = str(child_id)

st.header(child["name"])
facts = st.columns(5)
facts[0].metric("ID", child["external_id"])
facts[1].metric("Group", child["group"] or "-")
facts[2].metric("Photos enrolled", child["n_faces"])
facts[3].metric("Status", child["status"].capitalize())
facts[4].metric("Added", describe.when(child["created_at"], zone))
st.caption(zone_note)
if child["merged_into_id"]:
    into = widgets.child_names([child["merged_into_id"]])[child["merged_into_id"]]
    st.info(f"This child was merged into {into}.")
if child["notes"]:
    st.caption(child["notes"])

# ---- edit, archive, erase ---------------------------------------------------------------------------
if ui.can("write"):
    with st.expander(f"Edit {child['name']}", icon=":material/edit:"), st.form("child_edit"):
        name = st.text_input("Name", value=child["name"], key="edit_name")
        group_name = st.text_input("Group", value=child["group"] or "", key="edit_group")
        notes = st.text_area("Notes", value=child["notes"] or "", key="edit_notes")
        if st.form_submit_button("Save changes"):
            body = {"name": name.strip(), "group": group_name.strip() or None, "notes": notes.strip() or None}
            if ui.call(lambda: api.patch(f"/children/{child_id}", json=body), success="Saved."):
                st.rerun()
    if child["status"] == "active":
        if st.button(f"Archive {child['name']} (stop recognising)", key="child_archive",
                     icon=":material/archive:"):
            ui.call(lambda: api.post(f"/children/{child_id}/archive"), success="Archived.")
            st.rerun()
    elif not child["merged_into_id"] and st.button(f"Unarchive {child['name']}", key="child_unarchive",
                                                   icon=":material/unarchive:"):
        ui.call(lambda: api.post(f"/children/{child_id}/unarchive"), success="Active again.")
        st.rerun()

if ui.can("erase"):
    with st.expander(f"Erase {child['name']} permanently", icon=":material/delete_forever:"):
        st.warning("Erasing deletes the child, every photo and face of the child (removed faces kept for "
                   "undo too). The audit trail keeps only a note that the erasure happened. "
                   "**Erasure cannot be undone.**")
        typed = st.text_input("Type ERASE to confirm", key="erase_confirm")
        if st.button("Erase permanently", key="erase_button", type="primary", disabled=typed != "ERASE"):
            result = ui.call(lambda: api.post(f"/children/{child_id}/erase", json={"confirm": "ERASE"}))
            if result:
                st.session_state.flash = (f"Erased {child['name']}: {result['faces_deleted']} faces and "
                                          f"{result['images_deleted']} photos deleted.")
                st.session_state.pop("child_id", None)
                st.query_params.clear()
                st.switch_page(st.session_state.pages["children"])

# ---- faces ------------------------------------------------------------------------------------
st.subheader("Faces")
faces = ui.call(lambda: api.get(f"/children/{child_id}/faces")) or []
if not faces:
    st.info("No faces yet: use Enroll to add photos.")
target = None
if faces and ui.can("write"):
    target = widgets.find_child("Move faces to (search name or ID)", "move_target", exclude=[child_id])
target_name = widgets.child_names([target])[target] if target is not None else None
STATES = {"enrolled": "In use", "pending_review": "Waiting for review", "rejected": "Not used"}
pictures = widgets.thumbnails(f["id"] for f in faces)
grid = st.columns(4)
for n, face in enumerate(faces):
    with grid[n % 4], st.container(border=True):
        if pictures.get(face["id"]):
            st.image(pictures[face["id"]], width="stretch")
        quality = face["quality"]["score"]
        # a retired template (the oldest beyond the child's cap) is kept but no longer searched
        state = "Retired (kept, not used)" if face.get("retired") else STATES[face["review_state"]]
        age = describe.photo_age(face.get("taken_at"), face.get("taken_at_source"))
        st.caption(f"Face {face['id']} · {state} · quality {quality:.2f}"
                   f" · added {describe.when(face['created_at'], zone)}" + (f" · photo {age}" if age else ""))
        staff = ui.can("write")  # a whole photo may show others: staff only, as the API says
        if staff and st.button("Original photo", key=f"photo_{face['id']}", icon=":material/photo:"):
            showing = st.session_state.get("show_photo") == face["id"]
            st.session_state.show_photo = None if showing else face["id"]
        if not ui.can("write"):
            continue
        if st.button("Remove", key=f"remove_{face['id']}", icon=":material/delete:"):
            st.session_state.confirm_remove = face["id"]
        if st.session_state.get("confirm_remove") == face["id"]:
            st.warning("Remove this face? It is no longer used to recognise the child. For a while it can "
                       "be restored from the History below (Undo); then it and its photo are deleted.")
            if st.button("Yes, remove", key=f"remove_yes_{face['id']}", type="primary") and ui.call(
                lambda face=face: api.delete(f"/faces/{face['id']}")
            ):
                st.session_state.flash = "Face removed." + undo_ui.removal_note(child_id, zone)
                st.session_state.pop("confirm_remove", None)
                st.rerun()
        if target is not None and st.button(f"Move to {target_name}", key=f"move_{face['id']}",
                                            icon=":material/swap_horiz:"):
            moved = ui.call(
                lambda face=face: api.post(f"/faces/{face['id']}/reassign", json={"child_id": target}),
                success=f"Face moved to {target_name}.",
            )
            if moved:
                st.rerun()

shown = next((f for f in faces if f["id"] == st.session_state.get("show_photo")), None)
if shown is not None:
    st.subheader(f"Original photo of face {shown['id']}")
    picture = widgets.photo_with_box(shown, f"Face {shown['id']}")
    if picture is not None:
        st.image(picture, width="stretch")

# ---- merge ------------------------------------------------------------------------------------
if ui.can("write") and child["status"] == "active":
    st.subheader("Merge a duplicate")
    st.caption(f"If a child was enrolled twice, move the other record's faces into {child['name']}. "
               "The other record is archived and points here.")
    source = widgets.find_child("The duplicate record (search name or ID)", "merge_source",
                                exclude=[child_id])
    if source is not None:
        source_name = widgets.child_names([source])[source]
        sure = st.checkbox(f"Yes, {source_name} is the same child as {child['name']}", key="merge_sure")
        if st.button("Merge", key="merge_button", type="primary", disabled=not sure):
            merged = ui.call(lambda: api.post(f"/children/{child_id}/merge", json={"source_id": source}))
            if merged:
                st.session_state.flash = f"Merged: {len(merged['moved_face_ids'])} face(s) moved here."
                st.rerun()

# ---- siblings and twins -----------------------------------------------------------------------------


def siblings_and_twins(child: dict) -> None:
    """The child's marked siblings and twins, each a link to their page; staff mark another or unmark one."""
    st.subheader("Siblings and twins")
    st.caption("Children who look alike for a reason. Recognition asks a person rather than confuse them "
               "(a twin always, unless clearly told apart), and they are never proposed as duplicates.")
    relatives = ui.call(lambda: api.get(f"/children/{child['id']}/relations")) or []
    if not relatives:
        st.caption(f"No sibling or twin of {child['name']} is marked.")
    for relative in relatives:
        words, other_id = describe.RELATION_KINDS[relative["kind"]], relative["child_id"]
        label = f"{relative['name']} ({relative['external_id']}) · {words}"
        link, remove = st.columns([4, 1])
        link.page_link(st.session_state.pages["child"], label=label, icon=":material/family_restroom:",
                       query_params={"child": str(other_id)})
        if not ui.can("write") or not remove.button("Remove", key=f"relation_remove_{other_id}"):
            continue
        if ui.call(lambda other_id=other_id: api.delete(f"/children/{child['id']}/relations/{other_id}"),
                   success=f"{relative['name']} is no longer marked as {words}."):
            st.rerun()
    if not ui.can("write"):
        return
    with st.expander("Mark a sibling or twin", icon=":material/add:"):
        other = widgets.find_child("The sibling or twin (search name or ID)", "relation_other",
                                   exclude=[child["id"], *(r["child_id"] for r in relatives)], status=None)
        kind = st.radio("They are", ["sibling", "twin"], horizontal=True, key="relation_kind",
                        format_func=lambda k: describe.RELATION_KINDS[k] + "s")
        if st.button("Mark", key="relation_add", type="primary", disabled=other is None) and ui.call(
            lambda: api.post(f"/children/{child['id']}/relations", json={"child_id": other, "kind": kind}),
            success=f"Marked as {kind}s.",
        ):
            st.rerun()


siblings_and_twins(child)

# ---- history ------------------------------------------------------------------------------------
st.subheader("History")
history = ui.call(lambda: api.get(f"/children/{child_id}/history", limit=200))
if history and history["items"]:
    events = history["items"]
    names = widgets.child_names(cid for e in events for cid in describe.children_named(e) if cid != child_id)

    def name_of(cid: int | None) -> str:
        return child["name"] if cid == child_id else names.get(cid, "another child") if cid else "nobody"

    st.dataframe(
        [{"When": describe.when(e["at"], zone), "Who": describe.actor_words(e["actor"]),
          "What": describe.action_words(e["action"]), "Details": describe.sentence(e, name_of)}
         for e in events],
        hide_index=True, width="stretch", key="detail_history",
    )
    undo_ui.undo_controls(events, name_of, zone, key="history")
    st.caption(f"{history['total']} event(s). {zone_note}")
