"""The gallery on the Milvus backend (both DBs): the change feed keeps the collection equal to the DB,
a restart loads the snapshot and replays the tail, and an erasure takes the vectors out of Milvus."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from childface.config import Settings
from childface.db import Database
from childface.db.models import ChildStatus
from childface.index.milvus_index import MilvusIndex, milvus_client
from childface.services.erasure import ERASE_CONFIRMATION, erase_child
from childface.services.gallery import Gallery, ensure_embedding_model
from childface.services.media import MediaStore
from services.faces import (
    DIM,
    TEST_ACTOR,
    add_child,
    add_face,
    delete_face,
    identity_samples,
    set_child_status,
)

MODEL_KEY = "test-embedder:milvus"


def milvus_rows(index: MilvusIndex) -> set[int]:
    rows = milvus_client(index.uri).query(index.collection, filter="face_id >= 0", output_fields=["face_id"])
    return {int(r["face_id"]) for r in rows}


def test_change_feed_keeps_milvus_equal_to_the_db(
    database: Database, settings: Settings, milvus_uri: str, milvus_prefix: str
) -> None:
    settings = settings.model_copy(
        update={
            "index_backend": "milvus",
            "milvus_uri": milvus_uri,
            "milvus_collection_prefix": milvus_prefix,
        }
    )
    model_row = ensure_embedding_model(database, key=MODEL_KEY, name="t", weights_sha256="0" * 64, dim=DIM)
    rng = np.random.default_rng(31)
    centres, samples = identity_samples(rng, 4, 3)
    children = [add_child(database, f"c{i}") for i in range(4)]
    faces = [
        [add_face(database, child_id=c, model_row=model_row, vector=v) for v in vectors[:2]]
        for c, vectors in zip(children, samples, strict=True)
    ]

    gallery = Gallery(db=database, settings=settings, model_key=MODEL_KEY, dim=DIM)
    assert "no snapshot" in gallery.start()
    index = gallery._children.index
    assert isinstance(index, MilvusIndex) and gallery.count == 8
    assert milvus_rows(index) == {f for group in faces for f in group}
    assert [r[0].child_id for r in gallery.search(centres, k=2)] == children
    assert gallery.check().clean

    # changes reach Milvus through the audit feed only
    extra = add_face(database, child_id=children[0], model_row=model_row, vector=samples[0, 2])
    set_child_status(database, children[1], ChildStatus.archived)
    delete_face(database, faces[2][0])
    assert gallery.catch_up() == 3
    expected = {extra, *faces[0], faces[2][1], *faces[3]}
    assert milvus_rows(index) == expected and gallery.count == len(expected)
    assert gallery.check().clean
    gallery.save()

    # a restart loads the snapshot (ids and watermark only) and replays what came after
    late = add_face(database, child_id=children[3], model_row=model_row, vector=samples[3, 2])
    restarted = Gallery(db=database, settings=settings, model_key=MODEL_KEY, dim=DIM)
    assert "loaded snapshot" in restarted.start()
    assert restarted.count == len(expected) + 1 and restarted.check().clean

    # erasure: the child's vectors leave the collection and the Lite files
    client = milvus_client(milvus_uri)
    client.flush(index.collection)
    folder = os.path.join(milvus_uri, "collections", index.collection)
    erased_bytes = samples[0, 0].astype("<f4").tobytes()
    assert any(erased_bytes in (Path(root) / n).read_bytes() for root, _, ns in os.walk(folder) for n in ns)
    erased = [*faces[0], extra]
    erase_child(
        db=database,
        media=MediaStore(settings.media_dir),
        actor=TEST_ACTOR,
        child_id=children[0],
        confirm=ERASE_CONFIRMATION,
    )
    restarted.catch_up()
    assert not client.get(index.collection, ids=erased)
    assert milvus_rows(index) == (expected | {late}) - set(erased)
    assert restarted.check().clean
    assert not any(
        erased_bytes in (Path(root) / n).read_bytes() for root, _, ns in os.walk(folder) for n in ns
    )
    assert [r[0].child_id for r in restarted.search(centres[2:], k=1)] == children[2:]
