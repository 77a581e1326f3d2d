"""Micro-batching: the images of concurrent callers go through the models in one batched call.

    batcher = MicroBatcher(run_images, window_s=0.004, max_images=8)
    with batcher.expecting():            # others will wait (up to the window) for this caller's image
        rgb = decode(data)               # slow, per-caller work stays outside the batch
        faces = batcher.submit(rgb)      # blocks; this image's own result

Why: on a CPU, one forward pass over four images costs less than four passes over
one (the threads have more work per synchronisation), and while one batch is in
the models the callers' other work (HTTP, decoding, search, database, JSON) runs
beside it instead of queueing behind a lock.

Rules, in the order the worker thread applies them:

- A batch starts with the oldest waiting image and takes every image queued
  behind it, up to `max_images` (a full batch goes at once).
- It waits for more only while some caller has announced an image
  (`expecting`) that is not queued yet, and never longer than `window_s` after
  the oldest image arrived: a lone request is never held back, and no request
  waits in the queue for the window longer than the window.
- With `group_by`, the batch goes to `run` in groups of images with the same
  key, one call per group: the face pipeline keys by the detector's resized
  shape, because the detector pads a batch to its largest image and the padding
  would change the faces found near the border of a smaller one. A request's
  result never depends on which other requests shared its batch.
- `run(images)` returns one result per image. When it raises on a group of
  several, each image is run again alone, so the error reaches only the caller
  whose image caused it.

Up to `workers` threads run batches side by side (each takes the next batch
while the others are busy in the models); they start on demand, as daemon
threads, and leave after `IDLE_EXIT_S` without work.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

Result = TypeVar("Result")

IDLE_EXIT_S = 30.0


@dataclass(eq=False)
class _Job(Generic[Result]):
    image: np.ndarray
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the workers gathered: batches, images in them, the largest (re-runs after an error aside)."""

    batches: int = 0
    images: int = 0
    largest: int = 0


class MicroBatcher(Generic[Result]):
    def __init__(
        self,
        run: Callable[[list[np.ndarray]], list[Result]],
        *,
        window_s: float,
        max_images: int,
        workers: int = 1,
        name: str = "micro-batcher",
        group_by: Callable[[np.ndarray], Hashable] | None = None,
    ) -> None:
        if window_s < 0 or max_images < 1 or workers < 1:
            raise ValueError("window_s must be >= 0, max_images and workers >= 1")
        self._run = run
        self.group_by = group_by
        self.window_s = window_s
        self.max_images = max_images
        self.workers = workers
        self._name = name
        self._queue: deque[_Job[Result]] = deque()
        self._expected = 0  # callers inside `expecting` that have not submitted yet
        self._condition = threading.Condition()
        self._running = 0  # worker threads alive
        self._idle = 0  # of which waiting for work
        self.stats = BatchStats()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce an image that this caller will `submit` inside the block (a batch being
        gathered waits for it, within the window); leaving the block withdraws what is left."""
        with self._condition:
            self._expected += 1
        announcement = _Announcement(self)
        outer = getattr(_current, "announcement", None)
        _current.announcement = announcement
        try:
            yield
        finally:
            _current.announcement = outer
            announcement.withdraw()

    def submit(self, image: np.ndarray) -> Result:
        """This image's result from a batched call (blocks until it is done); re-raises its error."""
        job: _Job[Result] = _Job(image, time.monotonic())
        announcement: _Announcement | None = getattr(_current, "announcement", None)
        with self._condition:
            if announcement is not None and announcement.batcher is self:
                announcement.withdraw_locked()
            self._queue.append(job)
            if self._idle == 0 and self._running < self.workers:
                self._running += 1
                threading.Thread(target=self._work, name=self._name, daemon=True).start()
            self._condition.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _work(self) -> None:
        while True:
            with self._condition:
                self._idle += 1
                found = self._condition.wait_for(lambda: self._queue, IDLE_EXIT_S)
                self._idle -= 1
                if not found:
                    self._running -= 1  # the next submit starts a new worker
                    return
                deadline = self._queue[0].arrived + self.window_s
                while len(self._queue) < self.max_images and self._expected > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_images))]
                if batch:
                    self.stats.batches += 1
                    self.stats.images += len(batch)
                    self.stats.largest = max(self.stats.largest, len(batch))
            if batch:  # empty when another worker took the images this one was gathering
                for group in self._groups(batch):
                    self._execute(group)

    def _groups(self, batch: list[_Job[Result]]) -> list[list[_Job[Result]]]:
        """The batch split by `group_by`, oldest group first (the whole batch without it)."""
        if self.group_by is None:
            return [batch]
        groups: dict[Hashable, list[_Job[Result]]] = {}
        for job in batch:
            try:
                key = self.group_by(job.image)
            except Exception:  # noqa: BLE001 - a bad image goes alone: `run` reports its error
                key = job
            groups.setdefault(key, []).append(job)
        return list(groups.values())

    def _execute(self, batch: list[_Job[Result]]) -> None:
        try:
            results = self._run([job.image for job in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} images")
        except BaseException as exc:
            if len(batch) > 1:
                for job in batch:  # alone, so that only the image at fault fails its caller
                    self._execute([job])
                return
            batch[0].error = exc
            batch[0].done.set()
            return
        for job, result in zip(batch, results, strict=True):
            job.result = result
            job.done.set()


class _Announcement:
    """One caller's `expecting` block: counted once, withdrawn once (on submit or on leaving)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self.batcher = batcher
        self._open = True

    def withdraw_locked(self) -> None:
        if self._open:
            self._open = False
            self.batcher._expected -= 1

    def withdraw(self) -> None:
        with self.batcher._condition:
            self.withdraw_locked()
            self.batcher._condition.notify_all()


_current = threading.local()  # the calling thread's open announcement
