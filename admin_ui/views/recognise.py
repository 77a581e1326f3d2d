"""Recognise: upload a photo and see who the system finds in it, with scores and decisions."""

from __future__ import annotations

import streamlit as st

from admin_ui import describe, ui

#: why a face that needs review is not on the review list (the API's `review_not_queued_reason`)
NOT_QUEUED = {
    "already_enrolled": "Not added to the review list: this photo is already enrolled for a child.",
    "already_decided": "Not added to the review list: this face of this photo was reviewed before.",
    "not_requested": "Not added to the review list (not requested).",
    "candidates_erased": "Not added to the review list: the child it looked like was erased meanwhile.",
}

ui.require("recognize")
api = ui.api()
st.title("Recognise")
st.caption("A quick check: upload a photo and see who the system recognises.")

upload = st.file_uploader("Photo", type=ui.PHOTO_TYPES, key="recognise_file")
camera = st.camera_input("Or take a photo", key="recognise_camera") if st.toggle(
    "Use the camera", key="recognise_use_camera") else None
photo = upload or camera
if photo is None:
    st.stop()
data, name = photo.getvalue(), getattr(photo, "name", "camera.jpg")

digest = f"{name}:{len(data)}:{hash(data)}"
if st.session_state.get("recognised_key") != digest:
    with st.spinner("Looking for faces..."):
        result = ui.call(lambda: api.post("/recognize", files={"file": (name, data)}))
    if result is None:
        st.stop()
    st.session_state.recognised_key, st.session_state.recognised = digest, result
result = st.session_state.recognised

faces = result["faces"]
labels = []
for n, face in enumerate(faces):
    best = face["candidates"][0] if face["candidates"] else None
    if face["decision"] == "match" and best:
        text = f"{n + 1}: {best['name']} {best['score']:.2f}"
    elif face["decision"] == "review" and best:
        text = f"{n + 1}: {best['name']}? {best['score']:.2f}"
    else:
        text = f"{n + 1}: unknown"
    labels.append((face["box"], text, ui.DECISION_COLOURS[face["decision"]]))
st.image(ui.draw_boxes(data, labels), width="content")

if not faces:
    st.warning("No face found in this photo.")
for n, face in enumerate(faces):
    best = face["candidates"][0] if face["candidates"] else None
    with st.container(border=True):
        decision = ui.DECISION_WORDS[face["decision"]]
        if face["decision"] == "match" and best:
            who = f"{ui.md(best['name'])}** ({ui.md(best['external_id'])})"
            st.markdown(f"**Face {n + 1}: {decision}: {who}, similarity {best['score']:.2f}")
        else:
            st.markdown(f"**Face {n + 1}: {decision}**")
        why = describe.decision_reasons(face.get("reasons"))  # a match has none
        if why:
            st.caption(f"Why: {why}")
        elif not face["quality"]["passed"]:
            st.caption("Photo quality: " + ui.reasons_text(face["quality"]["reasons"]))
        if face["candidates"]:
            st.dataframe([{"Child": c["name"], "ID": c["external_id"], "Similarity": round(c["score"], 3)}
                          for c in face["candidates"]], hide_index=True, key=f"recognise_candidates_{n}")
        if face.get("review_id"):
            st.caption("Added to the review list for a person to decide.")
        elif face.get("review_queued") is False:
            st.caption(NOT_QUEUED.get(face.get("review_not_queued_reason"), "Not added to the review list."))
