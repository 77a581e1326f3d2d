"""The Staff page (administrators): create, change role, deactivate/reactivate, reset a password; and the
forced password change at the next sign-in."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from .conftest import ADMIN_APP, LiveApi, click, client, texts, unique


@pytest.fixture(scope="module")
def api(start_api: Callable[..., LiveApi]) -> LiveApi:
    """This module's own API: its many sign-ins stay clear of the shared one's per-address rate limit."""
    return start_api(rate_limit_unauthenticated="1000/minute")


def _account(at: AppTest, username: str) -> dict:
    return next(row for row in at.dataframe[0].value.to_dict("records")
                if row["Username"] == username)


def _sign_in_page(live: LiveApi, monkeypatch: pytest.MonkeyPatch, username: str, password: str) -> AppTest:
    import admin_ui.config

    monkeypatch.setattr(admin_ui.config, "API_URL", live.url)
    at = AppTest.from_file(str(ADMIN_APP), default_timeout=60).run()
    at.text_input(key="username").input(username)
    at.text_input(key="password").input(password)
    return click(at, "Sign in")


def test_staff_page_manages_accounts(
    api: LiveApi, signed_in: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("sam")
    at = signed_in(api, "admin")
    at.switch_page("views/staff.py").run()
    assert [t.value for t in at.title] == ["Staff"]
    at.text_input(key="staff_new_name").input(name)
    at.text_input(key="staff_new_password").input("first-password")
    at.selectbox(key="staff_new_role").select("viewer")
    click(at, "Create account")
    assert not at.exception, at.exception
    assert f"Account {name} created." in texts(at)
    assert _account(at, name)["Role"] == "viewer"

    user_id = next(u["id"] for u in client(api).get("/admin/users") if u["username"] == name)
    at.selectbox(key="staff_account").select(user_id).run()
    at.selectbox(key=f"staff_role_{user_id}").select("staff").run()
    at.button(key="staff_save_role").click().run()
    assert f"{name} is now staff." in texts(at) and _account(at, name)["Role"] == "staff"

    at.button(key="staff_deactivate").click().run()
    assert _account(at, name)["Active"] is False
    refused = _sign_in_page(api, monkeypatch, name, "first-password")
    assert [e.value for e in refused.error] == ["wrong username or password"]
    at.button(key="staff_reactivate").click().run()
    assert _account(at, name)["Active"] is True

    at.button(key="staff_reset").click().run()
    assert not at.exception, at.exception
    one_time = at.code[0].value
    assert f"One-time password for **{name}**" in texts(at)
    assert _account(at, name)["Must change password"] is True
    at.run()  # shown once only
    assert not at.code

    # the next sign-in shows the password form alone, and nothing else opens until it is used
    forced = _sign_in_page(api, monkeypatch, name, one_time)
    assert not forced.exception, forced.exception
    assert "choose your own now" in texts(forced)
    with pytest.raises(ValueError, match="Known pages"):
        forced.switch_page("views/children.py")
    forced.text_input(key="password_current").input(one_time)
    forced.text_input(key="password_new").input("my-own-password")
    forced.text_input(key="password_repeat").input("my-own-password")
    click(forced, "Change password")
    assert "Password changed. Sign in with the new password." in texts(forced)
    done = _sign_in_page(api, monkeypatch, name, "my-own-password")
    assert [t.value for t in done.title] == ["Children"], texts(done)

    events = client(api).get("/audit", limit=50)["items"]
    mine = [e["action"] for e in events if (e.get("after") or {}).get("username") == name]
    assert {"user.created", "user.updated", "user.password_reset", "user.password_changed"} <= set(mine)


def test_staff_page_is_for_admins_only(api: LiveApi, signed_in: Callable[..., AppTest]) -> None:
    staff = signed_in(api, "staff")
    with pytest.raises(ValueError, match="Known pages"):
        staff.switch_page("views/staff.py")


def test_the_last_admin_is_told_why_they_cannot_step_down(api: LiveApi, start_api, signed_in) -> None:  # noqa: ANN001
    own = start_api(rate_limit_unauthenticated="1000/minute")  # here "admin" is the only admin
    at = signed_in(own, "admin")
    at.switch_page("views/staff.py").run()
    admin_id = next(u["id"] for u in client(own).get("/admin/users") if u["username"] == "admin")
    at.selectbox(key="staff_account").select(admin_id).run()
    at.button(key="staff_deactivate").click().run()
    assert any("last active admin" in e.value for e in at.error), texts(at)
    assert _account(at, "admin")["Active"] is True
