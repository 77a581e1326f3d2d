"""Sign in (page 1): wrong passwords get a plain message, and each role sees only its pages."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from .conftest import ADMIN_APP, LiveApi, click, client, texts, unique


def test_wrong_password_is_refused_in_plain_words(api: LiveApi, monkeypatch: pytest.MonkeyPatch) -> None:
    import admin_ui.config

    monkeypatch.setattr(admin_ui.config, "API_URL", api.url)
    at = AppTest.from_file(str(ADMIN_APP), default_timeout=60).run()
    at.text_input(key="username").input("admin")
    at.text_input(key="password").input("not-the-password")
    click(at, "Sign in")
    assert not at.exception
    assert [e.value for e in at.error] == ["wrong username or password"]
    assert "Traceback" not in texts(at)


def test_pages_follow_the_role(api: LiveApi, signed_in: Callable[..., AppTest]) -> None:
    viewer = signed_in(api, "viewer")
    assert "Signed in as **viewer** (viewer)" in texts(viewer)
    # pages the role does not open are not in the viewer's navigation at all
    with pytest.raises(ValueError, match="Known pages") as refused:
        viewer.switch_page("views/settings.py")
    known = str(refused.value).split("Known pages")[1]
    assert all(page in known for page in ("children.py", "child_detail.py", "audit.py"))
    assert not any(page in known for page in ("enroll.py", "review.py", "import_csv.py", "recognise.py"))
    viewer.switch_page("views/audit.py").run()
    assert [t.value for t in viewer.title] == ["Audit trail"]

    admin = signed_in(api, "admin")
    admin.switch_page("views/settings.py").run()
    assert [t.value for t in admin.title] == ["Settings"]
    click(admin, "Sign out")
    assert [t.value for t in admin.title] == ["childface"]
    assert admin.text_input(key="username") is not None


def test_change_own_password(api: LiveApi, monkeypatch: pytest.MonkeyPatch) -> None:
    import admin_ui.config

    username = unique("pat")
    account = {"username": username, "password": "first-password", "role": "staff"}
    client(api).post("/admin/users", json=account)
    monkeypatch.setattr(admin_ui.config, "API_URL", api.url)
    at = AppTest.from_file(str(ADMIN_APP), default_timeout=60).run()
    at.text_input(key="username").input(username)
    at.text_input(key="password").input("first-password")
    click(at, "Sign in")
    at.switch_page("views/sign_in.py").run()
    at.text_input(key="password_current").input("first-password")
    at.text_input(key="password_new").input("second-password")
    at.text_input(key="password_repeat").input("second-passwort")
    click(at, "Change password")
    assert [e.value for e in at.error] == ["The two new passwords differ."]
    at.text_input(key="password_repeat").input("second-password")
    click(at, "Change password")
    assert not at.exception, at.exception
    assert "Password changed. Sign in with the new password." in texts(at)
    at.text_input(key="username").input(username)
    at.text_input(key="password").input("second-password")
    click(at, "Sign in")
    assert [t.value for t in at.title] == ["Children"], texts(at)
