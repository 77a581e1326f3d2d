"""Review: faces recognition was unsure about, and children that look enrolled twice."""

from __future__ import annotations

import streamlit as st

from admin_ui import ui

ui.require("write")
api = ui.api()
st.title("Review")
queue_tab, duplicates_tab = st.tabs(["Unsure recognitions", "Possible duplicates"])


def resolve(review_id: int, body: dict, message: str) -> None:
    if ui.call(lambda: api.post(f"/review/{review_id}/resolve", json=body), success=message):
        st.rerun()


with queue_tab:
    page = ui.call(lambda: api.get("/review/queue", limit=50))
    items = page["items"] if page else []
    if page is not None and not items:
        st.success("Nothing to review.")
    children = ui.children_options() if items else {}
    for item in items:
        face = item["face"]
        with st.container(border=True):
            picture, details = st.columns([1, 3])
            image = ui.thumbnail(face["id"])
            if image:
                picture.image(image, width="stretch")
            candidates = item["candidates"]
            if candidates:
                details.markdown("**Who is this?** The system suggests:")
                details.table([{"Child": f"{c.get('name') or '?'} ({c.get('external_id') or c['child_id']})",
                                "Similarity": f"{c['score']:.2f}"} for c in candidates[:3]])
            else:
                details.markdown("**Who is this?** The system has no suggestion.")
            key = f"review_{item['id']}"
            actions = details.columns(4)
            best = candidates[0] if candidates else None
            if best and actions[0].button(f"It is {best.get('name') or 'the first suggestion'}",
                                          key=f"{key}_confirm", type="primary"):
                resolve(item["id"], {"action": "confirm"}, "Confirmed.")
            if actions[3].button("Nobody we know", key=f"{key}_dismiss"):
                resolve(item["id"], {"action": "dismiss"}, "Dismissed: nobody enrolled.")
            with actions[1].popover("Another child"):
                target = st.selectbox("Child", list(children), format_func=children.get, key=f"{key}_target")
                if st.button("Assign", key=f"{key}_assign"):
                    resolve(item["id"], {"action": "assign", "child_id": target},
                            f"Assigned to {children.get(target)}.")
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
    for n, pair in enumerate(pairs):
        a, b = pair["a"], pair["b"]
        with st.container(border=True):
            st.markdown(f"**{a['name']}** ({a['external_id']}) and **{b['name']}** ({b['external_id']}) "
                        f"look alike (similarity {pair['score']:.2f}).")
            cols = st.columns([1, 1, 2])
            for col, side in ((cols[0], a), (cols[1], b)):
                image = ui.thumbnail(side["face_id"])
                if image:
                    col.image(image, caption=side["name"], width="stretch")
                if col.button(f"Open {side['name']}", key=f"dup_{n}_open_{side['child_id']}"):
                    st.session_state.child_id = side["child_id"]
                    st.switch_page(st.session_state.pages["child"])
            sure = cols[2].checkbox("They are the same child", key=f"dup_{n}_sure")
            merge = cols[2].button(f"Merge {b['name']} into {a['name']}", key=f"dup_{n}_merge",
                                   disabled=not sure)
            if merge and ui.call(lambda a=a, b=b: api.post(f"/children/{a['child_id']}/merge",
                                                          json={"source_id": b["child_id"]}),
                                 success=f"Merged {b['name']} into {a['name']}."):
                st.rerun()
