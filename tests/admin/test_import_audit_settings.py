"""Import (page 7), Audit (page 8) and Settings (page 9)."""

from __future__ import annotations

import time
from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, click, client, enroll, texts


def test_import_checks_then_imports_with_progress_and_offers_the_report(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    live = start_api()  # its own database: the example's child ids are fixed
    at = signed_in(live, "staff")
    at.switch_page("views/import_csv.py").run()
    at.file_uploader(key="import_csv").upload("children.csv", example.csv_path.read_bytes(), "text/csv")
    at.file_uploader(key="import_zip").upload("photos.zip", example.zip_path.read_bytes(), "application/zip")
    at.run()
    at.button(key="import_check").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Rows": "34", "To import": "31", "Already imported": "0", "Duplicates": "1",
                       "Cannot import": "2"}
    problems = at.dataframe[0].value
    assert set(problems["Why"]) == {"same photo and face as line 3", "arousal 1.4 is outside 0..1",
                                    "c004/missing.jpg is not in the zip"}

    at.button(key="import_run").click().run()
    assert not at.exception, at.exception
    assert ("Import finished: 30 imported, 1 duplicates, 3 could not be imported, 8 new children."
            in texts(at))
    assert "import_run" not in {b.key for b in at.button}  # no stale "Import 31 row(s)"
    assert {m.label: m.value for m in at.metric} == {"Rows": "34", "Imported": "30", "Already imported": "0",
                                                     "Duplicates": "1", "Cannot import": "3"}
    # the one row only the import can judge (it looks for the face) is named, with why
    (differences,) = [d.value for d in at.dataframe]
    assert list(differences["Photo"]) == ["no-face.jpg"]
    assert list(differences["Why"]) == ["no face found in the photo"]
    report = next(b for b in at.get("download_button"))
    assert report.proto.label == "Download report"
    assert client(live).get("/children")["total"] == 8


def test_import_counts_agree_with_the_check_on_a_re_run_with_a_box_outside_the_photo(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    """Check and run count alike: rows imported before, a box outside the photo (each once differed)."""
    live = start_api()
    lines = example.csv_path.read_text().splitlines()
    first_part = "\n".join(lines[:6]) + "\n"  # five rows: imported before the page's run
    box_outside = "C002,Ben,Sunflowers,c002/portrait.jpg,0,900,900,100,100,0.5,0.5"
    full = "\n".join([*lines, box_outside]) + "\n"
    api = client(live, "staff")
    files = {"photos": ("photos.zip", example.zip_path.read_bytes(), "application/zip")}
    started = api.post("/imports", files={"csv": ("part.csv", first_part.encode()), **files})
    while api.get(f"/imports/{started['id']}")["status"] == "running":
        time.sleep(0.2)

    at = signed_in(live, "staff")
    at.switch_page("views/import_csv.py").run()
    at.file_uploader(key="import_csv").upload("children.csv", full.encode(), "text/csv")
    at.file_uploader(key="import_zip").upload("photos.zip", example.zip_path.read_bytes(), "application/zip")
    at.run()
    at.button(key="import_check").click().run()
    checked = {m.label: m.value for m in at.metric}
    assert checked == {"Rows": "35", "To import": "26", "Already imported": "5", "Duplicates": "1",
                       "Cannot import": "3"}
    assert "box (900, 900, 1000, 1000) lies outside" in " ".join(at.dataframe[0].value["Why"])
    at.button(key="import_run").click().run()
    assert not at.exception, at.exception
    done = {m.label: m.value for m in at.metric}
    # the check's 26 to import: 25 imported and the photo without a face, named below
    assert done == {"Rows": "35", "Imported": "25", "Already imported": "5", "Duplicates": "1",
                    "Cannot import": "4"}
    assert [list(d.value["Photo"]) for d in at.dataframe] == [["no-face.jpg"]]
    assert "import_run" not in {b.key for b in at.button}


def test_audit_filters_and_exports(api: LiveApi, signed_in: Callable[..., AppTest]) -> None:
    client(api).post("/children", json={"external_id": "AUD-1", "name": "Audit Person"})
    at = signed_in(api, "viewer")
    at.switch_page("views/audit.py").run()
    at.selectbox(key="audit_action").select("child.created").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert set(table["What"]) == {"Child added"} and "Audit Person (AUD-1)" in set(table["Child"])
    assert "Audit Person (ID AUD-1) added" in set(table["Details"])  # words, not JSON
    at.button(key="audit_export").click().run()
    assert [b.proto.label for b in at.get("download_button")] == ["Download CSV"]


def test_settings_show_model_calibration_and_keys(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    api = start_api()  # its own gallery: faces other tests leave would show up as calibration suspects
    enroll(api, example, "Gus Calibrate", ["c007/portrait.jpg", "c007/mirrored.jpg"])
    enroll(api, example, "Hana Calibrate", ["c008/portrait.jpg", "c008/mirrored.jpg"])
    at = signed_in(api, "admin")
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Face model"] == "dlib-resnet+flip" and metrics["Runs on"] == "cpu"  # flip TTA by default

    at.button(key="calibration_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 1  # the score histogram / ROC plot
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Children"]) >= 2 and int(metrics["Enrolled faces"]) >= 4

    at.text_input(key="key_name").input("door-east")
    click(at, "Create key")
    assert "it will not be shown again" in texts(at)
    keys_table = next(d.value for d in at.dataframe if "Starts with" in d.value.columns)
    assert "door-east" in set(keys_table["Name"])  # in the table at once, no reload
    key = at.code[0].value
    assert key.startswith("cfk_")
    at.run()
    assert not at.code  # shown once only
    keys = {k["name"]: k for k in client(api).get("/admin/api-keys")}
    at.selectbox(key="key_revoke").set_value(keys["door-east"]["id"]).run()
    at.button(key="key_revoke_button").click().run()
    assert "Revoked door-east" in texts(at)
    assert {k["name"]: k["revoked"] for k in client(api).get("/admin/api-keys")}["door-east"] is True



def test_settings_change_thresholds_for_every_process_and_set_them_back(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    live = start_api()  # its own database: thresholds are shared by everything on it
    at = signed_in(live, "admin")
    at.switch_page("views/settings.py").run()
    assert at.number_input(key="setting_accept_threshold").value == live.settings.accept_threshold
    at.number_input(key="setting_accept_threshold").set_value(0.97)
    at.number_input(key="setting_review_threshold").set_value(0.93)
    click(at, "Save thresholds")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Thresholds saved" in texts(at)
    # in force in the server at once (its recognitions read these), and shown as changed
    assert (live.runtime.settings.accept_threshold, live.runtime.settings.review_threshold) == (0.97, 0.93)
    assert "changed by admin" in at.number_input(key="setting_accept_threshold").label
    events = client(live).get("/audit", action="settings.changed")["items"]
    assert [(e["before"], e["after"]) for e in events] == [
        ({"accept_threshold": 0.95, "review_threshold": 0.9},
         {"accept_threshold": 0.97, "review_threshold": 0.93}),
    ]

    at.number_input(key="setting_review_threshold").set_value(0.99)  # above the accept threshold
    click(at, "Save thresholds")
    assert "must not be above the accept threshold" in " ".join(e.value for e in at.error)
    assert live.runtime.settings.review_threshold == 0.93

    at.button(key="settings_reset").click().run()
    assert not at.exception, at.exception
    assert live.runtime.settings.accept_threshold == live.runtime.configured_settings.accept_threshold == 0.95
    assert at.number_input(key="setting_accept_threshold").value == 0.95

    # calibration: a face moved to the wrong child is named and left out, the faces that set the
    # proposal are shown, and the proposal is applied in one click
    three = ("portrait.jpg", "mirrored.jpg", "brighter.jpg")
    gus = enroll(live, example, "Gus Calibrate", [f"c007/{name}" for name in three])
    hana = enroll(live, example, "Hana Calibrate", [f"c008/{name}" for name in three])
    staff = client(live)
    wrong = staff.get(f"/children/{hana['id']}/faces")[-1]["id"]
    staff.post(f"/faces/{wrong}/reassign", json={"child_id": gus["id"]})
    at.button(key="calibration_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("1 face(s) look more like another child" in w.value for w in at.warning)
    assert f"Face {wrong} of child {gus['id']}" in texts(at)
    pairs = [d.value for d in at.dataframe if "Similarity" in d.value.columns]
    assert len(pairs) == 2 and len(pairs[0]) >= 1 and len(pairs[1]) >= 1
    proposed = client(live).get("/admin/calibration")["report"]["proposed"]
    at.button(key="calibration_apply").click().run()
    assert "Proposed thresholds saved" in texts(at)
    assert live.runtime.settings.accept_threshold == proposed["accept"]
    assert live.runtime.settings.review_threshold == proposed["review"]
