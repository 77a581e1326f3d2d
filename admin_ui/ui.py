"""What every admin page shares: the signed-in session, error display, pictures with face boxes."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import streamlit as st
from PIL import Image, ImageDraw, ImageFont, ImageOps
from pillow_heif import register_heif_opener

from admin_ui.client import Api, ApiError

T = TypeVar("T")

register_heif_opener(thumbnails=False)  # iPhones' HEIC photos open and show like any other
#: photo files the upload fields take (what the API reads)
PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "heic", "heif"]

#: the API's reason codes in plain words
REASONS = {
    "no_face": "no face found",
    "several_faces_no_hint": "several faces: choose which one is the child",
    "hint_matches_no_face": "the chosen area has no face",
    "too_small": "face too small (move closer)",
    "blurred": "photo blurred",
    "profile": "face turned away (look at the camera)",
    "tilted": "head tilted too much",
    "low_detector_score": "face not clear enough",
    "low_quality": "photo quality too low",
    "invalid_image": "not a photo the system can read",
    "too_many_pixels": "photo too large",
    "duplicate_image": "this photo is already enrolled",
    "child_not_active": "the child is archived",
}
#: the browser cookie that keeps staff signed in across reloads: it holds the API session token itself,
#: so signing out or the session's expiry at the API ends it too (see `restore_session`)
SESSION_COOKIE = "childface_session"
DECISION_WORDS = {"match": "Recognised", "review": "Not sure - needs review", "unknown": "Unknown"}
DECISION_COLOURS = {"match": "#1a9850", "review": "#f39c12", "unknown": "#d73027"}


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]()!<>#|~])")


def md(text: object) -> str:
    """Text from the API (names, IDs, file names) made safe inside markdown: no links, images or emphasis."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", str(text))


def reasons_text(codes: list[str]) -> str:
    return ", ".join(REASONS.get(c, c.replace("_", " ")) for c in codes)


def api() -> Api:
    """The API client of this browser session (carries the sign-in token)."""
    if "api" not in st.session_state:
        st.session_state.api = Api(token=st.session_state.get("token"))
    return st.session_state.api


def user() -> dict[str, Any] | None:
    return st.session_state.get("user")


def can(permission: str) -> bool:
    current = user()
    return bool(current) and permission in current.get("permissions", [])


def sign_in(token: str, me: dict[str, Any], expires_at: str | None = None) -> None:
    """Keep the session for this browser tab; with `expires_at` (ISO time) also in the session cookie."""
    st.session_state.token = token
    st.session_state.user = me
    st.session_state.session_expires_at = expires_at
    api().token = token


def sign_out() -> None:
    """Forget the session here and in the browser's cookie (the caller ends it at the API)."""
    token = st.session_state.get("token")
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    # this tab's cookies were read when it connected: that token must not sign anybody in again
    st.session_state.ended_token = token
    st.session_state.clear_cookie = True


def restore_session() -> None:
    """Sign in from the session cookie the browser sent (after a reload), if its API session still lives.

    A cookie whose API session ended (sign-out, expiry, password change, deactivation)
    signs nobody in and is cleared. When the API cannot be reached, the sign-in page
    shows its error and the cookie stays for the next try.
    """
    if user() is not None:
        return
    token = st.context.cookies.get(SESSION_COOKIE)
    if not token or token == st.session_state.get("ended_token"):
        return
    try:
        me = Api(token=token).get("/auth/me")
    except ApiError as exc:
        if exc.status == 401:
            st.session_state.ended_token = token
            st.session_state.clear_cookie = True
        return
    sign_in(token, me)  # the browser holds this cookie already: nothing to write


def sync_cookie() -> None:
    """Write the session cookie after a sign-in, or clear it after a sign-out, in the browser.

    Streamlit cannot set cookies on its HTTP responses, so a small script on the page does:
    SameSite=Strict, Secure when the page came over https, Max-Age = the API session's
    remaining life. Scripts cannot set HttpOnly cookies.
    """
    token, expires_at = st.session_state.get("token"), st.session_state.get("session_expires_at")
    if token and expires_at:
        remaining = datetime.fromisoformat(expires_at) - datetime.now(UTC)
        _cookie_script(token, max(0, int(remaining.total_seconds())))
    elif not token and st.session_state.get("clear_cookie"):
        _cookie_script("", 0)


def _cookie_script(value: str, max_age: int) -> None:
    # the API's tokens are URL-safe base64: no quote, semicolon or angle bracket may reach the script
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise ValueError("a session token with unexpected characters")
    st.html(
        "<script>document.cookie = "
        f"'{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; SameSite=Strict'"
        " + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )


def call(action: Callable[[], T], *, success: str | None = None) -> T | None:
    """Run an API call; show a plain error (never a stack trace) and return None when it fails."""
    try:
        result = action()
    except ApiError as exc:
        if exc.status == 401 and user() is not None:
            sign_out()
        st.error(exc.message, icon=":material/error:")
        return None
    if success:
        # kept for the next run too: most actions rerun the page to show the new state
        st.session_state.flash = success
        st.success(success, icon=":material/check_circle:")
    return result


def require(permission: str) -> None:
    """Stop the page for people whose role does not allow it; show the last action's result."""
    if not can(permission):
        st.warning("Your account is not allowed to use this page.")
        st.stop()
    flash = st.session_state.pop("flash", None)
    if flash:
        st.success(flash, icon=":material/check_circle:")


# short-lived: the API says no-store, and an erased face must not stay on the admin for long
@st.cache_data(show_spinner=False, max_entries=2000, ttl=60)
def _thumbnail(token: str, face_id: int) -> bytes:
    return Api(token=token).get_bytes(f"/faces/{face_id}/thumbnail")


def thumbnail(face_id: int) -> bytes | None:
    try:
        return _thumbnail(st.session_state.get("token", ""), face_id)
    except ApiError:
        return None


def data_url(jpeg: bytes | None) -> str | None:
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def children_options(status: str | None = "active") -> dict[int, str]:
    """Child id -> 'Name (external id)' for pickers."""
    page = call(lambda: api().get("/children", status=status, limit=500))
    if not page:
        return {}
    return {c["id"]: f"{c['name']} ({c['external_id']})" for c in page["items"]}


def detect(name: str, data: bytes) -> dict[str, Any] | None:
    """The API's face detection for a photo, remembered for this session (pages rerun often)."""
    cache = st.session_state.setdefault("detections", {})
    key = hashlib.sha256(data).hexdigest()
    if key not in cache:
        found = call(lambda: api().post("/detect", files={"file": (name, data)}))
        if found is None:
            return None
        cache[key] = found
    return cache[key]


def open_image(data: bytes) -> Image.Image:
    # upright as the camera meant it, like the server's decoder, so boxes line up
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def draw_boxes(data: bytes, boxes: list[tuple[list[float], str, str]]) -> Image.Image:
    """The photo with each (box, label, colour) drawn on it."""
    image = open_image(data)
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 45)))
    for box, label, colour in boxes:
        x1, y1, x2, y2 = box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        if label:
            _, _, text_w, text_h = draw.textbbox((0, 0), label, font=font)
            lift = text_h + 2 * width
            y = y1 - lift if y1 - lift >= 0 else y2  # above the box, or below it at the top edge
            draw.rectangle((x1, y, x1 + text_w + 2 * width, y + lift), fill=colour)
            draw.text((x1 + width, y + width), label, fill="white", font=font)
    return image
