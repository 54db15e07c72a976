"""One size parser for every size a user writes: 256, "256", "256,128", (w, h), [w, h]."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilecast.errors import SpecError
from tilecast.plan import XY, parse_resolution, parse_size, xy
from tilecast.spec import ModelSpec
from tilecast.spec import parse_size as spec_parse_size

sizes = st.integers(min_value=0, max_value=1 << 20)


@pytest.mark.parametrize(("value", "want"), [
    (256, (256, 256)), ("256", (256, 256)), ("256,128", (256, 128)), ("256x128", (256, 128)),
    ("256 128", (256, 128)), (" 64 , 32 ", (64, 32)), ((48, 40), (48, 40)), ([48, 40], (48, 40)), ([7], (7, 7)),
    (np.int64(9), (9, 9)), (np.array([3, 4]), (3, 4)), (32.0, (32, 32)),
])
def test_parse_size_forms(value, want):
    assert parse_size(value) == XY(*want)


@pytest.mark.parametrize("value", ["", "a", "1,2,3", [1, 2, 3], [], None, True, 3.5, "48 48 48", {"w": 1},
                                   "16,x", "8,", ",16", "16,,8"])  # an empty part was dropped: "16,x" meant 16
def test_parse_size_errors_give_the_cli_syntax(value):
    with pytest.raises(SpecError, match=r"256 or 256,128 on the command line, 256 or \(256, 128\) in Python") as info:
        parse_size(value, "input_tile_size")
    assert "input_tile_size" in str(info.value) and "48 48" not in str(info.value).split("got")[0]


@given(sizes, sizes)
def test_parse_size_round_trip(w, h):
    want = XY(w, h)
    for text in (f"{w},{h}", f"{w}x{h}", f"{w} {h}"):
        assert parse_size(text) == want
    assert parse_size((w, h)) == parse_size([w, h]) == want
    assert parse_size(f"{w},{h}") == parse_size(",".join(map(str, parse_size((w, h)))))
    assert parse_size(w) == parse_size(str(w)) == XY(w, w)


@given(st.floats(min_value=1e-6, max_value=1e6), st.floats(min_value=1e-6, max_value=1e6))
def test_parse_resolution_round_trip(x, y):
    assert parse_resolution((x, y)) == (x, y) == parse_resolution(f"{x!r},{y!r}")
    assert parse_resolution(x) == (x, x)


def test_every_size_goes_through_parse_size():
    assert spec_parse_size is parse_size
    assert xy("16,8", "input_tile_size") == XY(16, 8)
    spec = ModelSpec.create(input_tile_size="16,8", input_overlap_size=[2], resolution="10")
    assert tuple(spec.geometry.tile) == (16, 8) and tuple(spec.geometry.overlap) == (2, 2)
    assert spec.resolution == (10.0, 10.0)
    with pytest.raises(SpecError, match="input_overlap_size"):
        ModelSpec.create(input_tile_size=16, input_overlap_size="2,2,2")
