"""Enroll: choose or add a child, add photos (upload or camera), check the faces, confirm."""

from __future__ import annotations

import streamlit as st

from admin_ui import ui

ui.require("enroll")
api = ui.api()
st.title("Enroll photos")

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
            body = {"external_id": new_id.strip(), "name": new_name.strip(),
                    "group": new_group.strip() or None}
            created = ui.call(lambda: api.post("/children", json=body))
            if created:
                st.session_state.child_id = st.session_state.enroll_child = created["id"]
                st.session_state.flash = f"Added {created['name']}."
                st.rerun()
if not options:
    st.stop()
ids = list(options)
if st.session_state.get("enroll_child") not in ids:  # first visit, or the child came from another page
    preselected = st.session_state.get("child_id")
    st.session_state.enroll_child = preselected if preselected in ids else ids[0]
child_id = st.selectbox("Child", ids, format_func=options.get, key="enroll_child")

# ---- 2. the photos -------------------------------------------------------------------------------
st.subheader("2. Photos of the child")
st.caption("Clear, well-lit photos, face towards the camera. Several photos help recognition.")
uploads = st.file_uploader("Upload photos", type=["jpg", "jpeg", "png", "webp", "bmp"],
                           accept_multiple_files=True, key="enroll_files") or []
use_camera = st.toggle("Use the camera", key="enroll_use_camera")
camera = st.camera_input("Or take a photo", key="enroll_camera") if use_camera else None
photos = [(f.name, f.getvalue()) for f in uploads]
if camera is not None:
    photos.append(("camera.jpg", camera.getvalue()))
if not photos:
    st.stop()

# ---- 3. check: faces found, quality, which face is the child -----------------------------------------
st.subheader("3. Check the faces")
hints: dict[int, list[float]] = {}
problems = 0
columns = st.columns(min(3, len(photos)))
for i, (name, data) in enumerate(photos):
    with columns[i % len(columns)]:
        found = ui.detect(name, data)
        if found is None:
            problems += 1
            continue
        faces = found["faces"]
        boxes = [(f["box"], str(n + 1), "#1a9850" if f["quality"]["passed"] else "#d73027")
                 for n, f in enumerate(faces)]
        st.image(ui.draw_boxes(data, boxes), caption=name, width="stretch")
        if not faces:
            st.error("No face found in this photo.")
            problems += 1
        for n, face in enumerate(faces):
            verdict = "good" if face["quality"]["passed"] else ui.reasons_text(face["quality"]["reasons"])
            st.write(f"Face {n + 1}: {verdict}")
        if len(faces) > 1:
            pick = st.selectbox("Which face is the child?", list(range(len(faces))),
                                format_func=lambda n: f"Face {n + 1}", key=f"enroll_pick_{i}_{name}")
            hints[i] = faces[pick]["box"]

# ---- 4. confirm ----------------------------------------------------------------------------------
st.subheader("4. Confirm")
if st.button(f"Enroll {len(photos)} photo(s) for {options[child_id]}", type="primary", key="enroll_submit"):
    if hints:  # a hint box belongs to its photo: one request per photo keeps them paired
        batches = [([photos[i]], [",".join(f"{v:.1f}" for v in hints[i])] if i in hints else [])
                   for i in range(len(photos))]
    else:
        batches = [(photos, [])]
    results = []
    with st.spinner("Enrolling..."):
        for batch, hint in batches:
            answer = ui.call(lambda batch=batch, hint=hint: api.post(
                f"/children/{child_id}/images", files=[("files", (n, d)) for n, d in batch],
                data={"hint_box": hint} if hint else None))
            if answer:
                results += list(zip(batch, answer["photos"], strict=True))
    enrolled = sum(r["status"] == "enrolled" for _, r in results)
    if results:
        (st.success if enrolled else st.warning)(f"{enrolled} of {len(results)} photo(s) enrolled.")
    for (name, data), result in results:
        chosen = result.get("enrolled_face_id")
        boxes = [(f["box"], "enrolled" if f.get("face_id") == chosen and chosen else "", "#1a9850"
                  if f.get("enrolled") else "#999999") for f in result["faces"]]
        with st.container(border=True):
            left, right = st.columns([1, 2])
            left.image(ui.draw_boxes(data, boxes), width="stretch")
            status = {"enrolled": "Enrolled", "duplicate": "Already enrolled", "refused": "Not enrolled"}
            right.markdown(f"**{name}: {status[result['status']]}**")
            if result["status"] != "enrolled":
                right.write(ui.reasons_text(result["reasons"]) or result["message"])
