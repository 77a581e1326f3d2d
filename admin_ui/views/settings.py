"""Settings (administrators): the model and thresholds in use, calibration, API keys."""

from __future__ import annotations

import base64
from urllib.parse import quote

import streamlit as st

from admin_ui import ui
from admin_ui.client import ApiError

ui.require("admin")
api = ui.api()
st.title("Settings")
model_tab, keys_tab = st.tabs(["Recognition", "API keys"])

THRESHOLDS = {  # setting -> (label, help, (lowest, highest) allowed)
    "accept_threshold": ("Recognised when similarity is at least",
                         "A face counts as a child when it is at least this similar to the child's photos.",
                         (-1.0, 1.0)),
    "review_threshold": ("Sent to review when at least",
                         "Below the recognition level but at least this similar: a person decides.",
                         (-1.0, 1.0)),
    "match_margin": ("Lead over the next child needed",
                     "The best child must be this much more similar than the next one, else: review.",
                     (0.0, 2.0)),
    "top_k": ("Candidates shown per face", "How many possible children a recognition lists.", (1, 100)),
}


def saved(body: dict, success: str) -> None:
    """Send threshold changes; on success show the values now in force (the inputs start afresh)."""
    if ui.call(lambda: api.patch("/admin/settings", json=body), success=success):
        for key in THRESHOLDS:
            st.session_state.pop(f"setting_{key}", None)
        st.rerun()


def thresholds_form(current: dict) -> None:
    """The decision thresholds, changeable here; in force at once on every server (no restart)."""
    st.markdown("**Decision thresholds** (similarity between 0 and 1)")
    changed, configured = current["changed"], current["configured"]
    with st.form("thresholds"):
        values = {}
        for key, (label, help_text, (low, high)) in THRESHOLDS.items():
            note = ""
            if key in changed:
                note = (f" · changed by {changed[key]['updated_by'].split(':', 1)[-1]}, "
                        f"configured {configured[key]}")
            whole = isinstance(low, int)
            value = int(current[key]) if whole else float(current[key])
            values[key] = st.number_input(label + note, min_value=low, max_value=high, value=value,
                                          step=1 if whole else 0.001, format="%d" if whole else "%.3f",
                                          help=help_text, key=f"setting_{key}")
        if st.form_submit_button("Save thresholds", icon=":material/save:"):
            body = {k: v for k, v in values.items() if v != current[k]}
            if not body:
                st.info("Nothing changed.")
            else:
                saved(body, "Thresholds saved: every server uses them from its next recognition.")
    if changed and st.button("Back to the configured values", key="settings_reset",
                             help=", ".join(f"{k.replace('_', ' ')} {configured[k]}" for k in changed)):
        saved(dict.fromkeys(changed), "Thresholds set back to the server's configured values.")


def face_pairs(pairs: list[dict]) -> list[dict]:
    return [{"Face": p["face_a"], "Child": p["child_a"], "Other face": p["face_b"],
             "Other child": p["child_b"], "Similarity": p["score"]} for p in pairs]


def calibration_details(report: dict) -> None:
    """Which faces drive the proposal: the faces left out, the closest pairs of different children,
    the least similar pairs of one child (ids as on the child pages)."""
    suspects = report.get("suspect_faces", [])
    if suspects:
        st.warning(f"{len(suspects)} face(s) look more like another child than like their own child's other "
                   "photos. They were left out of the proposal: check that each is enrolled under the right "
                   "child.")
        for suspect in suspects:
            cols = st.columns([1, 1, 4])
            for col, face_id in zip(cols, (suspect["face_id"], suspect["other_face_id"]), strict=False):
                picture = ui.thumbnail(face_id)
                if picture:
                    col.image(picture, caption=f"Face {face_id}", width=96)
            cols[2].markdown(
                f"Face {suspect['face_id']} of child {suspect['child_id']} is {suspect['other_score']} "
                f"similar to face {suspect['other_face_id']} of child {suspect['other_child_id']}, but at "
                f"most {suspect['own_score']} to its own child's other photos.")
    drivers = report.get("drivers")
    if drivers:
        with st.expander("Faces that set the proposal"):
            st.caption("Most similar faces of different children (they set the recognition level):")
            st.dataframe(face_pairs(drivers["top_impostor"]), hide_index=True, width="stretch",
                         key="calibration_top_impostor")
            st.caption("Least similar photos of one child (they decide how many real matches pass):")
            st.dataframe(face_pairs(drivers["lowest_genuine"]), hide_index=True, width="stretch",
                         key="calibration_lowest_genuine")


def model_summary(model: dict) -> str:
    """How a model is loaded, in words: embedder, weights file, backbone, flip."""
    spec = model.get("spec") or {}
    if not spec:
        return "how to load it is not recorded"
    parts = [spec["embedder"]]
    if spec.get("weights"):
        parts.append(f"weights {spec['weights']}")
    if spec["embedder"] == "arcface" and spec.get("arch"):
        parts.append(f"backbone {spec['arch']}")
    parts.append("with flip averaging" if spec.get("flip") else "without flip averaging")
    return ", ".join(parts)


def reembed_progress(job: dict) -> None:
    """The latest re-embedding: a progress bar while it runs, the outcome when it ended."""
    total = max(job["total"], 1)
    done = job["done"] + job["failed"]
    speed = f" · {job['faces_per_s']} faces/s" if job.get("faces_per_s") else ""
    left = job.get("eta_s")
    eta = f" · about {int(left // 60)} min {int(left % 60)} s left" if left else ""
    label = f"Re-embedding with {job['model_key']}: {job['done']} of {job['total']} faces{speed}{eta}"
    if job["status"] == "running":
        st.progress(min(done / total, 1.0), text=label)
    elif job["status"] == "finished":
        st.success(f"Re-embedding with {job['model_key']} finished: {job['done']} of {job['total']} faces.",
                   icon=":material/check_circle:")
    else:
        st.warning(f"Re-embedding with {job['model_key']} {job['status']}: {job['done']} of {job['total']} "
                   f"faces done. Start it again to go on. {job.get('error') or ''}")
    if job["failed"]:
        st.caption(f"{job['failed']} face(s) could not be embedded: "
                   + "; ".join(f"face {f['face_id']}: {f['reason']}" for f in job["failures"][:10]))


def embedding_models() -> None:
    """The embedding model in use, the others with their coverage, re-embedding and switching."""
    st.subheader("Embedding model")
    st.caption("The network that turns a face into numbers. To move to another one: re-embed every face "
               "with it (recognition goes on meanwhile), check it, then make it current. Every server "
               "follows at once.")
    listed = ui.call(lambda: api.get("/models"))
    if not listed:
        return
    models = listed["models"]
    current = next((m for m in models if m["state"] == "current"), None)
    if current:
        thresholds = (current.get("spec") or {}).get("thresholds")
        own = (f" · its own thresholds: accept {thresholds['accept_threshold']}, review "
               f"{thresholds['review_threshold']}") if thresholds else ""
        st.markdown(f"**In use:** `{current['key']}` ({model_summary(current)}), {current['embeddings']} "
                    f"faces{own}")
    if listed.get("note"):
        st.info(listed["note"], icon=":material/info:")
    others = [m for m in models if m["state"] != "current"]
    if others:
        rows = [{"Model": m["key"], "How it loads": model_summary(m),
                 "Faces covered": f"{m['covered_faces']} of {m['enrolled_faces']} ({m['coverage']:.0%})"}
                for m in others]
        st.dataframe(rows, hide_index=True, width="stretch", key="models_table")

    try:
        job = api.get("/models/reembed")
    except ApiError:
        job = None  # none ran yet

    @st.fragment(run_every=2 if job and job["status"] == "running" else None)
    def progress() -> None:
        latest = ui.call(lambda: api.get("/models/reembed")) if job else None
        if latest:
            reembed_progress(latest)
            if latest["status"] != "running" and job["status"] == "running":
                st.rerun()  # it ended: the whole page shows the new coverage

    progress()
    with st.form("reembed"):
        st.markdown("**Re-embed every face with another model**")
        cols = st.columns([2, 3, 1])
        embedder = cols[0].selectbox("Embedder", ["arcface", "dlib-resnet"], key="reembed_embedder")
        weights = cols[1].text_input("Weights file on the server (.pth or .onnx)", key="reembed_weights",
                                     help="Leave empty for dlib-resnet's packaged weights.")
        arch = cols[2].selectbox("Backbone", ["r50", "r100", "r34", "r18", "mbf"], key="reembed_arch",
                                 help="For an arcface .pth file; an .onnx file names its own.")
        flip = st.checkbox("Average each face with its mirror image (flip)", value=True, key="reembed_flip")
        if st.form_submit_button("Re-embed", icon=":material/model_training:"):
            body = {"embedder": embedder, "weights": weights.strip() or None, "arch": arch, "flip": flip}
            if ui.call(lambda: api.post("/models/reembed", json=body),
                       success="Re-embedding started: recognition goes on with the current model meanwhile."):
                st.rerun()
    if others:
        choices = {m["key"]: f"{m['key']} ({m['coverage']:.0%} of the faces)" for m in others}
        chosen = st.selectbox("Make another model current", list(choices), format_func=choices.get,
                              index=None, placeholder="Choose a model...", key="switch_model")
        if chosen is not None:
            sure = st.checkbox(f"I have checked {chosen}: every server recognises with it from now on "
                               "(the current model's data stays, so switching back is possible)",
                               key="switch_sure")
            if st.button("Make current", key="switch_button", type="primary", disabled=not sure) and ui.call(
                lambda: api.post(f"/models/{quote(chosen, safe='')}/switch", json={}),
                success=f"{chosen} is now the current model on every server.",
            ):
                st.session_state.pop("switch_model", None)
                st.session_state.pop("switch_sure", None)
                st.rerun()


with model_tab:
    current = ui.call(lambda: api.get("/admin/settings"))
    if current:
        cols = st.columns(3)
        cols[0].metric("Face model", current["embedder"])
        cols[1].metric("Faces in the search index", current["gallery_faces"] or 0)
        cols[2].metric("Runs on", current["device"])
        st.caption(f"Model id {current['model_id']} · detector {current['detector']}")
        thresholds_form(current)
        with st.expander("Photo quality rules"):
            st.table([{"Rule": k.replace("_", " "), "Value": v} for k, v in current["quality"].items()])
    st.subheader("Calibration")
    st.caption("How well the enrolled faces separate: scores of photos of the same child against photos of "
               "different children, and the thresholds that would give the target false-match rate.")
    far = st.select_slider("Target false-match rate", options=[0.01, 0.001, 0.0001], value=0.001,
                           key="calibration_far")
    if st.button("Run calibration", key="calibration_run", icon=":material/query_stats:"):
        with st.spinner("Comparing every enrolled face with every other..."):
            st.session_state.calibration = ui.call(lambda: api.get("/admin/calibration", target_far=far))
    calibration = st.session_state.get("calibration")
    if calibration:
        report = calibration["report"]
        st.image(base64.b64decode(calibration["plot_png"]), width="stretch")
        cols = st.columns(4)
        cols[0].metric("Children", report["children"])
        cols[1].metric("Enrolled faces", report["templates"])
        cols[2].metric("Proposed accept threshold", report["proposed"]["accept"],
                       delta=round(report["proposed"]["accept"] - report["current"]["accept"], 4))
        cols[3].metric("Proposed review threshold", report["proposed"]["review"],
                       delta=round(report["proposed"]["review"] - report["current"]["review"], 4))
        for note in report.get("notes", []):
            st.info(note)
        calibration_details(report)
        proposal = {"accept_threshold": report["proposed"]["accept"],
                    "review_threshold": report["proposed"]["review"]}
        if st.button("Use the proposed thresholds", key="calibration_apply", icon=":material/done_all:"):
            saved(proposal, "Proposed thresholds saved: every server uses them from its next recognition.")
    embedding_models()

with keys_tab:
    st.caption("Other systems (door terminals, attendance) sign in with an API key.")
    keys = ui.call(lambda: api.get("/admin/api-keys")) or []
    if keys:
        st.dataframe([{"Name": k["name"], "Starts with": k["prefix"], "Allowed": ", ".join(k["scopes"]),
                       "Revoked": k["revoked"], "Last used": k["last_used_at"] or "never"} for k in keys],
                     hide_index=True, width="stretch", key="keys_table")
    with st.form("key_create", clear_on_submit=True):
        name = st.text_input("What is the key for? (e.g. door-east)", key="key_name")
        scopes = st.multiselect("Allowed", ["recognize", "enroll", "admin"], default=["recognize"],
                                key="key_scopes")
        if st.form_submit_button("Create key"):
            body = {"name": name.strip(), "scopes": scopes}
            issued = ui.call(lambda: api.post("/admin/api-keys", json=body))
            if issued:
                st.session_state.issued_key = issued
                st.rerun()  # the table above reads the keys again: the new one is in it
    issued = st.session_state.pop("issued_key", None)
    if issued:
        st.warning("Copy this key now and store it safely: it will not be shown again.")
        st.code(issued["key"], language=None)
    live = {k["id"]: f"{k['name']} ({k['prefix']}...)" for k in keys if not k["revoked"]}
    if live:
        revoke = st.selectbox("Revoke a key", list(live), format_func=live.get, index=None,
                              placeholder="Choose a key...", key="key_revoke")
        if revoke is not None and st.button("Revoke", key="key_revoke_button", type="primary") and ui.call(
            lambda: api.post(f"/admin/api-keys/{revoke}/revoke"), success=f"Revoked {live[revoke]}."
        ):
            st.rerun()
