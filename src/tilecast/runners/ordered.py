"""How the runners feed the model: calls that run ahead on an executor while their results come back in order, tiles
grouped into batches, and packed batches reused. One implementation for every runner, so each pixel is computed the
same way; how much of it happens (ends a tile at a time, reuse) is the resource policy's (:mod:`tilecast.resources`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ..resources import Resources
from ..runtimes.base import releases_inputs, streams_of

if TYPE_CHECKING:
    from ..job import Job, TileData

__all__ = ["BatchReuse", "batches", "in_order"]

T = TypeVar("T")
R = TypeVar("R")


def in_order(
    executor: Executor | None,
    items: Iterable[T],
    call: Callable[[T], R],
    ahead: int,
    weight: Callable[[T], int] | None = None,
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, call(item))`` in the order of ``items``, with up to ``ahead`` calls submitted beyond the one
    being waited for (``executor`` None: each call inline, when its result is wanted).

    Results are handed back in order because outputs are assembled in plan order (float sums in the same order
    give the same bits); running ahead keeps the executor's threads busy meanwhile. Items are pulled only as
    calls are submitted, so memory holds at most ``ahead + 1`` results. With ``weight``, ``ahead`` counts the
    items' weights instead (tiles rather than batches), so small calls queued behind a big one keep the other
    threads busy instead of waiting for it.
    """
    if executor is None:
        for item in items:
            yield item, call(item)
        return
    running: deque[tuple[T, Future[R], int]] = deque()
    beyond = 0  # the weight submitted after the oldest call
    for item in items:
        w = max(1, weight(item)) if weight is not None else 1
        beyond += w if running else 0
        running.append((item, executor.submit(call, item), w))
        while running and beyond >= ahead:
            done, future, _ = running.popleft()
            beyond -= running[0][2] if running else 0
            yield done, future.result()
    while running:
        done, future, _ = running.popleft()
        yield done, future.result()


def batches(job: Job, items: Iterable[TileData], count: int | None = None,
            resources: Resources | None = None) -> Iterator[list[TileData]]:
    """Read tiles grouped so that each group holds ``batch_size`` tiles to predict (skipped tiles ride along).

    Given the ``count`` of items, and when the policy spreads the ends (:meth:`Resources.spread_ends`: a runtime
    with several streams and no fixed batch size), the first and the last ``batch_size`` items go out one tile at a
    time: at the start every stream gets work as soon as a tile is read, instead of the second waiting for a second
    whole batch; at the end whichever stream is free takes the next tile, so the streams finish together.
    """
    size = job.inputs.batch_size
    spread = count is not None and (resources or Resources.detect()).spread_ends(
        streams_of(job.runtime), job.inputs.fixed_batch)
    tail = count - size if spread else None
    pending: list[TileData] = []
    work = 0
    for i, item in enumerate(items):
        if i == tail and pending:  # the tail starts with a group of its own
            yield pending
            pending, work = [], 0
        pending.append(item)
        work += not item.skip
        if work >= size or (work and tail is not None and (i < size or i >= tail)):
            yield pending
            pending, work = [], 0
    if pending:
        yield pending


class BatchReuse:
    """Packed batches the model is done with, stacked into again instead of allocated afresh.

    Only full batches in the NCHW layout, only for a runtime that declares ``releases_inputs``, and at most
    ``spare_batches`` of them (the policy's). Safe across threads: a batch is handed back only after the model
    returned, and taken by the next :meth:`pack`. Keep one per job for as long as the job runs, so that every chunk
    of a chunked run reuses the same few batches.
    """

    def __init__(self, job: Job, resources: Resources | None = None) -> None:
        policy = resources or Resources.detect()
        self.job = job
        self.keep = policy.spare_batches if policy.reuse_batches else 0
        self.enabled = self.keep > 0 and job.inputs.layout == "NCHW" and releases_inputs(job.runtime)
        self._spare: deque[Mapping[str, np.ndarray]] = deque()

    def pack(self, items: Sequence[TileData]) -> Mapping[str, np.ndarray]:
        """:meth:`Job.pack <tilecast.job.Job.pack>` into a spare batch when there is one."""
        try:
            reuse = self._spare.pop()
        except IndexError:
            reuse = None
        return self.job.pack(items, reuse)

    def run(self, batch: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
        """:meth:`Job.run <tilecast.job.Job.run>`, then keep ``batch`` for reuse if it may be."""
        job = self.job
        outputs = job.runtime.run(batch)
        if self.enabled and n == job.inputs.batch_size and len(self._spare) < self.keep:
            self._spare.append(batch)
        return job.unpack(outputs, n)

    def infer(self, items: Sequence[TileData]) -> list[np.ndarray]:
        """:meth:`Job.infer <tilecast.job.Job.infer>` with reuse."""
        return self.run(self.pack(items), len(items))
