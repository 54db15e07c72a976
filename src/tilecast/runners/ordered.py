"""Calls that run ahead on an executor while their results come back in order: the runners' one pipelining step."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

__all__ = ["in_order"]

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
