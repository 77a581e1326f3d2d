"""Audit: who changed what and when, in words for people, filterable, with CSV export (the API's codes);
staff can undo a change from here too (`admin_ui.undo`)."""

from __future__ import annotations

from datetime import datetime, time

import streamlit as st

from admin_ui import describe, ui, widgets
from admin_ui import undo as undo_ui

ui.require("read")
api = ui.api()
st.title("Audit trail")
zone, zone_note = widgets.local_zone()
st.caption("Every change to children, photos and faces, staff accounts, keys and settings, newest first. "
           + zone_note)

ANY = "Everything"
f1, f2, f3 = st.columns(3)
action = f1.selectbox("What", [ANY, *describe.ACTIONS], format_func=lambda c: c if c == ANY else
                      describe.action_words(c), key="audit_action")
actor = f2.text_input("Who (a staff user name, or api_key:NAME)", key="audit_actor")
with f3:
    child = widgets.find_child("Child (search name or ID)", "audit_child", status=None)
d1, d2 = st.columns(2)
since = d1.date_input("From", value=None, key="audit_since")
until = d2.date_input("Until", value=None, key="audit_until")
who = actor.strip()
filters = {
    "action": None if action == ANY else action,
    "actor": who if ":" in who or not who else f"user:{who}",
    "child_id": child,
    # the days as the reader's calendar has them
    "since": datetime.combine(since, time.min, zone).isoformat() if since else None,
    "until": datetime.combine(until, time.max, zone).isoformat() if until else None,
}

page_size = 50
page_number = st.number_input("Page", min_value=1, value=1, step=1, key="audit_page")
events = ui.call(lambda: api.get("/audit", limit=page_size, offset=(page_number - 1) * page_size, **filters))
if events:
    st.caption(f"{events['total']} events")
    items = events["items"]
    names = widgets.child_names(cid for e in items for cid in describe.children_named(e))

    def name_of(cid: int | None) -> str:
        return names.get(cid, f"child {cid}") if cid is not None else "nobody"

    st.dataframe(
        [{"When": describe.when(e["at"], zone), "Who": describe.actor_words(e["actor"]),
          "What": describe.action_words(e["action"]),
          "Child": names.get(e["child_id"], "") if e["child_id"] else "",
          "Details": describe.sentence(e, name_of)} for e in items],
        hide_index=True, width="stretch", key="audit_table",
    )
    undo_ui.undo_controls(items, name_of, zone, key="audit")
    if st.button("Prepare CSV export", key="audit_export", icon=":material/download:"):
        exported = ui.call(lambda: api.get_bytes("/audit.csv", **filters))
        if exported is not None:
            st.download_button("Download CSV", exported, file_name="childface-audit.csv", mime="text/csv",
                               key="audit_download")
