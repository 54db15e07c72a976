"""Pure geometry of the parallel pipeline: column spans of a strip, and the input blocks a window touches."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rasterio.windows import Window

from tilecast.parallel import MIN_SPAN_PIXELS, Spans, column_spans, run_spans
from tilecast.sources.blocks import BlockStore, block_windows


@given(st.integers(0, 100_000), st.integers(1, 64), st.integers(1, 4096), st.sampled_from([1, 2, 4]))
def test_column_spans_cover_the_strip_once(width, parts, rows, unit):
    spans = column_spans(width, parts, rows, unit)
    assert [c for span in spans for c in range(*span)] == list(range(width))  # contiguous, ordered, no overlap
    assert len(spans) <= max(1, parts)
    assert all(c0 % unit == 0 for c0, _ in spans)
    if len(spans) > 1:  # each split-off span is worth a thread
        assert all((c1 - c0) * rows >= MIN_SPAN_PIXELS or c1 == width for c0, c1 in spans)


def test_small_strips_stay_on_the_calling_thread():
    assert column_spans(1000, 8, rows=10) == [(0, 1000)]
    assert len(column_spans(8192, 8, rows=256)) == 8


@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 700), st.integers(1, 700), st.data())
def test_block_windows_are_exactly_the_blocks_a_window_touches(h, w, bh, bw, data):
    r0 = data.draw(st.integers(0, h - 1))
    c0 = data.draw(st.integers(0, w - 1))
    win = Window(c0, r0, data.draw(st.integers(1, w - c0)), data.draw(st.integers(1, h - r0)))
    got = list(block_windows(win, (bh, bw), (h, w)))
    rows = {r // bh for r in range(r0, r0 + int(win.height))}
    cols = {c // bw for c in range(c0, c0 + int(win.width))}
    assert got == sorted((r, c) for r in rows for c in cols)


def test_run_spans_waits_for_every_span_before_raising():
    done = []

    def fn(c0, c1):
        if c0 == 0:
            raise ValueError("first")
        threading.Event().wait(0.05)
        done.append(c0)

    with Spans(4) as spans, pytest.raises(ValueError, match="first"):
        run_spans(spans.pool, [(0, 1), (1, 2), (2, 3), (3, 4)], fn)
    assert sorted(done) == [1, 2, 3]


def _store(img, block, budget, calls):
    def decode(win, into):
        calls.append((int(win.row_off), int(win.col_off)))
        part = img[:, win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width]
        if into is not None:
            into[...] = part
            return into, None
        return part.copy(), None
    return BlockStore(img.shape[1:], block, decode, budget)


def test_block_store_serves_concurrent_readers_and_reuses_buffers():
    h, w = 1000, 1300
    img = np.arange(3 * h * w, dtype=np.int32).reshape(3, h, w)
    calls: list = []
    store = _store(img, (256, 256), 3 * 256 * 256 * 4 * 10, calls)  # ~10 blocks: many are dropped and reused
    errors: list = []

    def reader(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
                win = Window(x, y, int(rng.integers(1, min(300, w - x) + 1)), int(rng.integers(1, min(300, h - y) + 1)))
                data, masks = store.read(win)
                assert masks is None
                assert (data == img[:, y:y + int(win.height), x:x + int(win.width)]).all()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert store.decodes == len(calls) > 20


def test_block_store_decodes_once_within_budget_and_retries_after_an_error():
    img = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)
    calls: list = []
    store = _store(img, (16, 16), 10**9, calls)
    for r in range(0, 60, 5):
        store.read(Window(0, r, 64, 4))
    assert len(calls) == len(set(calls)) == 16  # each block once

    failing = {"left": 1}

    def flaky(win, into):
        if failing["left"]:
            failing["left"] -= 1
            raise OSError("damaged block")
        return img[:, win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width].copy(), None

    store = BlockStore(img.shape[1:], (16, 16), flaky, 10**9)
    with pytest.raises(OSError, match="damaged"):
        store.read(Window(0, 0, 10, 10))
    data, _ = store.read(Window(0, 0, 10, 10))  # the failed block is not kept: the next read tries again
    assert (data == img[:, :10, :10]).all()
    failing["left"] = 1
    with pytest.raises(OSError, match="damaged"):  # its first block is kept, its second fails
        store.read(Window(0, 16, 40, 10))
    assert all(b.users == 0 for b in store._blocks.values())  # a failed read holds no block: all can be reused
