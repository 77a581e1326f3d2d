"""Sign in with a staff account; the pages shown afterwards depend on the account's role."""

from __future__ import annotations

import streamlit as st

from admin_ui import ui

st.title("childface")
current = ui.user()
if current is not None:
    st.success(f"You are signed in as {current['name']} ({current.get('role')}).")
    st.write("Use the menu on the left. To switch accounts, sign out first.")
    st.stop()

st.write("Sign in with your staff account.")
with st.form("sign_in_form"):
    username = st.text_input("Username", key="username")
    password = st.text_input("Password", type="password", key="password")
    submitted = st.form_submit_button("Sign in", type="primary")
if submitted:
    if not username or not password:
        st.error("Enter your username and password.")
        st.stop()
    login = ui.call(lambda: ui.api().post("/auth/login", json={"username": username, "password": password}))
    if login is not None:
        ui.api().token = login["access_token"]
        me = ui.call(lambda: ui.api().get("/auth/me"))
        if me is not None:
            ui.sign_in(login["access_token"], me)
            st.switch_page(st.session_state.pages["children"])
