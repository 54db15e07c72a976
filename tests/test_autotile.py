"""``input_tile_size="auto"`` / ``--tile auto``: the pure choice (hypothesis) and the probing against real calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

import tilecast
import tilecast.resources
from onnx_models import mean_conv
from tilecast.autoprobe import choose_tile, is_allocation_failure, memory_available
from tilecast.autotile import (
    NICE_TILES,
    AutoTile,
    Footprint,
    auto_batch,
    candidates,
    computed_pixels,
    overhead,
    parse_bytes,
    pick,
    run_bytes,
)
from tilecast.errors import SpecError, TileSizeError
from tilecast.plan import XY, TileGeometry, is_auto, parse_tile_size

# --------------------------------------------------------------------------------------------- pure arithmetic

overlaps = st.integers(0, 64).map(lambda o: XY(o, o))
multiples = st.sampled_from([1, 2, 8, 16, 32, 64, 128])


def test_overhead_matches_the_issue():
    assert overhead(XY(256, 256), XY(16, 16)) == pytest.approx((288 / 256) ** 2)
    assert round(overhead(XY(256, 256), XY(16, 16)), 2) == 1.27
    assert round(overhead(XY(1024, 1024), XY(16, 16)), 2) == 1.06


@given(st.integers(1, 4096), st.integers(1, 4096), overlaps)
def test_overhead_falls_as_the_tile_grows(a, b, o):
    small, large = sorted((a, b))
    assert overhead(XY(large, large), o) <= overhead(XY(small, small), o)
    assert overhead(XY(a, a), XY(0, 0)) == 1


@given(overlaps, multiples)
def test_candidates_pad_to_the_multiple_largest_first(o, m):
    cands = candidates(o, m)
    assert cands, "some tile is always possible"
    for t in cands:
        assert (t.x + 2 * o.x) % m == 0 and (t.y + 2 * o.y) % m == 0
        assert t.x >= 2 * o.x and t.x > 0
        assert t.x >= min(NICE_TILES) or t.x >= 2 * o.x
    areas = [t.x * t.y for t in cands]
    assert areas == sorted(areas, reverse=True)
    assert len(set(cands)) == len(cands)


@given(overlaps, multiples, st.integers(1, 5000), st.integers(1, 5000))
def test_candidates_stay_within_a_tile_of_the_region(o, m, w, h):
    region = XY(w, h)
    cands = candidates(o, m, region)
    assert cands
    unbounded = candidates(o, m)
    for t in cands:
        assert t in unbounded
    if len(cands) > 1:  # a tile larger than the region would only compute padding
        for t in cands:
            assert t.x + 2 * o.x <= math.ceil((w + 2 * o.x) / m) * m


def test_fixed_axis_keeps_the_models_size():
    cands = candidates(XY(8, 8), 32, None, (None, 128))
    assert {t.y for t in cands} == {128 - 16}
    assert all((t.x + 16) % 32 == 0 for t in cands)


@given(st.sampled_from(NICE_TILES), overlaps, st.none() | st.integers(1, 64))
def test_auto_batch_keeps_calls_near_the_default_size(edge, o, given_batch):
    b = auto_batch(XY(edge, edge), o, given_batch)
    if given_batch is not None:
        assert b == given_batch
    else:
        assert 1 <= b <= 8
        assert b == 1 or b * (edge + 2 * o.x) ** 2 <= 8 * 288 * 288


@given(st.sampled_from(NICE_TILES), overlaps, st.integers(1, 8), st.integers(1, 20000), st.integers(1, 4),
       st.floats(0, 2000))
def test_run_bytes_grows_with_every_term(edge, o, batch, width, streams, per_px):
    fp = Footprint(per_px, 12, 9, streams)
    base = run_bytes(XY(edge, edge), o, batch, width, fp)
    assert base > 0
    assert run_bytes(XY(edge, edge), o, batch + 1, width, fp) >= base
    assert run_bytes(XY(edge, edge), o, batch, width + 1, fp) > base
    assert run_bytes(XY(edge + 32, edge + 32), o, batch, width, fp) > base
    assert run_bytes(XY(edge, edge), o, batch, width, Footprint(per_px + 1, 12, 9, streams)) > base


@given(overlaps, multiples, st.integers(64, 20000), st.integers(64, 20000), st.integers(1, 4),
       st.data())
@settings(max_examples=60)
def test_pick_computes_the_fewest_pixels_among_what_fits(o, m, w, h, streams, data):
    region = XY(w, h)
    cands = candidates(o, m, region)
    fits = {t: data.draw(st.booleans()) for t in cands}
    chosen = pick(cands, o, region, fits, streams)
    if not any(fits.values()):
        assert chosen is None
        return
    assert fits[chosen]
    cost = computed_pixels(chosen, o, region, streams)
    assert all(cost <= computed_pixels(t, o, region, streams) for t in cands if fits[t])
    assert cost >= w * h  # every kept pixel is computed at least once


def test_large_regions_get_large_tiles_small_regions_do_not():
    o, everything = XY(16, 16), None
    big = pick(candidates(o, 32, XY(6144, 6144)), o, XY(6144, 6144),
               everything or dict.fromkeys(candidates(o, 32, XY(6144, 6144)), True), 2)
    assert big.x >= 768 and overhead(big, o) < 1.1
    small = pick(candidates(o, 32, XY(300, 300)), o, XY(300, 300),
                 dict.fromkeys(candidates(o, 32, XY(300, 300)), True), 2)
    assert small.x + 32 <= 352  # one tile just covers the region: nothing bigger


@given(st.integers(1, 2**40))
def test_parse_bytes_round_trips_units(n):
    if n < 2**20:
        with pytest.raises(SpecError):
            parse_bytes(n)
        return
    assert parse_bytes(n) == n
    assert parse_bytes(str(n)) == n
    assert parse_bytes(f"{n / 2**20}MiB") == pytest.approx(n, rel=1e-6)


@pytest.mark.parametrize(("text", "expected"), [("2GiB", 2 * 2**30), ("2G", 2 * 2**30), ("1500MiB", 1500 * 2**20),
                                                ("1500m", 1500 * 2**20), ("0.5 GB", 2**29), ("2e9", 2_000_000_000)])
def test_parse_bytes_examples(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "-1G", "2 parsecs", True, "1k", float("nan")])
def test_parse_bytes_refuses_nonsense(bad):
    with pytest.raises(SpecError, match="memory_budget"):
        parse_bytes(bad)


def test_auto_spelling_and_geometry():
    assert is_auto("auto") and is_auto(" AUTO ") and not is_auto(256) and not is_auto("256")
    assert parse_tile_size("Auto") == "auto"
    assert parse_tile_size("256,128") == XY(256, 128)
    with pytest.raises(SpecError, match="auto"):
        TileGeometry.create("auto")


def test_allocation_failures_are_recognised():
    assert is_allocation_failure(MemoryError())

    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name
        pass

    assert is_allocation_failure(OutOfMemoryError("CUDA"))
    assert is_allocation_failure(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"))
    wrapped = TileSizeError("rejected")
    wrapped.__cause__ = MemoryError()
    assert is_allocation_failure(wrapped)
    assert not is_allocation_failure(ValueError("Concat: dimension mismatch"))
    assert memory_available() > 0


# ------------------------------------------------------------------------------------------- against a model


def _image(raster, h=700, w=900, bands=2):
    r, c = np.mgrid[0:h, 0:w]
    data = np.stack([(r * 7 + c * 3 + 11 * b) % 251 for b in range(bands)]).astype("float32")
    return raster(data), data


def _stride_model(stride: int, calls: list | None = None, oom_above: int | None = None):
    """A per-pixel model (sum of bands) that, like a U-Net, refuses sizes not divisible by ``stride``, and runs out
    of memory on tiles larger than ``oom_above`` padded pixels per edge."""

    def fn(x):
        h, w = x.shape[2:]
        if calls is not None:
            calls.append((x.shape[0], h, w))
        if h % stride or w % stride:
            raise ValueError(f"Concat: input sizes {h}x{w} not divisible by {stride}")
        if oom_above is not None and max(h, w) > oom_above:
            raise MemoryError("simulated")
        return x.sum(axis=1, keepdims=True)

    return tilecast.Model.from_callable(fn, input_tile_size="auto", input_overlap_size=8, layout="NCHW",
                                        output_bands={"s": "float32"})


def test_auto_output_equals_the_untiled_computation(raster, tmp_path):
    path, data = _image(raster)
    model = _stride_model(1)
    pred = model.predict_image(path)
    choice = pred.model.tile_choice
    assert choice is not None and choice.reason in ("fits", "budget")
    assert pred.model.spec.geometry.tile == choice.tile
    out = pred.to_geotiff(tmp_path / "o.tif")
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), data.sum(axis=0))
        assert ds.tags()["TILECAST_TILE"].startswith(f"{choice.tile.x},{choice.tile.y} auto=")


def test_stride_is_detected_from_rejected_sizes(raster):
    path, _ = _image(raster)
    calls: list = []
    pred = _stride_model(128, calls).predict_image(path)
    choice = pred.model.tile_choice
    assert choice.multiple >= 64  # 32 was refused; 64 or 128, whichever first gave a size the model takes
    assert choice.padded.x % 128 == 0 and choice.padded.y % 128 == 0
    assert any(h % 128 for _, h, _ in calls)  # it did try a size the model refused first
    data = pred.to_numpy()  # and the run uses the chosen size throughout
    assert data.shape == (1, 700, 900)


def test_given_multiple_is_used_without_guessing(raster):
    path, _ = _image(raster)
    calls: list = []
    model = _stride_model(64, calls).with_options(tile_multiple=64)
    pred = model.predict_image(path)
    assert pred.model.tile_choice.multiple == 64
    assert all(h % 64 == 0 for _, h, _ in calls)


def test_allocation_failure_shrinks_the_tile(raster):
    path = raster(np.zeros((1, 4096, 4096), "uint8"))  # large enough that a large tile is worth it
    calls: list = []
    pred = _stride_model(1, calls, oom_above=600).predict_image(path)
    assert pred.model.tile_choice.padded.x <= 600
    assert any(max(h, w) > 600 for _, h, w in calls)  # a larger size was tried and failed
    assert _stride_model(1).predict_image(path).model.tile_choice.padded.x > 600


def test_small_budget_means_a_small_tile(raster):
    path, _ = _image(raster, 2000, 2000)
    roomy = _stride_model(1).predict_image(path).model.tile_choice
    tight = _stride_model(1).with_options(memory_budget="48MiB").predict_image(path).model.tile_choice
    assert tight.tile.x < roomy.tile.x
    assert tight.estimate <= 48 * 2**20 and tight.reason == "budget"
    with pytest.raises(TileSizeError, match="memory-budget"):
        _stride_model(1).with_options(memory_budget="1MiB").predict_image(path)


def test_a_model_that_refuses_everything_says_so(raster):
    path, _ = _image(raster)

    def fn(x):
        raise ValueError("no")

    model = tilecast.Model.from_callable(fn, input_tile_size="auto", layout="NCHW", output_bands={"s": "float32"})
    with pytest.raises(TileSizeError, match="refused every size"):
        model.predict_image(path)


def test_fixed_size_model_auto_means_its_size(tmp_path, raster):
    fixed = mean_conv(tmp_path / "fixed.onnx", bands=1, hw=(64, 64))
    model = tilecast.Model.from_onnx(fixed, input_tile_size="auto", input_overlap_size=4)
    assert model.auto_tile is None
    assert model.spec.geometry.tile == XY(56, 56)
    assert model.tile_choice.reason == "fixed"
    data = (np.arange(100 * 120).reshape(1, 100, 120) % 97).astype("float32")
    out = model.with_options(crs=None).predict_image(raster(data)).to_geotiff(tmp_path / "o.tif")
    with rasterio.open(out) as ds:
        assert ds.tags()["TILECAST_TILE"].startswith("56,56 auto=fixed")
    plain = tilecast.Model.from_onnx(fixed, input_overlap_size=4)
    assert plain.tile_choice is None and plain.with_options(input_tile_size=56).tile_choice is None
    assert model.with_options(input_tile_size=56).tile_choice is None  # an explicit tile is not auto's choice


def test_auto_with_output_tile_is_refused():
    with pytest.raises(SpecError, match="output_tile_size"):
        tilecast.Model.from_callable(lambda x: x, input_tile_size="auto", output_tile_size=128, layout="NCHW")


def test_explicit_tile_replaces_auto():
    model = _stride_model(1)
    assert model.auto_tile is not None
    fixed = model.with_options(input_tile_size=128)
    assert fixed.auto_tile is None and fixed.spec.geometry.tile == XY(128, 128)
    assert fixed.with_options(input_tile_size="auto").auto_tile == AutoTile()


def test_choose_tile_with_a_real_onnx_model(tmp_path, monkeypatch):
    import tilecast.autoprobe as autoprobe

    monkeypatch.setattr(tilecast.resources, "available_cpus", lambda: 2)  # two streams of one thread each
    path = mean_conv(tmp_path / "m.onnx", bands=1, k=5)
    model = tilecast.Model.from_onnx(path, input_tile_size="auto", input_overlap_size=2, layout="NCHW")
    probed: list = []
    measure = autoprobe.peak_call_bytes
    monkeypatch.setattr(autoprobe, "peak_call_bytes", lambda rt, batch: probed.append(rt) or measure(rt, batch))
    choice, runtime = choose_tile(model.runtime, model.spec, model.auto_tile, ["b1"], np.dtype("uint16"), {},
                                  XY(5000, 5000))
    assert choice.tile.x >= 512 and (choice.padded.x % 32) == 0
    # a call this large runs on one stream, in the session that probed it (not a third one)
    assert model.runtime.streams == 2 and choice.one_stream and runtime.streams == 1
    assert probed[0] is model.runtime and probed[-1] is runtime


def test_cli_tile_auto(raster, tmp_path):
    from click.testing import CliRunner

    from tilecast.cli import main

    path, data = _image(raster, 300, 260, 1)
    model = mean_conv(tmp_path / "m.onnx", bands=1, k=1)
    out = tmp_path / "o.tif"
    res = CliRunner().invoke(main, ["predict", path, "-m", model, "--tile", "auto", "--memory-budget", "512MiB",
                                    "--overlap", "4", "--layout", "NCHW", "-o", str(out), "-v", "-q"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "(auto, " in res.output and "profile: model" in res.output
    with rasterio.open(out) as ds:
        assert "auto=" in ds.tags()["TILECAST_TILE"]
        np.testing.assert_allclose(ds.read(1), data[0], rtol=1e-6)


def test_auto_batch_comes_from_the_device_memory_where_the_runtime_knows_it(raster, tmp_path):
    """On an accelerator (a runtime that says where it runs, :class:`~tilecast.runtimes.devices.Placed`), ``auto``
    sends as many tiles per call as the device's free memory takes, within the host's budget; the CPU keeps its
    small batches. A stand-in runtime plays the device: it allows 24 tiles per call."""
    from tilecast.runtimes.callable import CallableRuntime

    class OnDevice(CallableRuntime):
        devices = ("cuda:0",)
        precision = "fp32"
        device_batch = None

        def batch_limit(self, batch):
            asked.append(next(iter(batch.values())).shape[0])
            return 24

    asked: list[int] = []
    path, data = _image(raster)
    plain = _stride_model(1)
    runtime = OnDevice(lambda x: x.sum(axis=1, keepdims=True), plain.runtime.signature.inputs,
                       plain.runtime.signature.outputs)
    model = tilecast.Model(runtime, plain.spec)
    model.auto_tile = plain.auto_tile
    on_cpu = plain.predict_image(path).model.tile_choice
    on_device = model.predict_image(path).model.tile_choice
    assert asked == [1]  # probed with one tile
    assert on_cpu.batch <= 8 and on_device.batch == 24 and on_device.tile == on_cpu.tile
    out = model.predict_image(path).to_geotiff(tmp_path / "o.tif")
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), data.sum(axis=0))
