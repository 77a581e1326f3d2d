"""Enroll: choose or add a child, add photos (upload or camera), pick the child's face, confirm.

Nothing is chosen for the person: in a photo with several faces they pick the
child's face on large numbered crops, and the Enroll button stays disabled
until every such photo has a choice. Photos without a face are not sent. A
face the server finds unlike the child's other photos (needs_confirmation) is
held until the person confirms it ("Enroll anyway") or discards it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import streamlit as st
from PIL import Image

from admin_ui import ui, widgets
from admin_ui.client import ApiError

ui.require("enroll")
api = ui.api()
st.title("Enroll photos")

CHOSEN, OTHER = "#1a9850", "#999999"
STATUS_WORDS = {"enrolled": "Enrolled", "duplicate": "Already enrolled", "refused": "Not enrolled",
                "needs_confirmation": "Waiting for your confirmation"}


def _raise(exc: ApiError) -> None:
    raise exc


def add_child(body: dict[str, Any]) -> dict[str, Any] | None:
    """Create the child; a taken ID is said in staff words (the API answers 409 `conflict`)."""
    try:
        return api.post("/children", json=body)
    except ApiError as exc:
        error = exc
    if error.status != 409:
        return ui.call(lambda: _raise(error))  # the usual display (and sign-out when the session ended)
    external_id = body["external_id"]
    found = ui.call(lambda: api.get("/children", q=external_id, limit=50)) or {"items": []}
    owner = next((c for c in found["items"] if c["external_id"] == external_id), None)
    who = f" ({owner['name']}{', archived' if owner['status'] != 'active' else ''})" if owner else ""
    st.error(f"A child with the ID '{external_id}' already exists{who}. Choose them under \"Child\" "
             "below, or check the ID.", icon=":material/error:")
    return None


def crop(data: bytes, box: list[float], size: int = 220) -> Image.Image:
    """The face with some of its surroundings, large enough to tell people apart."""
    image = ui.open_image(data)
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * 0.35, (y2 - y1) * 0.35
    area = (max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y)),
            min(image.width, int(x2 + pad_x)), min(image.height, int(y2 + pad_y)))
    face = image.crop(area)
    scale = size / max(face.size)
    return face.resize((max(1, round(face.width * scale)), max(1, round(face.height * scale))))


def hint_text(box: list[float]) -> str:
    return ",".join(f"{v:.1f}" for v in box)


def child_label(child_id: int) -> str:
    """'Name (ID)' of a child, or 'another child' when this account cannot see it."""
    names = st.session_state.setdefault("enroll_child_names", {})
    if child_id not in names:
        try:
            child = api.get(f"/children/{child_id}")
            names[child_id] = f"{child['name']} ({child['external_id']})"
        except ApiError:
            return "another child"
    return names[child_id]


# ---- 1. the child ------------------------------------------------------------------------------
st.subheader("1. Which child?")
options = ui.children_options()
with st.expander("The child is not in the list: add a new child", expanded=not options,
                 icon=":material/person_add:"), st.form("enroll_new_child", clear_on_submit=True):
    new_id = st.text_input("ID (as in your records)", key="enroll_new_external_id")
    new_name = st.text_input("Name", key="enroll_new_name")
    new_group = st.text_input("Group (optional)", key="enroll_new_group")
    if st.form_submit_button("Add child"):
        if not new_id.strip() or not new_name.strip():
            st.error("Enter the child's ID and name.")
        else:
            created = add_child({"external_id": new_id.strip(), "name": new_name.strip(),
                                 "group": new_group.strip() or None})
            if created:
                st.session_state.child_id = st.session_state.enroll_child = created["id"]
                st.session_state.flash = f"Added {created['name']}."
                st.rerun()
# the list holds the first children by name; a child beyond it (just added, opened on another page,
# or found by the search) is added to it, and nothing is ever chosen for the person
searched = widgets.find_child("Search all children by name or ID", key="enroll_search")
if searched is not None:
    st.session_state.enroll_child = searched
wanted = st.session_state.get("enroll_child") or st.session_state.get("child_id")
if wanted is not None and wanted not in options:
    try:
        extra = api.get(f"/children/{wanted}")
        if extra["status"] == "active":
            options = {wanted: f"{extra['name']} ({extra['external_id']})", **options}
    except ApiError:
        pass
if not options:
    st.stop()
ids = list(options)
if st.session_state.get("enroll_child") not in ids:  # first visit, or the child came from another page
    st.session_state.enroll_child = wanted if wanted in ids else None
child_id = st.selectbox("Child", ids, format_func=options.get, key="enroll_child", index=None,
                        placeholder="Choose the child...")
if child_id is None:
    st.info("Choose the child first (or add a new one above).", icon=":material/touch_app:")
    st.stop()
child_name = options[child_id].rsplit(" (", 1)[0]

# ---- 2. the photos -------------------------------------------------------------------------------
st.subheader("2. Photos of the child")
st.caption("Clear, well-lit photos, face towards the camera. Several photos help recognition.")
# a new generation of widget keys empties the uploader, the camera and the face choices after enrolling
generation = st.session_state.setdefault("enroll_generation", 0)
uploads = st.file_uploader("Upload photos", type=ui.PHOTO_TYPES,
                           accept_multiple_files=True, key=f"enroll_files_{generation}") or []
use_camera = st.toggle("Use the camera", key="enroll_use_camera")
camera = st.camera_input("Or take a photo", key=f"enroll_camera_{generation}") if use_camera else None
photos = [(f.name, f.getvalue()) for f in uploads]
if camera is not None:
    photos.append(("camera.jpg", camera.getvalue()))

# ---- 3. check: faces found, quality, which face is the child -----------------------------------------
sendable: list[tuple[str, bytes, list[float] | None]] = []  # (name, photo, hint box) in upload order
unchosen = 0
if photos:
    st.subheader("3. Check the faces")
for name, data in photos:
    found = ui.detect(name, data)
    if found is None:  # the API said why (ui.call showed it)
        continue
    faces = found["faces"]
    with st.container(border=True):
        if not faces:
            left, right = st.columns([1, 2])
            left.image(ui.open_image(data), width="stretch")
            right.markdown(f"**{name}**")
            right.error("No face found in this photo. It will not be sent.")
            continue
        verdicts = [("good" if f["quality"]["passed"] else ui.reasons_text(f["quality"]["reasons"]))
                    for f in faces]
        if len(faces) == 1:
            left, right = st.columns([1, 2])
            left.image(ui.draw_boxes(data, [(faces[0]["box"], "1", CHOSEN)]), width="stretch")
            right.markdown(f"**{name}**")
            right.write(f"Face 1: {verdicts[0]}")
            sendable.append((name, data, None))
            continue
        st.markdown(f"**{ui.md(name)}: {len(faces)} faces. Which one is {ui.md(child_name)}?**")
        # keyed by the photo itself: removing another upload must not hand this one its choice
        pick_key = f"enroll_pick_{generation}_{hashlib.sha256(data).hexdigest()[:16]}"
        chosen = st.session_state.get(pick_key)
        boxes = [(f["box"], f"{n + 1}", CHOSEN if n == chosen else OTHER) for n, f in enumerate(faces)]
        st.image(ui.draw_boxes(data, boxes), width="stretch")
        columns = st.columns(min(len(faces), 6))
        for n, face in enumerate(faces):
            columns[n % len(columns)].image(crop(data, face["box"]), caption=f"Face {n + 1}: {verdicts[n]}",
                                            width="stretch")
        pick = st.radio(f"Which face is {child_name}?", list(range(len(faces))), index=None,
                        format_func=lambda n: f"Face {n + 1}", horizontal=True, key=pick_key)
        if pick is None:
            unchosen += 1
            st.info("Choose the child's face to enroll this photo.", icon=":material/touch_app:")
        else:
            sendable.append((name, data, faces[pick]["box"]))


def send(batch: list[tuple[str, bytes, list[float] | None]], child: int, name: str, *,
         confirm: bool = False) -> list[dict[str, Any]]:
    """Enroll these photos for child `child` (called `name`): one request per photo with a hint box
    (a box belongs to its photo), one for the rest. The results in order, each with its photo."""
    plain = [p for p in batch if p[2] is None]
    requests = [[p] for p in batch if p[2] is not None] + ([plain] if plain else [])
    results: list[dict[str, Any]] = []
    for request in requests:
        hints = [hint_text(p[2]) for p in request if p[2] is not None]
        form: dict[str, Any] = {"hint_box": hints} if hints else {}
        if confirm:
            form["confirm"] = "true"
        answer = ui.call(lambda request=request, form=form: api.post(
            f"/children/{child}/images", files=[("files", (n, d)) for n, d, _ in request], data=form or None))
        if answer:
            results += [{"name": n, "data": d, "hint": h, "child_id": child, "child": name, **r}
                        for (n, d, h), r in zip(request, answer["photos"], strict=True)]
    return results


# ---- 4. confirm ----------------------------------------------------------------------------------
if photos:
    st.subheader("4. Confirm")
    count = len(sendable) + unchosen  # every photo with a face; photos without one are not sent
    label = f"Enroll {count} photo{'' if count == 1 else 's'} for {child_name}"
    if unchosen:
        st.caption(f"Choose {child_name}'s face in every photo with several faces first "
                   f"({unchosen} left).")
    elif not count:
        st.caption("None of these photos has a face to enroll.")
    if st.button(label, type="primary", key="enroll_submit", disabled=bool(unchosen) or not count):
        with st.spinner("Enrolling..."):
            results = send(sendable, child_id, child_name)
        if results:
            st.session_state.enroll_results = results
            st.session_state.enroll_generation = generation + 1
            st.rerun()

# ---- the last enrollment's results, and faces waiting for a confirmation ---------------------------------
results: list[dict[str, Any]] = st.session_state.get("enroll_results", [])
if results:
    st.subheader("Result")
    enrolled = sum(r["status"] == "enrolled" for r in results)
    plural = "" if len(results) == 1 else "s"
    (st.success if enrolled == len(results) else st.warning)(
        f"{enrolled} of {len(results)} photo{plural} enrolled for {results[0]['child']}.")
for k, result in enumerate(results):
    chosen_id = result.get("enrolled_face_id")
    boxes = [(f["box"], "", CHOSEN if f.get("face_id") == chosen_id and chosen_id else OTHER)
             for f in result["faces"]]
    with st.container(border=True):
        left, right = st.columns([1, 2])
        left.image(ui.draw_boxes(result["data"], boxes), width="stretch")
        right.markdown(f"**{result['name']}: {STATUS_WORDS[result['status']]}**")
        if result["status"] in {"duplicate", "refused"}:
            duplicate = result["status"] == "duplicate"
            said = result["message"] if duplicate else ui.reasons_text(result["reasons"])
            right.write(said[:1].upper() + said[1:] + ".")
        if result["status"] != "needs_confirmation":
            continue
        check = result["consistency"]
        if check["other_child_id"] is not None and check["rule"] == "closer_to_other_child":
            right.warning(
                f"This face looks more like {child_label(check['other_child_id'])} than like "
                f"{result['child']}: similarity {check['other_score']:.2f} to that child's photos, "
                f"{check['own_score']:.2f} to {result['child']}'s (1.00 = identical).",
                icon=":material/warning:")
        else:
            right.warning(
                f"This face looks unlike {result['child']}'s other photos: similarity "
                f"{check['own_score']:.2f}; photos of one child usually score above "
                f"{check['threshold']:.2f} (1.00 = identical).",
                icon=":material/warning:")
        key = hashlib.sha256(result["data"]).hexdigest()[:16]
        sure = right.checkbox(f"I have checked: this is {result['child']}", key=f"enroll_sure_{key}")
        yes, no = right.columns(2)
        if yes.button("Enroll anyway", key=f"enroll_anyway_{key}", disabled=not sure, type="primary"):
            photo = (result["name"], result["data"], result["hint"])
            again = send([photo], result["child_id"], result["child"], confirm=True)
            if again:
                results[k] = again[0]
                st.rerun()
        if no.button("Don't enroll", key=f"enroll_discard_{key}"):
            results[k] = {**result, "status": "refused", "reasons": ["not_confirmed"]}
            st.rerun()
