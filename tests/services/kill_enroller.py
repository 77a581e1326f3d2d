"""Child process of the kill test: enrolls, edits and removes faces in a loop until SIGKILLed.

Each step is what the API does: one unit of work with its audit event (face
ids listed), then the gallery's catch-up; every few steps a snapshot save.
Prints "saved <n>" after each save so the parent knows the loop is running.

    python kill_enroller.py DATABASE_URL INDEX_DIR MODEL_KEY
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from faces import DIM, add_child, add_face, delete_face, set_child_status, set_face_state, unit

from childface.config import Settings
from childface.db import Database
from childface.db.models import ChildStatus, ReviewState
from childface.services.gallery import Gallery, ensure_embedding_model


def main(url: str, index_dir: str, model_key: str) -> None:
    settings = Settings(
        _env_file=None,
        database_url=url,
        media_dir=Path(index_dir).parent / "media",
        index_dir=index_dir,
        device="cpu",
    )
    db = Database(url)
    model_row = ensure_embedding_model(
        db, key=model_key, name="test-embedder", weights_sha256="0" * 64, dim=DIM
    )
    gallery = Gallery(db=db, settings=settings, model_key=model_key, dim=DIM)
    gallery.start()
    rng = np.random.default_rng()
    children: list[int] = []
    faces: list[int] = []
    for step in range(1_000_000):
        if step % 4 == 0:
            children.append(add_child(db, f"c{step}"))
        faces.append(
            add_face(db, child_id=children[-1], model_row=model_row, vector=unit(rng.standard_normal(DIM)))
        )
        if step % 7 == 3:
            delete_face(db, faces.pop(int(rng.integers(len(faces)))))
        if step % 11 == 5:
            set_face_state(db, faces[int(rng.integers(len(faces)))], ReviewState.rejected)
        if step % 13 == 6:
            set_child_status(db, children[int(rng.integers(len(children)))], ChildStatus.archived)
        gallery.catch_up()
        if step % 5 == 4:
            gallery.save()
            print(f"saved {step}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
