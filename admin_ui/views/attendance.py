"""Attendance: who arrived on a day (today unless another is chosen), per group, with the time and the
camera, and who has not; a click on a child opens the child's page.

An arrival is a child's first confident recognition of the day by a camera (`childface watch`).
Days and times are the kindergarten's: the server's attendance time zone, which the API reports.
One API request per view: the day's whole answer, filtered by group here.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import streamlit as st

from admin_ui import live, ui

ui.require("read")
api = ui.api()
st.title("Attendance")


def back_to_today() -> None:
    # before the next run builds the date picker: it starts again from the API's today
    st.session_state.pop("attendance_day", None)


day_col, group_col, today_col = st.columns([2, 3, 1], vertical_alignment="bottom")
chosen_day: date | None = st.session_state.get("attendance_day")
answer = ui.call(lambda: api.get("/attendance", date=chosen_day.isoformat() if chosen_day else None))
if answer is None:
    st.stop()
zone = live.zone_named(answer["timezone"])
shown_day = date.fromisoformat(answer["date"])
if chosen_day is None:
    st.session_state.attendance_day = shown_day  # the picker shows the day the API answered for
day_col.date_input("Day", key="attendance_day", format="YYYY-MM-DD")
today_col.button("Today", key="attendance_today", on_click=back_to_today, icon=":material/today:")

groups = answer["groups"]
options = [live.ALL_GROUPS, *live.group_names(groups)]
if st.session_state.get("attendance_group") not in options:
    st.session_state.attendance_group = live.ALL_GROUPS  # that group has nobody on this day
chosen_group = group_col.selectbox("Group", options, key="attendance_group")
shown = live.pick_groups(groups, chosen_group)

# today and later days: not arrived *yet*; earlier days are over
still_open = shown_day >= datetime.now(zone).date()
arrived, absent = live.totals(shown)
st.caption(f"Arrivals on {shown_day:%A %d %B %Y} as the cameras saw them (a child's first recognition of "
           f"the day). Times in {ui.md(answer['timezone'])}. Click a child to open their page.")
if not groups:
    st.info("No active children yet: add them on the Children page.")
    st.stop()
figures = st.columns(3)
figures[0].metric("Arrived", arrived)
figures[1].metric("Not arrived yet" if still_open else "Did not come", absent)
figures[2].metric("Children", arrived + absent)

# a fresh table key after each opening: coming back must not reopen the last child
generation = st.session_state.setdefault("attendance_tables_n", 0)


def table(rows: list[dict[str, str]], children: list[dict[str, Any]], key: str) -> None:
    """A table of children; clicking a row opens that child's page."""
    picked = st.dataframe(rows, hide_index=True, width="stretch", key=f"{key}_{generation}",
                          on_select="rerun", selection_mode="single-row")
    selected = picked.selection.rows if picked is not None else []
    if selected:
        st.session_state.child_id = children[selected[0]]["child_id"]
        st.session_state.attendance_tables_n += 1
        st.switch_page(st.session_state.pages["child"])


for n, group in enumerate(shown):
    with st.container(border=True):
        st.subheader(ui.md(live.group_heading(group, today=still_open)))
        came, missing = live.arrived_children(group), live.absent_children(group)
        left, right = st.columns([3, 2])
        with left:
            if came:
                table(live.arrival_rows(came, zone), came, f"attendance_arrived_{n}")
            else:
                st.caption("Nobody has arrived yet." if still_open else "Nobody came.")
        with right:
            if missing:
                st.markdown("**Not arrived yet**" if still_open else "**Did not come**")
                table(live.absent_rows(missing), missing, f"attendance_absent_{n}")
            else:
                st.caption("Everyone is here." if still_open else "Everyone came.")
