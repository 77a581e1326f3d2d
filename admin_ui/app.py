"""childface staff admin (Streamlit): sign in, then the pages your role allows.

A reload keeps the person signed in: the session cookie the browser sends is
checked against the API (`ui.restore_session`), and written or cleared to
follow sign-in and sign-out (`ui.sync_cookie`).

Run with `childface admin` (it passes the API's address in CHILDFACE_API_URL).
The admin talks to the childface API over HTTP only, like any other client.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# Streamlit runs this file as a script: make `admin_ui` importable as a package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admin_ui import ui  # noqa: E402

st.set_page_config(page_title="childface admin", page_icon=":material/face:", layout="wide")

HERE = Path(__file__).resolve().parent / "views"


def page(file: str, title: str, icon: str) -> st.Page:
    return st.Page(str(HERE / file), title=title, icon=icon, url_path=file.removesuffix(".py"))


PAGES = {
    "sign_in": page("sign_in.py", "Sign in", ":material/login:"),
    "children": page("children.py", "Children", ":material/groups:"),
    "enroll": page("enroll.py", "Enroll", ":material/person_add:"),
    "child": page("child_detail.py", "Child detail", ":material/badge:"),
    "needs_photos": page("needs_photos.py", "Needs new photos", ":material/add_a_photo:"),
    "review": page("review.py", "Review", ":material/rule:"),
    "recognise": page("recognise.py", "Recognise", ":material/center_focus_strong:"),
    "attendance": page("attendance.py", "Attendance", ":material/how_to_reg:"),
    "cameras": page("cameras.py", "Cameras", ":material/videocam:"),
    "import": page("import_csv.py", "Import", ":material/upload_file:"),
    "audit": page("audit.py", "Audit", ":material/history:"),
    "settings": page("settings.py", "Settings", ":material/settings:"),
    "staff": page("staff.py", "Staff", ":material/manage_accounts:"),
}
#: which pages each permission opens (the API enforces the same rules)
NEEDS = {"children": "read", "child": "read", "audit": "read", "enroll": "enroll", "import": "enroll",
         "review": "write", "recognise": "recognize", "attendance": "read", "cameras": "read",
         "settings": "admin", "staff": "admin", "needs_photos": "read"}

st.session_state.pages = PAGES
ui.restore_session()
current = ui.user()
if current is None:
    navigation = st.navigation([PAGES["sign_in"]])
    ui.sync_cookie()
else:
    if current.get("must_change_password"):
        # the API answers nothing else until the password set for them is replaced
        navigation = st.navigation([PAGES["sign_in"]])
    else:
        allowed = [PAGES[name] for name, permission in NEEDS.items() if ui.can(permission)]
        order = [p for p in PAGES.values() if p in allowed]
        navigation = st.navigation({"childface": order, "Account": [PAGES["sign_in"]]})
    with st.sidebar:
        st.caption(f"Signed in as **{current['name']}** ({current.get('role') or 'API key'})")
        if st.button("Sign out", key="sign_out", icon=":material/logout:"):
            ui.call(lambda: ui.api().post("/auth/logout"))
            ui.sign_out()
            st.rerun()
        ui.sync_cookie()  # an invisible script: here it takes no room on the page
navigation.run()
