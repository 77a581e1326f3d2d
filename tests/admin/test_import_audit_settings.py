"""Import (page 7), Audit (page 8) and Settings (page 9)."""

from __future__ import annotations

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
    report = next(b for b in at.get("download_button"))
    assert report.proto.label == "Download report"
    assert client(live).get("/children")["total"] == 8


def test_audit_filters_and_exports(api: LiveApi, signed_in: Callable[..., AppTest]) -> None:
    client(api).post("/children", json={"external_id": "AUD-1", "name": "Audit Person"})
    at = signed_in(api, "viewer")
    at.switch_page("views/audit.py").run()
    at.text_input(key="audit_action").input("child.created").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert set(table["What"]) == {"child.created"} and "Audit Person (AUD-1)" in set(table["Child"])
    at.button(key="audit_export").click().run()
    assert [b.proto.label for b in at.get("download_button")] == ["Download CSV"]


def test_settings_show_model_calibration_keys_and_users(
    api: LiveApi, example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    enroll(api, example, "Gus Calibrate", ["c007/portrait.jpg", "c007/mirrored.jpg"])
    enroll(api, example, "Hana Calibrate", ["c008/portrait.jpg", "c008/mirrored.jpg"])
    at = signed_in(api, "admin")
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Face model"] == "dlib-resnet" and metrics["Runs on"] == "cpu"

    at.button(key="calibration_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 1  # the score histogram / ROC plot
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Children"]) >= 2 and int(metrics["Enrolled faces"]) >= 4

    at.text_input(key="key_name").input("door-east")
    click(at, "Create key")
    assert "it will not be shown again" in texts(at)
    key = at.code[0].value
    assert key.startswith("cfk_")
    at.run()
    assert not at.code  # shown once only
    keys = {k["name"]: k for k in client(api).get("/admin/api-keys")}
    at.selectbox(key="key_revoke").set_value(keys["door-east"]["id"]).run()
    at.button(key="key_revoke_button").click().run()
    assert "Revoked door-east" in texts(at)
    assert {k["name"]: k["revoked"] for k in client(api).get("/admin/api-keys")}["door-east"] is True

    at.text_input(key="user_name").input("nora")
    at.text_input(key="user_password").input("nora-secret-1")
    click(at, "Create account")
    assert "Account nora created." in texts(at)
    assert "nora" in {u["username"] for u in client(api).get("/admin/users")}
