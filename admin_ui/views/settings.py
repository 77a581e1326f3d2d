"""Settings (administrators): the model and thresholds in use, calibration, API keys, staff accounts."""

from __future__ import annotations

import base64

import streamlit as st

from admin_ui import ui

ui.require("admin")
api = ui.api()
st.title("Settings")
model_tab, keys_tab, users_tab = st.tabs(["Recognition", "API keys", "Staff accounts"])

with model_tab:
    current = ui.call(lambda: api.get("/admin/settings"))
    if current:
        cols = st.columns(3)
        cols[0].metric("Face model", current["embedder"])
        cols[1].metric("Faces in the search index", current["gallery_faces"] or 0)
        cols[2].metric("Runs on", current["device"])
        st.caption(f"Model id {current['model_id']} · detector {current['detector']}")
        st.markdown("**Decision thresholds** (similarity between 0 and 1)")
        st.table([
            {"Setting": "Recognised when similarity is at least", "Value": current["accept_threshold"]},
            {"Setting": "Sent to review when at least", "Value": current["review_threshold"]},
            {"Setting": "Lead over the next child needed", "Value": current["match_margin"]},
        ])
        with st.expander("Photo quality rules"):
            st.table([{"Rule": k.replace("_", " "), "Value": v} for k, v in current["quality"].items()])
    st.subheader("Calibration")
    st.caption("How well the enrolled faces separate: scores of photos of the same child against photos of "
               "different children, and the thresholds that would give the target false-match rate.")
    far = st.select_slider("Target false-match rate", options=[0.01, 0.001, 0.0001], value=0.001,
                           key="calibration_far")
    if st.button("Run calibration", key="calibration_run", icon=":material/query_stats:"):
        with st.spinner("Comparing every enrolled face with every other..."):
            st.session_state.calibration = ui.call(lambda: api.get("/admin/calibration", target_far=far))
    calibration = st.session_state.get("calibration")
    if calibration:
        report = calibration["report"]
        st.image(base64.b64decode(calibration["plot_png"]), width="stretch")
        cols = st.columns(4)
        cols[0].metric("Children", report["children"])
        cols[1].metric("Enrolled faces", report["templates"])
        cols[2].metric("Proposed accept threshold", report["proposed"]["accept"],
                       delta=round(report["proposed"]["accept"] - report["current"]["accept"], 4))
        cols[3].metric("Proposed review threshold", report["proposed"]["review"],
                       delta=round(report["proposed"]["review"] - report["current"]["review"], 4))
        for note in report.get("notes", []):
            st.info(note)
        st.caption("To apply the proposed thresholds, run `childface calibrate --apply` on the server "
                   "and restart it.")

with keys_tab:
    st.caption("Other systems (door terminals, attendance) sign in with an API key.")
    keys = ui.call(lambda: api.get("/admin/api-keys")) or []
    if keys:
        st.dataframe([{"Name": k["name"], "Starts with": k["prefix"], "Allowed": ", ".join(k["scopes"]),
                       "Revoked": k["revoked"], "Last used": k["last_used_at"] or "never"} for k in keys],
                     hide_index=True, width="stretch", key="keys_table")
    with st.form("key_create", clear_on_submit=True):
        name = st.text_input("What is the key for? (e.g. door-east)", key="key_name")
        scopes = st.multiselect("Allowed", ["recognize", "enroll", "admin"], default=["recognize"],
                                key="key_scopes")
        if st.form_submit_button("Create key"):
            body = {"name": name.strip(), "scopes": scopes}
            issued = ui.call(lambda: api.post("/admin/api-keys", json=body))
            if issued:
                st.session_state.issued_key = issued
    issued = st.session_state.pop("issued_key", None)
    if issued:
        st.warning("Copy this key now and store it safely: it will not be shown again.")
        st.code(issued["key"], language=None)
    live = {k["id"]: f"{k['name']} ({k['prefix']}...)" for k in keys if not k["revoked"]}
    if live:
        revoke = st.selectbox("Revoke a key", list(live), format_func=live.get, index=None,
                              placeholder="Choose a key...", key="key_revoke")
        if revoke is not None and st.button("Revoke", key="key_revoke_button", type="primary") and ui.call(
            lambda: api.post(f"/admin/api-keys/{revoke}/revoke"), success=f"Revoked {live[revoke]}."
        ):
            st.rerun()

with users_tab:
    users = ui.call(lambda: api.get("/admin/users")) or []
    if users:
        st.dataframe([{"Username": u["username"], "Role": u["role"], "Active": u["active"]} for u in users],
                     hide_index=True, width="stretch", key="users_table")
    with st.form("user_create", clear_on_submit=True):
        username = st.text_input("Username", key="user_name")
        password = st.text_input("Password (at least 8 characters)", type="password", key="user_password")
        role = st.selectbox("Role", ["staff", "viewer", "admin"], key="user_role",
                            help="viewer: look only · staff: enroll, recognise, correct · admin: everything")
        if st.form_submit_button("Create account") and ui.call(
            lambda: api.post("/admin/users", json={"username": username.strip(), "password": password,
                                                   "role": role}),
            success=f"Account {username.strip()} created.",
        ):
            st.rerun()
