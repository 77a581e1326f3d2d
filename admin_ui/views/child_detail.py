"""One child: enrolled faces, remove or move a face, merge a duplicate child in, the child's history."""

from __future__ import annotations

import streamlit as st

from admin_ui import ui

ui.require("read")
api = ui.api()
st.title("Child detail")

options = ui.children_options(status=None)
if not options:
    st.info("No children yet.")
    st.stop()
ids = list(options)
preselected = st.session_state.get("child_id")
child_id = st.selectbox("Child", ids, format_func=options.get, key="detail_child",
                        index=ids.index(preselected) if preselected in ids else 0)
st.session_state.child_id = child_id
child = ui.call(lambda: api.get(f"/children/{child_id}"))
if child is None:
    st.stop()

st.header(child["name"])
facts = st.columns(4)
facts[0].metric("ID", child["external_id"])
facts[1].metric("Group", child["group"] or "-")
facts[2].metric("Photos enrolled", child["n_faces"])
facts[3].metric("Status", child["status"].capitalize())
if child["merged_into_id"]:
    st.info(f"This child was merged into {options.get(child['merged_into_id'], child['merged_into_id'])}.")
if child["notes"]:
    st.caption(child["notes"])

# ---- faces ------------------------------------------------------------------------------------
st.subheader("Enrolled faces")
faces = ui.call(lambda: api.get(f"/children/{child_id}/faces")) or []
if not faces:
    st.info("No faces yet: use Enroll to add photos.")
others = {i: label for i, label in ui.children_options().items() if i != child_id}
grid = st.columns(4)
for n, face in enumerate(faces):
    with grid[n % 4], st.container(border=True):
        picture = ui.thumbnail(face["id"])
        if picture:
            st.image(picture, width="stretch")
        state = {"enrolled": "In use", "pending_review": "Waiting for review", "rejected": "Not used"}
        quality = face["quality"]["score"]
        st.caption(f"Face {face['id']} · {state[face['review_state']]} · quality {quality:.2f}")
        if not ui.can("write"):
            continue
        if st.button("Remove", key=f"remove_{face['id']}", icon=":material/delete:"):
            st.session_state.confirm_remove = face["id"]
        if st.session_state.get("confirm_remove") == face["id"]:
            st.warning("Remove this face and its photo?")
            if st.button("Yes, remove", key=f"remove_yes_{face['id']}", type="primary") and ui.call(
                lambda face=face: api.delete(f"/faces/{face['id']}"), success="Face removed."
            ):
                st.session_state.pop("confirm_remove", None)
                st.rerun()
        if others:
            target = st.selectbox("Move to", list(others), format_func=others.get,
                                  key=f"move_to_{face['id']}", index=None, placeholder="Another child...")
            if target is not None and st.button("Move", key=f"move_{face['id']}",
                                                icon=":material/swap_horiz:"):
                moved = ui.call(lambda face=face, target=target: api.post(
                    f"/faces/{face['id']}/reassign", json={"child_id": target}),
                    success=f"Face moved to {others[target]}.")
                if moved:
                    st.rerun()

# ---- merge ------------------------------------------------------------------------------------
if ui.can("write") and others and child["status"] == "active":
    st.subheader("Merge a duplicate")
    st.caption(f"If a child was enrolled twice, move the other record's faces into {child['name']}. "
               "The other record is archived and points here.")
    source = st.selectbox("The duplicate record", list(others), format_func=others.get, key="merge_source",
                          index=None, placeholder="Choose the duplicate...")
    if source is not None:
        sure = st.checkbox(f"Yes, {others[source]} is the same child as {child['name']}", key="merge_sure")
        if st.button("Merge", key="merge_button", type="primary", disabled=not sure):
            merged = ui.call(lambda: api.post(f"/children/{child_id}/merge", json={"source_id": source}))
            if merged:
                st.session_state.flash = f"Merged: {len(merged['moved_face_ids'])} face(s) moved here."
                st.rerun()

# ---- history ------------------------------------------------------------------------------------
st.subheader("History")
history = ui.call(lambda: api.get(f"/children/{child_id}/history", limit=200))
if history and history["items"]:
    st.dataframe(
        [{"When": e["at"], "Who": e["actor"], "What": e["action"]} for e in history["items"]],
        hide_index=True, width="stretch", key="detail_history",
    )
