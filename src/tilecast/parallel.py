"""Column-parallel steps over output strips: the per-pixel work after the model, split across threads.

Every step that runs here (dividing blended sums by their weights, casting to the output dtype, reducing the first
overview level) computes each output pixel from the same input pixels whatever the split, so a strip cut into
column spans gives the same bits as the whole strip. numpy and GDAL release the GIL on arrays this size, so the spans
run at the same time; small strips stay on the calling thread, where handing them out would cost more than it saves.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

__all__ = ["MIN_SPAN_PIXELS", "SERIAL", "Spans", "column_spans", "run_spans"]

MIN_SPAN_PIXELS = 1 << 18
"""Pixels (rows x columns) below which a span is not worth a thread of its own."""


def column_spans(width: int, parts: int, rows: int = 1, unit: int = 2) -> list[tuple[int, int]]:
    """Split the columns ``[0, width)`` into at most ``parts`` contiguous spans ``(c0, c1)`` of about equal width,
    each of at least :data:`MIN_SPAN_PIXELS` pixels over ``rows`` rows, and each starting at a multiple of ``unit``
    (2 keeps every 2 x 2 overview cell inside one span). One span ``(0, width)`` when splitting does not pay."""
    if width <= 0:
        return []
    least = max(unit, -(-MIN_SPAN_PIXELS // max(1, rows)))
    parts = max(1, min(parts, width // least))
    step = -(-width // parts)
    step = -(-step // unit) * unit
    return [(c, min(width, c + step)) for c in range(0, width, step)]


def run_spans(pool: Executor | None, spans: list[tuple[int, int]], fn: Callable[[int, int], None]) -> None:
    """Run ``fn(c0, c1)`` for every span and wait for all of them: the calling thread takes the first span and the
    pool the others. The first error is raised once every span has stopped (none still writes into a buffer the
    caller reuses)."""
    if pool is None or len(spans) <= 1:
        for c0, c1 in spans:
            fn(c0, c1)
        return
    futures = [pool.submit(fn, c0, c1) for c0, c1 in spans[1:]]
    error: BaseException | None = None
    try:
        fn(*spans[0])
    except BaseException as exc:
        error = exc
    for f in futures:
        try:
            f.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


class Spans:
    """``threads`` threads for column-parallel steps: the calling thread and a pool of the others. A context
    manager: the pool's threads end with it. One thread (or a 1-CPU machine) runs everything on the caller."""

    def __init__(self, threads: int = 1, name: str = "tilecast-spans") -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.parts = max(1, threads)
        self.pool: Executor | None = ThreadPoolExecutor(self.parts - 1, name) if self.parts > 1 else None

    def run(self, width: int, rows: int, fn: Callable[[int, int], None], unit: int = 2) -> None:
        """``fn(c0, c1)`` over column spans of ``width`` columns and ``rows`` rows (see :func:`column_spans`)."""
        run_spans(self.pool, column_spans(width, self.parts, rows, unit), fn)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> Spans:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SERIAL = Spans(1)
"""Every step on the calling thread."""
