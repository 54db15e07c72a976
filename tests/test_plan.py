"""Property tests of the tile plan: the geometry every runner relies on."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from tilecast.errors import RegionError, SpecError
from tilecast.plan import TileGeometry, TilePlan, footprint_ranges, window_from_bounds

RATIOS = [Fraction(1, 4), Fraction(1, 2), Fraction(1), Fraction(2), Fraction(4)]


@st.composite
def plans(draw, ratios=RATIOS):
    h = draw(st.integers(1, 300))
    w = draw(st.integers(1, 300))
    ratio = draw(st.sampled_from(ratios))
    # input tiles divisible by 4 so every ratio gives whole output tiles
    tw = 4 * draw(st.integers(1, 24))
    th = 4 * draw(st.integers(1, 24))
    ox, oy = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    geometry = TileGeometry.create((tw, th), (ox, oy), (int(tw * ratio), int(th * ratio)))
    r0 = draw(st.integers(0, h - 1))
    c0 = draw(st.integers(0, w - 1))
    region = Window(c0, r0, draw(st.integers(1, w - c0)), draw(st.integers(1, h - r0)))
    return TilePlan.create((h, w), geometry, region)


@settings(max_examples=200, deadline=None)
@given(plans())
def test_output_windows_cover_the_output_grid_exactly_once(plan):
    out_h, out_w = plan.output_shape
    count = np.zeros((out_h, out_w), dtype=np.int32)
    for t in plan.tiles():
        o = t.out
        assert o.width > 0 and o.height > 0
        count[o.row_off : o.row_off + o.height, o.col_off : o.col_off + o.width] += 1
    assert (count == 1).all()


@settings(max_examples=200, deadline=None)
@given(plans(ratios=[Fraction(1)]))
def test_input_cores_cover_the_region_exactly_once(plan):
    """With output = input tile, each output window is the core of its tile in region coordinates."""
    h, w = plan.shape
    count = np.zeros((h, w), dtype=np.int32)
    for t in plan.tiles():
        o = t.out
        r, c = plan.region.row_off + o.row_off, plan.region.col_off + o.col_off
        count[r : r + o.height, c : c + o.width] += 1
    reg = plan.region
    inside = count[reg.row_off : reg.row_off + reg.height, reg.col_off : reg.col_off + reg.width]
    assert (inside == 1).all()
    assert count.sum() == reg.width * reg.height


@settings(max_examples=200, deadline=None)
@given(plans())
def test_halos_read_inside_the_grid_and_pad_only_beyond_it(plan):
    h, w = plan.shape
    g = plan.geometry
    for t in plan.tiles():
        rd, ((top, bottom), (left, right)) = t.read, t.pad
        assert rd.row_off >= 0 and rd.row_off + rd.height <= h
        assert rd.col_off >= 0 and rd.col_off + rd.width <= w
        assert rd.height + top + bottom == g.padded.y and rd.width + left + right == g.padded.x
        assert min(top, bottom, left, right) >= 0
        # padding only where the halo leaves the grid
        assert (top > 0) == (rd.row_off == 0 and plan.region.row_off + t.row * g.tile.y - g.overlap.y < 0)
        assert (left > 0) == (rd.col_off == 0 and plan.region.col_off + t.col * g.tile.x - g.overlap.x < 0)
        assert bottom == 0 or rd.row_off + rd.height == h
        assert right == 0 or rd.col_off + rd.width == w
        # the halo is centred on the core: tile start - overlap
        assert rd.row_off - top == plan.region.row_off + t.row * g.tile.y - g.overlap.y
        assert rd.col_off - left == plan.region.col_off + t.col * g.tile.x - g.overlap.x


@settings(max_examples=200, deadline=None)
@given(plans())
def test_output_grid_scale_and_origin(plan):
    g = plan.geometry
    t = Affine(10, 0, 1000, 0, -10, 5000)
    ot = plan.output_transform(t)
    sx, sy = g.scale
    assert ot.a == pytest.approx(10 / float(sx)) and ot.e == pytest.approx(-10 / float(sy))
    # the output grid starts at the region's corner and covers it (rounded up by less than one output pixel)
    assert (ot.c, ot.f) == pytest.approx(t * (plan.region.col_off, plan.region.row_off))
    _out_h, out_w = plan.output_shape
    assert out_w * ot.a >= plan.region.width * 10 - 1e-6
    assert (out_w - 1) * ot.a < plan.region.width * 10 + 1e-6


@settings(max_examples=100, deadline=None)
@given(plans())
def test_blend_windows_cover_each_core_with_its_overlap(plan):
    g = plan.geometry
    oo = g.output_overlap
    out_h, _out_w = plan.output_shape
    for t in plan.tiles():
        b, o = t.blend_out, t.out
        assert b.row_off <= o.row_off and b.col_off <= o.col_off
        assert b.row_off + b.height >= o.row_off + o.height
        if oo is not None:
            assert b.row_off == max(0, o.row_off - oo.y)
            assert b.row_off + b.height == min(out_h, t.row * g.out.y + g.out.y + oo.y)
        assert t.blend_offset[0] >= 0 and t.blend_offset[1] >= 0


@settings(max_examples=100, deadline=None)
@given(plans(), st.booleans())
def test_rows_final_after_is_monotone_and_safe(plan, blend):
    finals = [plan.rows_final_after(r, blend) for r in range(plan.tile_rows)]
    assert finals == sorted(finals) and finals[-1] == plan.output_shape[0]
    oo = plan.geometry.output_overlap if blend else None
    for r, final in enumerate(finals[:-1]):
        # no later tile writes above `final`
        nxt = plan.tile(r + 1, 0)
        first_row = nxt.blend_out.row_off if blend and oo else nxt.out.row_off
        assert final <= first_row


@given(st.integers(1, 64), st.sampled_from([*RATIOS, Fraction(3, 5), Fraction(7, 3)]))
def test_footprint_ranges_partition_the_input(n_in, scale):
    n_out = -(-n_in * scale.numerator // scale.denominator)
    ranges = footprint_ranges(n_out, n_in, scale)
    assert len(ranges) == n_out
    for start, stop in ranges:
        assert 0 <= start < stop <= n_in
    assert ranges[0][0] == 0 and ranges[-1][1] == n_in
    pairs = list(itertools.pairwise(ranges))
    assert all(b[0] <= a[1] for a, b in pairs)  # no input pixel is left out
    if scale.numerator == 1:  # whole-factor downsampling: footprints tile the input exactly
        assert all(a[1] == b[0] for a, b in pairs)
        assert all(stop - start == scale.denominator for start, stop in ranges[:-1])


def test_overlap_modes():
    assert TileGeometry.create(256, 16).padded == (288, 288)
    assert TileGeometry.create(256, 16, overlap_mode="total").padded == (272, 272)
    assert TileGeometry.create([192, 128], [64, 32], overlap_mode="total").overlap == (32, 16)
    with pytest.raises(SpecError, match="even"):
        TileGeometry.create(256, 15, overlap_mode="total")


def test_output_overlap_scales_with_the_tile():
    g = TileGeometry.create(256, 16, 128)
    assert g.output_overlap == (8, 8) and g.padded_output == (144, 144)
    assert TileGeometry.create(256, 16, 1).output_overlap is None  # a classifier: one pixel per tile


def test_bad_geometry_is_refused():
    with pytest.raises(SpecError):
        TileGeometry.create(0)
    with pytest.raises(SpecError):
        TileGeometry.create(16, -1)
    with pytest.raises(SpecError):
        TileGeometry.create("abc")


def test_region_must_lie_inside_the_grid():
    g = TileGeometry.create(16)
    with pytest.raises(RegionError):
        TilePlan.create((10, 10), g, Window(5, 5, 10, 10))


def test_window_from_bounds_rounds_outward_and_clips():
    t = Affine(10, 0, 0, 0, -10, 100)
    assert window_from_bounds((5, 45, 26, 95), t, (10, 10)) == Window(0, 0, 3, 6)
    assert window_from_bounds((-50, -50, 500, 500), t, (10, 10)) == Window(0, 0, 10, 10)
    with pytest.raises(RegionError, match="do not overlap"):
        window_from_bounds((200, 200, 300, 300), t, (10, 10))
    with pytest.raises(RegionError):
        window_from_bounds((10, 10, 5, 5), t, (10, 10))
