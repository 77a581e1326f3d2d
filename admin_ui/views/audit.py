"""Audit: who changed what and when, filterable, with CSV export."""

from __future__ import annotations

from datetime import UTC, datetime, time

import streamlit as st

from admin_ui import ui

ui.require("read")
api = ui.api()
st.title("Audit trail")
st.caption("Every change to children, photos and faces, and every sign-in key created, in time order.")

f1, f2, f3 = st.columns(3)
action = f1.text_input("Action (e.g. child.created, face.*)", key="audit_action")
actor = f2.text_input("Who (e.g. user:anna)", key="audit_actor")
child_options = ui.children_options(status=None)
child = f3.selectbox("Child", list(child_options), format_func=child_options.get, index=None,
                     placeholder="All children", key="audit_child")
d1, d2 = st.columns(2)
since = d1.date_input("From", value=None, key="audit_since")
until = d2.date_input("Until", value=None, key="audit_until")
filters = {
    "action": action.strip() or None,
    "actor": actor.strip() or None,
    "child_id": child,
    "since": datetime.combine(since, time.min, UTC).isoformat() if since else None,
    "until": datetime.combine(until, time.max, UTC).isoformat() if until else None,
}

page_size = 100
page_number = st.number_input("Page", min_value=1, value=1, step=1, key="audit_page")
events = ui.call(lambda: api.get("/audit", limit=page_size, offset=(page_number - 1) * page_size, **filters))
if events:
    st.caption(f"{events['total']} events")
    st.dataframe(
        [{"When": e["at"][:19].replace("T", " "), "Who": e["actor"], "What": e["action"],
          "Child": child_options.get(e["child_id"], e["child_id"] or ""),
          "Details": e["after"] or e["before"] or {}} for e in events["items"]],
        hide_index=True, width="stretch", key="audit_table",
        column_config={"Details": st.column_config.JsonColumn("Details")},
    )
    if st.button("Prepare CSV export", key="audit_export", icon=":material/download:"):
        exported = ui.call(lambda: api.get_bytes("/audit.csv", **filters))
        if exported is not None:
            st.download_button("Download CSV", exported, file_name="childface-audit.csv", mime="text/csv",
                               key="audit_download")
