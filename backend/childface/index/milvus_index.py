"""Milvus backend: the vectors live in a Milvus collection; this process keeps only their ids.

One collection per embedding model, named `<prefix><model key>` (characters
Milvus does not allow become `_`): an INT64 primary key `face_id` (the DB's
face id, no auto id) and a FLOAT_VECTOR `vector` of the model's dimension,
searched by inner product (cosine on unit vectors), consistency level Strong
so a search sees every write that returned before it.

- add = upsert (an id already present gets the new vector); remove = delete by
  id; purge = delete, then flush and compact, so the sealed segments are
  rewritten without the rows (until compaction Milvus keeps deleted rows in
  its segments and write-ahead log, hidden by tombstones). Milvus Lite ignores
  `compact()`, so there purge copies the live rows into a new collection and
  drops the old one, files and all.
- search = one request per batch of queries with limit k; rows are padded to k
  with `PAD_ID` / `PAD_SIMILARITY`.
- `count`, `contains` and `ids` read a local bitmap over face ids mirrored from
  the collection, so they cost no round trip; `vectors_of` fetches the vectors.

The URI is a Milvus Lite data path (`./data/milvus.db`: Milvus in this process,
one process per path) or a server (`http://host:19530`, Milvus standalone or a
cluster); the same `pymilvus` client talks to both.

A new index (`create_index`) attaches to the model's collection without
emptying it, so a replica starting beside others that share the collection
disturbs nobody. It connects on first use. Its first `watermark` assignment
(the point where a rebuild or a catch-up from zero has written everything the
DB holds) deletes the rows that were in the collection before and were not
written since: what is left equals the DB.

Snapshots hold no vectors: only the collection's name and URI (without
credentials) and the face ids, beside the base header's watermark and count.
`load` reconnects and checks that the collection exists with the right
dimension and exactly the snapshot's number of rows; otherwise
`SnapshotCorrupt`/`SnapshotMismatch`, and the gallery rebuilds from the DB.

Thread-safety: the base class's readers-writer lock around every Milvus call
that reads or changes the mirror; the pymilvus client is thread-safe.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from childface.index.base import (
    PAD_ID,
    PAD_SIMILARITY,
    SnapshotCorrupt,
    SnapshotMismatch,
    SnapshotSection,
    VectorIndex,
    check_ids,
    check_k,
    check_vectors,
)

log = logging.getLogger(__name__)

PK_FIELD = "face_id"
VECTOR_FIELD = "vector"
#: bytes of vectors per upsert request (Milvus refuses gRPC messages above 64 MB)
_UPSERT_BYTES = 16 * 1024 * 1024
#: ids per get/delete request (they travel as an expression or id list)
_ID_CHUNK = 4096
#: query rows per search request, and Milvus's ceilings on nq and on limit
_QUERY_CHUNK = 1024
MAX_TOP_K = 16384
#: how long `purge` waits for its compaction
_COMPACT_WAIT_S = 60.0
#: Milvus Lite searches its unflushed rows one by one (~50 us a row here, against ~2 ms for a
#: flushed segment of 20k): flush once this many rows were written since the last flush
LITE_FLUSH_ROWS = 1000

_clients: dict[tuple[str, str], MilvusClient] = {}
_clients_lock = threading.Lock()


def milvus_client(uri: str, token: str | None = None) -> MilvusClient:
    """One client per (URI, token) and process: Milvus Lite serves a data path to one client set."""
    key = (uri, token or "")
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = MilvusClient(uri=uri, token=token or "")
        return client


def close_clients() -> None:
    """Close this process's clients and, for Milvus Lite, its local server, so that another process
    can open the same data path (Lite serves one process at a time)."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # a Milvus server: no Lite installed
        return
    server_manager_instance.release_all()  # closing a client leaves the Lite server running


def normalise_uri(uri: str) -> str:
    """A Lite path made absolute; a server URL without user info (never store credentials)."""
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def collection_name(prefix: str, model_id: str) -> str:
    """`prefix` + the model key with every character Milvus refuses replaced (at most 255 characters)."""
    name = prefix + re.sub(r"[^A-Za-z0-9_]", "_", model_id)
    if len(name) > 255:
        # keep names of two long model keys apart
        name = name[:238] + "_" + hashlib.sha256(model_id.encode()).hexdigest()[:16]
    return name


class MilvusIndex(VectorIndex):
    kind = "milvus"

    def __init__(
        self,
        model_id: str,
        dim: int,
        *,
        uri: str,
        token: str | None = None,
        collection_prefix: str = "childface_",
        collection: str | None = None,
        index_type: str = "FLAT",
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        hnsw_ef_search: int = 128,
    ) -> None:
        super().__init__(model_id, dim)
        self.uri = uri
        self._token = token
        self.collection = collection or collection_name(collection_prefix, model_id)
        self._index_type = index_type
        self._index_options = {"M": hnsw_m, "efConstruction": hnsw_ef_construction}
        self._search_params: dict[str, Any] = {"metric_type": "IP"}
        if index_type == "HNSW":
            self._search_params["params"] = {"ef": hnsw_ef_search}
        self._client: MilvusClient | None = None
        self._connect_lock = threading.Lock()
        self._present = np.zeros(0, dtype=bool)  # face id -> in the collection
        self._count = 0
        # rows found in the collection at first use and not written since (None once sealed)
        self._inherited: np.ndarray | None = None
        self._sealed = False
        self._unflushed = 0  # Milvus Lite: rows written since the last flush

    # --- connection and the id mirror ---------------------------------------------

    def _milvus(self) -> MilvusClient:
        """The client, connecting (and creating or adopting the collection) on first use."""
        if self._client is None:
            with self._connect_lock:
                if self._client is None:
                    client = milvus_client(self.uri, self._token)
                    self._open_collection(client)
                    self._client = client
        return self._client

    def _open_collection(self, client: MilvusClient) -> None:
        """A new index: create the collection, or adopt the rows already there as inherited."""
        if client.has_collection(self.collection):
            if _collection_dim(client, self.collection) == self.dim:
                client.load_collection(self.collection)
                existing = _scan_ids(client, self.collection)
                self._set_present(existing)
                self._inherited = self._present.copy()
                return
            # same name, another dimension: derived data of a model that no longer fits
            log.warning("Milvus collection %s has another dimension; recreating it", self.collection)
            client.drop_collection(self.collection)
        self._create(client, self.collection)
        self._inherited = None

    def _create(self, client: MilvusClient, name: str) -> None:
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PK_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = client.prepare_index_params()
        params = self._index_options if self._index_type == "HNSW" else {}
        index_params.add_index(VECTOR_FIELD, index_type=self._index_type, metric_type="IP", params=params)
        client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")

    def _set_present(self, ids: np.ndarray) -> None:
        self._present = np.zeros(int(ids.max()) + 1 if len(ids) else 0, dtype=bool)
        self._present[ids] = True
        self._count = int(len(ids))

    def _mark(self, ids: np.ndarray, value: bool) -> None:
        if len(ids) and int(ids.max()) >= len(self._present):
            grown = np.zeros(max(int(ids.max()) + 1, 2 * len(self._present)), dtype=bool)
            grown[: len(self._present)] = self._present
            self._present = grown
        self._present[ids] = value
        self._count = int(np.count_nonzero(self._present)) if len(ids) else self._count

    def _hits(self, ids: np.ndarray) -> np.ndarray:
        inside = ids[ids < len(self._present)]
        return inside[self._present[inside]]

    # --- reads ------------------------------------------------------------------

    @property
    def count(self) -> int:
        self._milvus()
        return self._count

    def ids(self) -> np.ndarray:
        self._milvus()
        with self._lock.read():
            return np.flatnonzero(self._present).astype(np.int64)

    def contains(self, face_id: int) -> bool:
        self._milvus()
        face_id = int(face_id)
        present = self._present
        return 0 <= face_id < len(present) and bool(present[face_id])

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        ids = check_ids(ids)
        client = self._milvus()
        with self._lock.read():
            missing = np.setdiff1d(ids, self._hits(ids))
            if len(missing):
                raise KeyError(f"face ids not in the index: {missing[:10].tolist()}")
            found: dict[int, Any] = {}
            for a in range(0, len(ids), _ID_CHUNK):
                rows = client.get(
                    self.collection, ids=ids[a : a + _ID_CHUNK].tolist(), output_fields=[VECTOR_FIELD]
                )
                found.update((int(row[PK_FIELD]), row[VECTOR_FIELD]) for row in rows)
        lost = [i for i in ids.tolist() if i not in found]
        if lost:
            # another writer removed them between our mirror and this read
            raise KeyError(f"face ids no longer in the Milvus collection: {lost[:10]}")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, face_id in enumerate(ids.tolist()):
            out[row] = found[face_id]
        return out

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best-first ids and similarities; rows padded with -1 / -inf past `count` (and past 16384)."""
        queries = check_vectors(vectors, self.dim)
        k = check_k(k)
        out_ids = np.full((len(queries), k), PAD_ID, dtype=np.int64)
        out_sims = np.full((len(queries), k), PAD_SIMILARITY, dtype=np.float32)
        client = self._milvus()
        with self._lock.read():
            take = min(k, self._count, MAX_TOP_K)
            if take == 0 or not len(queries):
                return out_ids, out_sims
            for a in range(0, len(queries), _QUERY_CHUNK):
                result = client.search(
                    self.collection,
                    data=queries[a : a + _QUERY_CHUNK],
                    limit=take,
                    anns_field=VECTOR_FIELD,
                    search_params=self._search_params,
                )
                for row, hits in enumerate(result, start=a):
                    n = len(hits.ids)
                    out_ids[row, :n] = hits.ids
                    out_sims[row, :n] = hits.distances
        return out_ids, out_sims

    # --- writes -----------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        if not len(ids):
            return
        client = self._milvus()
        step = max(1, _UPSERT_BYTES // (4 * self.dim))
        with self._lock.write():
            for a in range(0, len(ids), step):
                rows = [
                    {PK_FIELD: face_id, VECTOR_FIELD: vector}
                    for face_id, vector in zip(ids[a : a + step].tolist(), vectors[a : a + step], strict=True)
                ]
                client.upsert(self.collection, rows)
                self._mark(ids[a : a + step], True)
            self._claim(ids)
            self._written(client, len(ids))

    def remove(self, ids: np.ndarray) -> int:
        ids = check_ids(ids)
        client = self._milvus()
        with self._lock.write():
            hit = self._hits(ids)
            self._delete(client, hit)
            self._claim(ids)
            self._written(client, len(hit))
            return len(hit)

    def purge(self, ids: np.ndarray) -> int:
        """Delete, then flush and compact so Milvus rewrites its segments without these rows.

        Every given id is deleted, present or not: a face removed earlier may still sit in a
        segment behind its tombstone, and the compaction drops it with the rest.
        """
        ids = check_ids(ids)
        client = self._milvus()
        with self._lock.write():
            hit = len(self._hits(ids))
            self._delete(client, ids)
            self._claim(ids)
            if len(ids):
                if self.is_lite:
                    self._rewrite(client)
                else:
                    self._compact(client)
            return hit

    def _written(self, client: MilvusClient, rows: int) -> None:
        if self.is_lite:
            self._unflushed += rows
            if self._unflushed >= LITE_FLUSH_ROWS:
                client.flush(self.collection)
                self._unflushed = 0

    def _delete(self, client: MilvusClient, ids: np.ndarray) -> None:
        for a in range(0, len(ids), _ID_CHUNK):
            client.delete(self.collection, ids=ids[a : a + _ID_CHUNK].tolist())
            self._mark(ids[a : a + _ID_CHUNK], False)

    @property
    def is_lite(self) -> bool:
        """Milvus Lite (a local data path) rather than a server."""
        return "://" not in self.uri

    def _rewrite(self, client: MilvusClient) -> None:
        """Milvus Lite: copy the live rows to a new collection and drop the old one with its files.

        Lite's compaction merges segment files by size only and ignores `compact()`, so a
        deleted row's bytes would stay in its segment file; dropping the collection deletes them.
        """
        staging = self.collection[:240] + "__purge"
        if client.has_collection(staging):
            client.drop_collection(staging)  # left by an interrupted rewrite
        self._create(client, staging)
        rows = client.query_iterator(
            self.collection, batch_size=4096, filter="", output_fields=[PK_FIELD, VECTOR_FIELD]
        )
        try:
            while batch := rows.next():
                client.insert(staging, list(batch))
        finally:
            rows.close()
        client.flush(staging)
        self._unflushed = 0
        client.drop_collection(self.collection)
        client.rename_collection(staging, self.collection)
        client.load_collection(self.collection)

    def _compact(self, client: MilvusClient) -> None:
        client.flush(self.collection)
        job = client.compact(self.collection)
        deadline = time.monotonic() + _COMPACT_WAIT_S
        while str(client.get_compaction_state(job)) != "Completed":
            if time.monotonic() > deadline:
                log.warning("Milvus collection %s: compaction %s still running", self.collection, job)
                return
            time.sleep(0.05)

    def _claim(self, ids: np.ndarray) -> None:
        """These ids were written since attaching: they are no longer inherited rows."""
        if self._inherited is not None:
            inside = ids[ids < len(self._inherited)]
            self._inherited[inside] = False

    # --- the watermark seals a new index ------------------------------------------

    @VectorIndex.watermark.setter  # type: ignore[attr-defined]
    def watermark(self, value: int) -> None:
        VectorIndex.watermark.fset(self, value)  # type: ignore[attr-defined]
        self._seal()

    def _seal(self) -> None:
        """First watermark of a new index: delete the inherited rows nothing wrote since."""
        if self._sealed:
            return
        client = self._milvus()
        with self._lock.write():
            if self._inherited is not None:
                stale = np.flatnonzero(self._inherited & self._present[: len(self._inherited)])
                if len(stale):
                    log.info(
                        "Milvus collection %s: %d rows not in the DB deleted", self.collection, len(stale)
                    )
                    self._delete(client, stale.astype(np.int64))
                    self._written(client, len(stale))
                self._inherited = None
            self._sealed = True

    # --- snapshots ----------------------------------------------------------------

    def _snapshot_state(self) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
        self._milvus()
        meta = {"uri": normalise_uri(self.uri), "collection": self.collection}
        return meta, [("ids", np.flatnonzero(self._present).astype(np.int64))]

    @classmethod
    def _from_snapshot(
        cls,
        model_id: str,
        dim: int,
        meta: dict[str, Any],
        sections: dict[str, SnapshotSection],
        **options: Any,
    ) -> Self:
        """Reconnect and check the collection: it must exist with this dim and the snapshot's rows.

        Without options (rewriting another model's snapshot after an erasure) the snapshot's
        own URI and collection are used, with the credentials of a client already open to it.
        """
        if "uri" not in options:
            token = next((t for (u, t) in _clients if normalise_uri(u) == meta["uri"]), None)
            options = {"uri": meta["uri"], "token": token, "collection": meta["collection"]}
        index = cls(model_id, dim, **options)
        if normalise_uri(index.uri) != meta["uri"]:
            raise SnapshotMismatch(f"snapshot is of Milvus at {meta['uri']}, not {normalise_uri(index.uri)}")
        if index.collection != meta["collection"]:
            raise SnapshotMismatch(f"snapshot is of collection {meta['collection']}, not {index.collection}")
        try:
            client = milvus_client(index.uri, index._token)
            exists = client.has_collection(index.collection)
        except MilvusException as exc:
            # unreachable, refused credentials, a Lite folder another process holds: the caller
            # rebuilds (and fails there if Milvus stays away) instead of erroring mid-erasure
            raise SnapshotCorrupt(f"Milvus at {meta['uri']} is unusable: {exc}") from exc
        if not exists:
            raise SnapshotCorrupt(f"Milvus collection {index.collection} does not exist")
        found_dim = _collection_dim(client, index.collection)
        if found_dim != dim:
            raise SnapshotMismatch(
                f"Milvus collection {index.collection} has dim {found_dim}, expected {dim}"
            )
        client.load_collection(index.collection)
        ids = sections["ids"].array(np.int64)
        rows = _row_count(client, index.collection)
        if rows != len(ids):
            raise SnapshotCorrupt(
                f"Milvus collection {index.collection} has {rows} rows, the snapshot {len(ids)}:"
                " it changed since the snapshot"
            )
        index._set_present(ids)
        index._client = client
        index._sealed = True
        return index


def _collection_dim(client: MilvusClient, name: str) -> int | None:
    for field in client.describe_collection(name)["fields"]:
        if field["name"] == VECTOR_FIELD:
            return int(field["params"]["dim"])
    return None


def _row_count(client: MilvusClient, name: str) -> int:
    """Rows visible now (deleted ones excluded, unlike the collection statistics)."""
    return int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])


def _scan_ids(client: MilvusClient, name: str) -> np.ndarray:
    """Every face id in the collection, read in batches."""
    iterator = client.query_iterator(name, batch_size=16384, filter="", output_fields=[PK_FIELD])
    chunks: list[np.ndarray] = []
    try:
        while rows := iterator.next():
            chunks.append(np.fromiter((row[PK_FIELD] for row in rows), dtype=np.int64, count=len(rows)))
    finally:
        iterator.close()
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
