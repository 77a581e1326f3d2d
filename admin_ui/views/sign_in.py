"""Sign in with a staff account; the pages shown afterwards depend on the account's role.

An account whose password was set for it (first start, or reset by an administrator)
must choose its own here before any other page opens.
"""

from __future__ import annotations

import streamlit as st

from admin_ui import ui


def password_form(*, forced: bool) -> None:
    """Change the signed-in person's password; the API then ends every session of the account."""
    with st.form("password_form"):
        current_label = "Password you signed in with" if forced else "Current password"
        old_password = st.text_input(current_label, type="password", key="password_current")
        new_password = st.text_input("New password (at least 8 characters)", type="password",
                                     key="password_new")
        repeated = st.text_input("New password again", type="password", key="password_repeat")
        if not st.form_submit_button("Change password", type="primary" if forced else "secondary"):
            return
    if new_password != repeated:
        st.error("The two new passwords differ.")
    elif ui.call(lambda: ui.api().post("/auth/password", json={
            "current_password": old_password, "new_password": new_password}) or True):
        ui.sign_out()
        st.session_state.notice = "Password changed. Sign in with the new password."
        st.rerun()


st.title("childface")
notice = st.session_state.pop("notice", None)
if notice:
    st.info(notice, icon=":material/info:")
current = ui.user()
if current is not None and current.get("must_change_password"):
    st.warning(f"Welcome, {current['name']}. Your password was set for you: choose your own now. "
               "Nothing else opens until you do.", icon=":material/key:")
    password_form(forced=True)
    st.stop()
if current is not None:
    st.success(f"You are signed in as {current['name']} ({current.get('role')}).")
    st.write("Use the menu on the left. To switch accounts, sign out first.")
    if current.get("kind") == "user":
        with st.expander("Change your password", icon=":material/key:"):
            password_form(forced=False)
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
            ui.sign_in(login["access_token"], me, expires_at=login["expires_at"])
            if me.get("must_change_password"):
                st.rerun()  # the app now shows this page alone, with the password form
            st.switch_page(st.session_state.pages["children"])
