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
    executor: Executor | None, items: Iterable[T], call: Callable[[T], R], ahead: int
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, call(item))`` in the order of ``items``, with up to ``ahead`` calls submitted beyond the one
    being waited for (``executor`` None: each call inline, when its result is wanted).

    Results are handed back in order because outputs are assembled in plan order (float sums in the same order
    give the same bits); running ahead keeps the executor's threads busy meanwhile. Items are pulled only as
    calls are submitted, so memory holds at most ``ahead + 1`` results.
    """
    if executor is None:
        for item in items:
            yield item, call(item)
        return
    running: deque[tuple[T, Future[R]]] = deque()
    for item in items:
        running.append((item, executor.submit(call, item)))
        if len(running) > ahead:
            done, future = running.popleft()
            yield done, future.result()
    while running:
        done, future = running.popleft()
        yield done, future.result()
