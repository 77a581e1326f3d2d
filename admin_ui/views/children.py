"""Children: find (search, filter, sort, pages), open one by clicking its row, and add a child.

One API request per page view: the list answer carries what a row shows (the
enrolled-face count and the face for the picture); the pictures of the rows
are fetched together and kept for the session. Editing, archiving and erasing
are on the child's own page.
"""

from __future__ import annotations

import math

import streamlit as st

from admin_ui import ui, widgets

ui.require("read")
api = ui.api()
st.title("Children")

SORTS = {"Name": "name", "ID": "external_id", "Date added": "created", "Photos enrolled": "faces"}
PAGE_SIZES = [25, 50, 100, 200]



def first_page() -> None:
    """Another search, filter or order starts at its first page."""
    st.session_state.children_page = 1


search, group, status = st.columns([3, 2, 2])
query = search.text_input("Search name or ID", key="children_query", on_change=first_page)
group_filter = group.text_input("Group", key="children_group", on_change=first_page)
status_label = status.selectbox("Status", ["Active", "Archived", "All"], key="children_status",
                                on_change=first_page)
sort_col, order_col, size_col, page_col = st.columns([2, 2, 1, 1])
sort_label = sort_col.selectbox("Sort by", list(SORTS), key="children_sort", on_change=first_page)
descending = order_col.selectbox("Order", ["Ascending", "Descending"], key="children_order",
                                 on_change=first_page) == "Descending"
page_size = size_col.selectbox("Per page", PAGE_SIZES, index=1, key="children_page_size",
                               on_change=first_page)
page_number = page_col.number_input("Page", min_value=1, step=1, key="children_page")

params = {
    "q": query.strip(),
    "group": group_filter.strip(),
    "status": {"Active": "active", "Archived": "archived", "All": None}[status_label],
    "sort": SORTS[sort_label],
    "order": "desc" if descending else "asc",
    "limit": page_size,
    "offset": (page_number - 1) * page_size,
}
page = ui.call(lambda: api.get("/children", **params))
children = page["items"] if page else []

if page and page["total"] and not children:
    st.info(f"There are {math.ceil(page['total'] / page_size)} page(s) of results: choose an earlier page.")
elif children:
    first = params["offset"] + 1
    pages = math.ceil(page["total"] / page_size)
    last = first + len(children) - 1
    st.caption(f"Children {first}-{last} of {page['total']} · page {page_number} of {pages}"
               " · click a row to open the child")
    pictures = widgets.thumbnails(c["thumbnail_face_id"] for c in children)
    rows = [
        {"Photo": ui.data_url(pictures.get(c["thumbnail_face_id"])), "Name": c["name"],
         "ID": c["external_id"], "Group": c["group"] or "", "Photos enrolled": c["n_faces"],
         "Status": c["status"]}
        for c in children
    ]
    # a fresh table key after each opening: coming back must not reopen the last child
    table_key = f"children_table_{st.session_state.setdefault('children_table_n', 0)}"
    chosen = st.dataframe(
        rows, hide_index=True, width="stretch", key=table_key, on_select="rerun", selection_mode="single-row",
        column_config={"Photo": st.column_config.ImageColumn("Photo", width="small")},
    )
    selected = chosen.selection.rows if chosen is not None else []
    if selected:
        st.session_state.child_id = children[selected[0]]["id"]
        st.session_state.children_table_n += 1
        st.switch_page(st.session_state.pages["child"])
elif page is not None:
    st.info("No children match. Add one below, or use Import for a whole list.")

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
