"""Children: find, add, edit, archive, and (administrators only) erase."""

from __future__ import annotations

import streamlit as st

from admin_ui import ui

ui.require("read")
api = ui.api()
st.title("Children")

search, group, status = st.columns([3, 2, 2])
query = search.text_input("Search name or ID", key="children_query")
group_filter = group.text_input("Group", key="children_group")
status_label = status.selectbox("Status", ["Active", "Archived", "All"], key="children_status")
status_value = {"Active": "active", "Archived": "archived", "All": None}[status_label]

page = ui.call(lambda: api.get("/children", q=query, group=group_filter, status=status_value, limit=200))
children = page["items"] if page else []
if page:
    st.caption(f"{page['total']} children" + (" (showing the first 200)" if page["total"] > 200 else ""))


def first_thumbnail(child_id: int) -> str | None:
    faces = ui.call(lambda: api.get(f"/children/{child_id}/faces", state="enrolled")) or []
    return ui.data_url(ui.thumbnail(faces[0]["id"])) if faces else None


if children:
    rows = [
        {"Photo": first_thumbnail(c["id"]) if c["n_faces"] else None, "Name": c["name"],
         "ID": c["external_id"], "Group": c["group"] or "", "Photos enrolled": c["n_faces"],
         "Status": c["status"]}
        for c in children
    ]
    st.dataframe(rows, hide_index=True, width="stretch", key="children_table",
                 column_config={"Photo": st.column_config.ImageColumn("Photo", width="small")})
    labels = {c["id"]: f"{c['name']} ({c['external_id']})" for c in children}
    chosen = st.selectbox("Child", list(labels), format_func=labels.get, key="children_pick")
    if st.button("Open child", key="children_open", icon=":material/badge:"):
        st.session_state.child_id = chosen
        st.switch_page(st.session_state.pages["child"])
elif page is not None:
    st.info("No children match. Add one below, or use Import for a whole list.")
    chosen = None
else:
    chosen = None

if ui.can("enroll"):
    with st.expander("Add a child", expanded=not children, icon=":material/person_add:"), \
            st.form("child_create", clear_on_submit=True):
        external_id = st.text_input("ID (as in your records)", key="create_external_id")
        name = st.text_input("Name", key="create_name")
        group_name = st.text_input("Group (optional)", key="create_group")
        notes = st.text_area("Notes (optional)", key="create_notes")
        if st.form_submit_button("Add child", type="primary"):
            if not external_id.strip() or not name.strip():
                st.error("Enter the child's ID and name.")
            else:
                body = {"external_id": external_id.strip(), "name": name.strip(),
                        "group": group_name.strip() or None, "notes": notes.strip() or None}
                created = ui.call(lambda: api.post("/children", json=body))
                if created:
                    st.session_state.flash = f"Added {created['name']}. Now enroll photos of the child."
                    st.rerun()

if chosen is not None and ui.can("write"):
    child = next(c for c in children if c["id"] == chosen)
    with st.expander(f"Edit {child['name']}", icon=":material/edit:"), st.form("child_edit"):
        name = st.text_input("Name", value=child["name"], key="edit_name")
        group_name = st.text_input("Group", value=child["group"] or "", key="edit_group")
        notes = st.text_area("Notes", value=child["notes"] or "", key="edit_notes")
        if st.form_submit_button("Save changes"):
            body = {"name": name.strip(), "group": group_name.strip() or None, "notes": notes.strip() or None}
            if ui.call(lambda: api.patch(f"/children/{chosen}", json=body), success="Saved."):
                st.rerun()
    if child["status"] == "active":
        if st.button(f"Archive {child['name']} (stop recognising)", key="child_archive",
                     icon=":material/archive:"):
            ui.call(lambda: api.post(f"/children/{chosen}/archive"), success="Archived.")
            st.rerun()
    elif st.button(f"Unarchive {child['name']}", key="child_unarchive", icon=":material/unarchive:"):
        ui.call(lambda: api.post(f"/children/{chosen}/unarchive"), success="Active again.")
        st.rerun()

if chosen is not None and ui.can("erase"):
    child = next(c for c in children if c["id"] == chosen)
    with st.expander(f"Erase {child['name']} permanently", icon=":material/delete_forever:"):
        st.warning("Erasing deletes the child, every photo and face of the child, and cannot be undone. "
                   "The audit trail keeps only a note that the erasure happened.")
        typed = st.text_input("Type ERASE to confirm", key="erase_confirm")
        if st.button("Erase permanently", key="erase_button", type="primary", disabled=typed != "ERASE"):
            result = ui.call(lambda: api.post(f"/children/{chosen}/erase", json={"confirm": "ERASE"}))
            if result:
                st.session_state.flash = (f"Erased {child['name']}: {result['faces_deleted']} faces and "
                                          f"{result['images_deleted']} photos deleted.")
                st.rerun()
