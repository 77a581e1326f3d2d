"""Undo from the admin (`POST /audit/{seq}/undo`): the rows of a history that can be undone, each with
an Undo button and a confirmation, and the refusal in words when the server says no.

The API marks the rows it would likely accept (`undoable`); it still decides when
the button is pressed (a change made meanwhile, or a later change to a face only).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from typing import Any

import streamlit as st

from admin_ui import describe, ui
from admin_ui.client import ApiError

#: undoable rows offered at once, newest first (older ones are usually blocked by newer changes)
MAX_OFFERED = 10


def refusal_words(exc: ApiError, zone: tzinfo) -> str:
    """Why the server refused an undo, for staff: the later change in words when it names one."""
    named = (exc.details or [None])[0]
    if isinstance(named, dict) and {"action", "at", "actor"} <= set(named):
        what = (f"“{describe.action_words(named['action'])}” on {describe.when(named['at'], zone)} by "
                f"{describe.actor_words(named['actor'])}")
        if exc.code == "changed_since":
            return (f"This change cannot be undone: a later change touched the same child or face ({what}). "
                    "Undo that one first.")
        if exc.code == "already_undone":
            return f"This change was already undone ({what}). Undo that undo to bring the change back."
    return exc.message


def undo_controls(
    events: list[dict[str, Any]], name_of: Callable[[int | None], str], zone: tzinfo, *, key: str
) -> None:
    """Staff only: an Undo button for each undoable event of `events`, with a confirmation."""
    if not ui.can("write"):
        return
    confirm_key = f"{key}_confirm"
    # the row being confirmed stays, even if a change made meanwhile blocks it: the refusal says why
    asked = st.session_state.get(confirm_key)
    offered = [e for e in events if e.get("undoable") or e["seq"] == asked][:MAX_OFFERED]
    if not offered:
        return
    st.markdown("**Undo a change**")
    st.caption("Undo puts back exactly what the change changed, as long as nothing changed the same child "
               "or face since. The undo appears in the history and can itself be undone. "
               "Erasure cannot be undone.")
    for event in offered:
        seq = event["seq"]
        text = (f"{describe.when(event['at'], zone)} · {describe.action_words(event['action'])}: "
                f"{describe.sentence(event, name_of)}")
        row, button = st.columns([6, 1])
        row.markdown(ui.md(text))
        if button.button("Undo", key=f"{key}_undo_{seq}", icon=":material/undo:"):
            st.session_state[confirm_key] = seq
        if st.session_state.get(confirm_key) != seq:
            continue
        sentence = ui.md(describe.sentence(event, name_of))
        st.warning(f"Undo this change? {sentence}: everything it changed goes back to how it was before.")
        yes, no = st.columns(2)
        if yes.button("Yes, undo it", key=f"{key}_undo_yes_{seq}", type="primary"):
            try:
                ui.api().post(f"/audit/{seq}/undo")
            except ApiError as exc:
                if exc.status == 401 and ui.user() is not None:
                    ui.sign_out()
                st.error(refusal_words(exc, zone), icon=":material/block:")
            else:
                st.session_state.pop(confirm_key, None)
                st.session_state.flash = f"Undone: {describe.sentence(event, name_of)}."
                st.rerun()
        if no.button("Cancel", key=f"{key}_undo_no_{seq}"):
            st.session_state.pop(confirm_key, None)
            st.rerun()


def removal_note(child_id: int, zone: tzinfo) -> str:
    """After a face was removed: until when it can be restored (its removal event says)."""
    try:
        latest = ui.api().get(f"/children/{child_id}/history", limit=5)["items"]
    except ApiError:
        return ""
    kept = next((e["after"].get("kept_until") for e in latest
                 if e["action"] == "face.removed" and e.get("after")), None)
    if not kept:
        return " It is deleted for good (removed faces are not kept on this server)."
    return f" It can be restored from the History (Undo) until {describe.when(kept, zone)}."
