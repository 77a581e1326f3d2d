"""Staff accounts (administrators): who may sign in, with which role; new accounts; password resets."""

from __future__ import annotations

import streamlit as st

from admin_ui import ui

ROLE_HELP = "viewer: look only · staff: enroll, recognise, correct · admin: everything, accounts included"

ui.require("admin")
api = ui.api()
st.title("Staff")

issued = st.session_state.pop("one_time_password", None)
if issued:
    st.warning(f"One-time password for **{issued['username']}**. Give it to them in person: it is shown "
               "this once, and they must choose their own password when they sign in.",
               icon=":material/key:")
    st.code(issued["password"], language=None)

users = ui.call(lambda: api.get("/admin/users")) or []
if users:
    st.dataframe(
        [{"Username": u["username"], "Role": u["role"], "Active": u["active"],
          "Must change password": u.get("must_change_password", False),
          "Created on": u["created_at"][:10]}
         for u in users],
        hide_index=True, width="stretch", key="staff_table",
    )

st.subheader("Change an account")
by_id = {u["id"]: u for u in users}
chosen = st.selectbox("Account", list(by_id), index=None, placeholder="Choose an account...",
                      format_func=lambda i: f"{by_id[i]['username']} ({by_id[i]['role']}"
                      + ("" if by_id[i]["active"] else ", deactivated") + ")",
                      key="staff_account")
if chosen is not None:
    account = by_id[chosen]
    name = account["username"]
    roles = ["staff", "viewer", "admin"]
    left, middle, right = st.columns(3)
    with left:
        role = st.selectbox("Role", roles, index=roles.index(account["role"]), key=f"staff_role_{chosen}",
                            help=ROLE_HELP)
        if st.button("Save role", key="staff_save_role", disabled=role == account["role"]) and ui.call(
            lambda: api.patch(f"/admin/users/{chosen}", json={"role": role}),
            success=f"{name} is now {role}.",
        ):
            st.rerun()
    with middle:
        st.caption("A deactivated account cannot sign in; its sessions end at once.")
        if account["active"]:
            toggle = st.button("Deactivate", key="staff_deactivate", icon=":material/person_off:")
        else:
            toggle = st.button("Reactivate", key="staff_reactivate", icon=":material/person:")
        if toggle and ui.call(
            lambda: api.patch(f"/admin/users/{chosen}", json={"active": not account["active"]}),
            success=f"{name} {'deactivated' if account['active'] else 'reactivated'}.",
        ):
            st.rerun()
    with right:
        st.caption("Gives a one-time password and signs the person out everywhere.")
        if st.button("Reset password", key="staff_reset", icon=":material/lock_reset:"):
            reset = ui.call(lambda: api.post(f"/admin/users/{chosen}/reset-password"))
            if reset is not None:
                st.session_state.one_time_password = {"username": name, "password": reset["password"]}
                st.rerun()

st.subheader("New account")
with st.form("staff_create", clear_on_submit=True):
    username = st.text_input("Username", key="staff_new_name")
    password = st.text_input("First password (at least 8 characters)", type="password",
                             key="staff_new_password")
    new_role = st.selectbox("Role", ["staff", "viewer", "admin"], key="staff_new_role", help=ROLE_HELP)
    if st.form_submit_button("Create account") and ui.call(
        lambda: api.post("/admin/users", json={"username": username.strip(), "password": password,
                                               "role": new_role}),
        success=f"Account {username.strip()} created.",
    ):
        st.rerun()
