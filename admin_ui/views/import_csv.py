"""Import: a CSV of children's photos plus a zip of the photos; check first, then import with progress."""

from __future__ import annotations

import csv
import io
import time

import streamlit as st

from admin_ui import ui

ui.require("enroll")
api = ui.api()
st.title("Import children and photos")
st.caption("One line per photo: child ID, photo file name, and optionally the face box, name, group, mask, "
           "arousal and valence. Photos go in one zip file. Rows already imported are skipped, so you can "
           "import the same files again after an interruption.")

csv_file = st.file_uploader("CSV file", type=["csv", "txt"], key="import_csv")
zip_file = st.file_uploader("Photos (zip)", type=["zip"], key="import_zip")


def files() -> dict[str, tuple[str, bytes]]:
    return {"csv": (csv_file.name, csv_file.getvalue()), "photos": (zip_file.name, zip_file.getvalue())}


ACTIONS = {"import": "will be imported", "done": "already imported", "duplicate": "duplicate",
           "refused": "cannot be imported"}
#: what the import does with a sibling or twin pair the CSV names (sibling_of / twin_of columns)
RELATION_ACTIONS = {"add": "will be marked", "exists": "already marked", "refused": "cannot be marked"}


def report_rows(run_id: int) -> dict[int, dict[str, str]]:
    """The run's outcome of every CSV line, from its report."""
    report = ui.call(lambda: api.get_bytes(f"/imports/{run_id}/report"))
    if not report:
        return {}
    return {int(r["line"]): r for r in csv.DictReader(io.StringIO(report.decode("utf-8")))}


def show_result(run: dict, plan: dict | None) -> None:
    """The run's counts in the check's terms, and every row whose outcome differs from the check."""
    c = run["counts"]
    already = c.get("already_imported", 0)
    metrics = st.columns(5)
    metrics[0].metric("Rows", c.get("rows", run["total"]))
    metrics[1].metric("Imported", c.get("imported", 0) - already)
    metrics[2].metric("Already imported", already)
    metrics[3].metric("Duplicates", c.get("duplicate", 0))
    metrics[4].metric("Cannot import", c.get("refused", 0))
    message = (f"Import finished: {c.get('imported', 0) - already} imported, "
               + (f"{already} already imported, " if already else "")
               + f"{c.get('duplicate', 0)} duplicates, {c.get('refused', 0)} could not be imported, "
               f"{c.get('children_created', 0)} new children"
               + (f", {c['relations_added']} sibling or twin pairs marked" if "relations_added" in c else "")
               + ".")
    (st.success if run["status"] == "finished" else st.error)(
        message if run["status"] == "finished" else "The import stopped early. " + message)
    if not plan or not run["report_available"]:
        return
    outcomes = report_rows(run["id"])
    expected = {"import": "imported", "done": "imported", "duplicate": "duplicate", "refused": "refused"}
    differs = [(r, outcomes[r["line"]]) for r in plan["rows"]
               if r["line"] in outcomes and outcomes[r["line"]]["status"] != expected[r["action"]]]
    if differs:
        st.info("The check reads the CSV and the photos' sizes; faces are looked at during the import. "
                f"{len(differs)} row(s) ended differently from the check:")
        st.dataframe([{"Line": r["line"], "Child": r["child_id"], "Photo": r["image"],
                       "Check": ACTIONS[r["action"]], "Import": o["status"], "Why": o["reason"]}
                      for r, o in differs], hide_index=True, width="stretch", key="import_differences")


if csv_file is not None and zip_file is not None:
    if st.button("Check", key="import_check", icon=":material/fact_check:"):
        with st.spinner("Checking every row..."):
            st.session_state.import_plan = ui.call(lambda: api.post("/imports/check", files=files()))
            st.session_state.import_result = None
    plan = st.session_state.get("import_plan")
    if plan:
        counts = plan["counts"]
        metrics = st.columns(5)
        metrics[0].metric("Rows", counts["rows"])
        metrics[1].metric("To import", counts["to_import"])
        metrics[2].metric("Already imported", counts["already_imported"])
        metrics[3].metric("Duplicates", counts["duplicate"])
        metrics[4].metric("Cannot import", counts["refused"])
        st.write(f"New children: {counts['new_children']} · new photos: {counts['new_photos']} · "
                 f"face box: {plan['box_rule']}")
        problems = [r for r in plan["rows"] if r["action"] in {"duplicate", "refused"}]
        if problems:
            st.dataframe([{"Line": r["line"], "Child": r["child_id"], "Photo": r["image"],
                           "Outcome": ACTIONS[r["action"]], "Why": r["reason"]} for r in problems],
                         hide_index=True, width="stretch", key="import_problems")
        if plan.get("relations"):
            st.write("Siblings and twins named in the CSV (marked after the photos are imported):")
            st.dataframe([{"Child": r["child_id"], "Sibling or twin": r["other_id"], "As": r["kind"],
                           "Lines": ", ".join(map(str, r["lines"])), "Outcome": RELATION_ACTIONS[r["action"]],
                           "Why": r["reason"]} for r in plan["relations"]],
                         hide_index=True, width="stretch", key="import_relations")
        if counts["to_import"] and st.button(f"Import {counts['to_import']} row(s)", type="primary",
                                             key="import_run"):
            run = ui.call(lambda: api.post("/imports", files=files()))
            if run:
                bar = st.progress(0.0, text="Importing...")
                while run and run["status"] == "running":
                    bar.progress(run["done"] / max(1, run["total"]),
                                 text=f"Importing... {run['done']} of {run['total']} rows")
                    time.sleep(0.5)
                    run = ui.call(lambda run=run: api.get(f"/imports/{run['id']}"))
                if run:
                    # the plan is spent: run again without it, so no stale "Import N row(s)" button remains
                    st.session_state.import_plan = None
                    st.session_state.import_result = {"run": run, "plan": plan}
                    st.rerun()
result = st.session_state.get("import_result")
if result:
    show_result(result["run"], result["plan"])

st.subheader("Recent imports")
runs = ui.call(lambda: api.get("/imports", limit=10)) or []
if not runs:
    st.caption("No imports yet.")
for run in runs:
    with st.container(border=True):
        c = run["counts"]
        st.markdown(f"**Import {run['id']}** · {ui.md(run['source_name'])} · {run['status']} · "
                    f"by {run['started_by']}")
        st.caption(f"{c.get('imported', 0)} imported, {c.get('duplicate', 0)} duplicates, "
                   f"{c.get('refused', 0)} could not be imported · started {run['started_at'][:19]}")
        if run["report_available"]:
            report = ui.call(lambda run=run: api.get_bytes(f"/imports/{run['id']}/report"))
            if report is not None:
                st.download_button("Download report", report, file_name=f"import-{run['id']}-report.csv",
                                   mime="text/csv", key=f"import_report_{run['id']}")
