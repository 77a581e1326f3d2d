"""Review: faces recognition was unsure about, and children that look enrolled twice.

Each unsure face is shown boxed on the photo it came from, with when and from
whom the photo came (a staff member, an API key). A pair of look-alike children
is merged, dismissed as two different children (for good), or, when one face
alone makes the pair, fixed by moving that face.
"""

from __future__ import annotations

import math

import streamlit as st

from admin_ui import describe, ui, widgets

ui.require("write")
api = ui.api()
st.title("Review")
zone, zone_note = widgets.local_zone()
queue_tab, duplicates_tab = st.tabs(["Unsure recognitions", "Possible duplicates"])
PAGE_SIZE = 10


def resolve(review_id: int, body: dict, message: str) -> None:
    if ui.call(lambda: api.post(f"/review/{review_id}/resolve", json=body), success=message):
        st.rerun()


def source_words(item: dict) -> str:
    source = item.get("source")
    if source is None:
        return "Where the photo came from is no longer on record."
    who = {"user": "staff member {}", "api_key": "API key {}"}.get(source["kind"], "{}").format(
        source["name"] if source["kind"] != "system" else "the system")
    return f"Sent for recognition on {describe.when(source['at'], zone)} by {who}."


with queue_tab:
    page_number = st.session_state.get("review_page", 1)
    page = ui.call(lambda: api.get("/review/queue", limit=PAGE_SIZE, offset=(page_number - 1) * PAGE_SIZE))
    items = page["items"] if page else []
    if page is not None and not page["total"]:
        st.success("Nothing to review.")
    elif page is not None:
        pages = max(1, math.ceil(page["total"] / PAGE_SIZE))
        if not items:  # the last page emptied: show the new last page
            st.session_state.review_page = pages
            st.rerun()
        st.caption(f"{page['total']} face(s) to review, oldest first. {zone_note}")
        if pages > 1:
            st.number_input("Page", min_value=1, max_value=pages, step=1, key="review_page")
    for item in items:
        face = item["face"]
        with st.container(border=True):
            picture, details = st.columns([2, 3])
            photo = widgets.photo_with_box(face, "?")
            if photo is not None:
                picture.image(photo, width="stretch")
            picture.caption(source_words(item))
            candidates = item["candidates"]
            if candidates:
                details.markdown("**Who is this?** The system suggests:")
                details.table([{"Child": f"{c.get('name') or '?'} ({c.get('external_id') or c['child_id']})",
                                "Similarity": f"{c['score']:.2f}"} for c in candidates[:3]])
            else:
                details.markdown("**Who is this?** The system has no suggestion.")
            why = describe.decision_reasons(item.get("reasons"))
            if why:
                details.caption(f"Why a person decides: {why}")
            key = f"review_{item['id']}"
            actions = details.columns(4)
            best = candidates[0] if candidates else None
            if best and actions[0].button(f"It is {best.get('name') or 'the first suggestion'}",
                                          key=f"{key}_confirm", type="primary"):
                resolve(item["id"], {"action": "confirm"}, "Confirmed.")
            if actions[3].button("Nobody we know", key=f"{key}_dismiss"):
                resolve(item["id"], {"action": "dismiss"}, "Dismissed: nobody enrolled.")
            with actions[1].popover("Another child"):
                target = widgets.find_child("Search name or ID", f"{key}_target")
                if target is not None and st.button("Assign", key=f"{key}_assign"):
                    name = widgets.child_names([target])[target]
                    resolve(item["id"], {"action": "assign", "child_id": target}, f"Assigned to {name}.")
            with actions[2].popover("New child"):
                new_id = st.text_input("ID", key=f"{key}_new_id")
                new_name = st.text_input("Name", key=f"{key}_new_name")
                if st.button("Create and assign", key=f"{key}_new"):
                    if new_id.strip() and new_name.strip():
                        body = {"external_id": new_id.strip(), "name": new_name.strip()}
                        resolve(item["id"], {"action": "new_child", "new_child": body},
                                f"Added {new_name.strip()} as a new child.")
                    else:
                        st.error("Enter the child's ID and name.")

with duplicates_tab:
    found = ui.call(lambda: api.get("/review/duplicates"))
    pairs = found["pairs"] if found else []
    if found is not None and not pairs:
        st.success("No children look enrolled twice.")
    pictures = widgets.thumbnails(
        face_id for pair in pairs for face_id in (pair["a"]["face_id"], pair["b"]["face_id"],
                                                  pair.get("suspect_face_id"))
    )
    for pair in pairs:
        a, b = pair["a"], pair["b"]
        # keyed by the pair, not its place: a tick must not pass to the next pair after a rerun
        n = f"{a['child_id']}_{b['child_id']}"
        with st.container(border=True):
            st.markdown(f"**{ui.md(a['name'])}** ({ui.md(a['external_id'])}) and **{ui.md(b['name'])}** "
                        f"({ui.md(b['external_id'])}) "
                        f"look alike (similarity {pair['score']:.2f}).")
            cols = st.columns([1, 1, 2])
            for col, side in ((cols[0], a), (cols[1], b)):
                if pictures.get(side["face_id"]):
                    col.image(pictures[side["face_id"]], caption=side["name"], width="stretch")
                if col.button(f"Open {side['name']}", key=f"dup_{n}_open_{side['child_id']}"):
                    st.session_state.child_id = side["child_id"]
                    st.switch_page(st.session_state.pages["child"])
            suspect = pair.get("suspect_face_id")
            if suspect is not None:
                owner, other = (a, b) if pair["suspect_child_id"] == a["child_id"] else (b, a)
                cols[2].warning(f"One face of {owner['name']} (face {suspect}) looks like {other['name']}, "
                                f"while {owner['name']}'s other faces do not: it was probably enrolled under "
                                f"the wrong child. Move it rather than merging.")
                if pictures.get(suspect):
                    cols[2].image(pictures[suspect], caption=f"Face {suspect}", width=120)
                if cols[2].button(f"Move this face to {other['name']}", key=f"dup_{n}_move", type="primary") \
                        and ui.call(lambda suspect=suspect, other=other: api.post(
                            f"/faces/{suspect}/reassign", json={"child_id": other["child_id"]}),
                            success=f"Face {suspect} moved to {other['name']}."):
                    st.rerun()
            sure = cols[2].checkbox("They are the same child", key=f"dup_{n}_sure")
            merge = cols[2].button(f"Merge {b['name']} into {a['name']}", key=f"dup_{n}_merge",
                                   disabled=not sure)
            if merge and ui.call(lambda a=a, b=b: api.post(f"/children/{a['child_id']}/merge",
                                                          json={"source_id": b["child_id"]}),
                                 success=f"Merged {b['name']} into {a['name']}."):
                st.rerun()
            dismiss = cols[2].button("Not the same child", key=f"dup_{n}_dismiss", icon=":material/block:")
            if dismiss and ui.call(
                lambda a=a, b=b: api.post("/review/duplicates/dismiss",
                                          json={"child_a_id": a["child_id"], "child_b_id": b["child_id"]}),
                success=f"{a['name']} and {b['name']} are kept as different children; this pair will not "
                        "be shown again.",
            ):
                st.rerun()
