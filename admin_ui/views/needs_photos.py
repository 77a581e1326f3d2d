"""Needs new photos: the children recognition may soon stop knowing, by group.

A child needs new photos when the newest photo in use (a searched template) was
taken more than the deployment's `stale_template_days` ago; children with no
photo at all are listed apart. One API request (`GET /children/needs-new-photos`);
each child opens on its page or straight on Enroll.
"""

from __future__ import annotations

from itertools import groupby

import streamlit as st

from admin_ui import describe, ui

ui.require("read")
api = ui.api()
st.title("Needs new photos")

everyone = ui.call(lambda: api.get("/children/needs-new-photos"))
if everyone is None:
    st.stop()
groups = sorted({c["group"] for c in everyone["stale"] + everyone["no_photos"] if c["group"]}, key=str.lower)
chosen = st.selectbox("Group", ["All groups", *groups], key="needs_group")
found = everyone if chosen == "All groups" else ui.call(
    lambda: api.get("/children/needs-new-photos", group=chosen))
if found is None:
    st.stop()
st.caption(f"Children whose newest photo was taken more than {found['stale_template_days']} days ago, and "
           "children without any photo. Recognition works best with recent photos: children change.")


def open_child(child: dict, page: str) -> None:
    st.session_state.child_id = child["child_id"]
    if page == "enroll":
        st.session_state.enroll_child = child["child_id"]
    st.switch_page(st.session_state.pages[page])


def show(entries: list[dict], key: str) -> None:
    """One row per child, grouped by group (no group last), with buttons to its page and to Enroll."""
    for group, members in groupby(entries, key=lambda c: c["group"]):
        st.markdown(f"**{ui.md(group) if group else 'No group'}**")
        for child in members:
            newest = describe.photo_age(child["newest_taken_at"], child["newest_taken_at_source"])
            row = st.columns([3, 3, 1, 1])
            row[0].markdown(f"{ui.md(child['name'])} ({ui.md(child['external_id'])})")
            row[1].markdown(f"newest photo {newest}" if newest else "no photo yet")
            if row[2].button("Open", key=f"needs_{key}_open_{child['child_id']}", icon=":material/badge:"):
                open_child(child, "child")
            if ui.can("enroll") and row[3].button("Enroll", key=f"needs_{key}_enroll_{child['child_id']}",
                                                  icon=":material/person_add:"):
                open_child(child, "enroll")


st.subheader(f"Photos too old ({len(found['stale'])})")
if found["stale"]:
    show(found["stale"], "stale")
else:
    st.success("Every child with photos has a recent one.")
st.subheader(f"No photos ({len(found['no_photos'])})")
if found["no_photos"]:
    show(found["no_photos"], "none")
else:
    st.success("Every child has at least one photo.")
