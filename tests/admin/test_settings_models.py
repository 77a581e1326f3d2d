"""Settings page, "Embedding model": the model in use, re-embedding with another one (progress), and making
it current behind a confirmation."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from streamlit.testing.v1 import AppTest

from childface.services.sample_data import ExampleDataset
from services.models_support import save_arcface

from .conftest import LiveApi, client, enroll, texts


def test_reembed_with_another_model_then_make_it_current(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest],
    tmp_path: Path,
) -> None:
    live = start_api()  # its own database: the current model is shared by everything on it
    enroll(live, example, "Ivy Models", ["c007/portrait.jpg", "c007/mirrored.jpg"])
    enroll(live, example, "Jon Models", ["c008/portrait.jpg"])
    weights = save_arcface(tmp_path / "backbone.pth")
    at = signed_in(live, "admin")
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    assert "Embedding model" in [s.value for s in at.subheader]
    old = live.runtime.model_key
    assert f"**In use:** `{old}`" in texts(at) and "switch_model" not in {s.key for s in at.selectbox}

    at.selectbox(key="reembed_embedder").set_value("arcface")
    at.text_input(key="reembed_weights").input(str(weights))
    at.selectbox(key="reembed_arch").set_value("mbf")
    at.checkbox(key="reembed_flip").uncheck()
    at.button(key="FormSubmitter:reembed-Re-embed").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    api = client(live)
    deadline = time.monotonic() + 60
    while (job := api.get("/models/reembed"))["status"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert (job["status"], job["done"], job["total"]) == ("finished", 3, 3)
    key = job["model_key"]

    at.run()
    assert not at.exception, at.exception
    assert f"Re-embedding with {key} finished: 3 of 3 faces." in texts(at)
    table = next(d.value for d in at.dataframe if "Faces covered" in d.value.columns)
    assert list(table["Model"]) == [key] and list(table["Faces covered"]) == ["3 of 3 (100%)"]
    at.selectbox(key="switch_model").set_value(key).run()
    assert at.button(key="switch_button").disabled  # not before the confirmation
    at.checkbox(key="switch_sure").check().run()
    at.button(key="switch_button").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert f"{key} is now the current model on every server." in texts(at)
    assert live.runtime.current_gallery().model_key == key
    assert f"**In use:** `{key}`" in texts(at)
    assert client(live).get("/models")["serving"] == key
