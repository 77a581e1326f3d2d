"""Face id -> slot (row, graph label, child id) as a numpy array instead of a Python dict.

A dict costs ~100 bytes per entry; at a million faces that is most of an
index's memory. DB ids are autoincrement, hence dense: an int64 array indexed
by id costs 8 bytes per id ever issued. The array grows by doubling. Ids far
beyond the array (more than `_SPARSE_FACTOR` times the entries held, e.g. ids
chosen by hand in a test) go to a small dict instead, so one huge id never
allocates gigabytes.
"""

from __future__ import annotations

import numpy as np

ABSENT = -1
#: an id may grow the dense array up to this many times the entries held (and at least _MIN_DENSE)
_SPARSE_FACTOR = 8
_MIN_DENSE = 1 << 20


class SlotTable:
    """Map non-negative int64 ids to non-negative int64 slots; `ABSENT` where unmapped."""

    def __init__(self) -> None:
        self._dense = np.full(1024, ABSENT, dtype=np.int64)
        self._sparse: dict[int, int] = {}
        self.count = 0

    def get(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(ids.shape, ABSENT, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self._dense))
        out[inside] = self._dense[ids[inside]]
        if self._sparse and not inside.all():
            out[~inside] = [self._sparse.get(int(i), ABSENT) for i in ids[~inside]]
        return out

    def get_one(self, face_id: int) -> int:
        if 0 <= face_id < len(self._dense):
            return int(self._dense[face_id])
        return self._sparse.get(int(face_id), ABSENT)

    def set(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Map `ids` (unique) to `slots`; ids mapped already keep their count."""
        ids = np.asarray(ids, dtype=np.int64)
        slots = np.asarray(slots, dtype=np.int64)
        if not len(ids):
            return
        self._grow(int(ids.max()), len(ids))
        self.count += int(np.count_nonzero(self.get(ids) == ABSENT))
        inside = ids < len(self._dense)
        self._dense[ids[inside]] = slots[inside]
        if not inside.all():
            self._sparse.update(zip(ids[~inside].tolist(), slots[~inside].tolist(), strict=True))

    def clear(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        self.count -= int(np.count_nonzero(self.get(ids) != ABSENT))
        inside = ids < len(self._dense)
        self._dense[ids[inside]] = ABSENT
        for i in ids[~inside].tolist():
            self._sparse.pop(i, None)

    def keys(self) -> np.ndarray:
        """Mapped ids, sorted ascending."""
        dense = np.flatnonzero(self._dense != ABSENT).astype(np.int64)
        if not self._sparse:
            return dense
        return np.concatenate([dense, np.sort(np.fromiter(self._sparse, dtype=np.int64))])

    def max_value(self) -> int:
        """The largest slot held (0 when empty)."""
        best = int(self._dense.max()) if len(self._dense) else 0
        return max([best, 0, *self._sparse.values()])

    def _grow(self, highest: int, adding: int) -> None:
        size = len(self._dense)
        if highest < size:
            return
        limit = max(_MIN_DENSE, _SPARSE_FACTOR * (self.count + adding))
        if highest >= limit:
            return  # far out: the sparse dict takes it
        grown = np.full(min(max(2 * size, highest + 1), limit), ABSENT, dtype=np.int64)
        grown[:size] = self._dense
        # ids that now fit move from the dict into the array
        for i in [i for i in self._sparse if i < len(grown)]:
            grown[i] = self._sparse.pop(i)
        self._dense = grown

    @property
    def nbytes(self) -> int:
        return int(self._dense.nbytes) + 100 * len(self._sparse)
