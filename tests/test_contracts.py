"""The small contracts: objects with only the required members run end to end (every optional ability takes its
default), and declared abilities, on the base classes or on duck-typed objects, are honoured."""

from __future__ import annotations

import threading
import time
from types import MappingProxyType

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

import tilecast
from conftest import coord_image
from tilecast import Model
from tilecast.progress import Progress
from tilecast.runners.local import run_local_chunked
from tilecast.runners.recipe import build_source, source_recipe
from tilecast.runtimes.base import (
    BaseRuntime,
    Runtime,
    Signature,
    TensorSpec,
    metadata_of,
    model_path,
    recipe_of,
    releases_inputs,
    streams_of,
)
from tilecast.sinks.base import BaseSink, Checkpointed, ChunkSink, Sink, block_rows_of, finishing_of
from tilecast.sinks.chunked import BlockSinkAdapter, PartialGeoTIFFSink, ZarrSink
from tilecast.sinks.geotiff import GeoTIFFSink
from tilecast.sinks.memory import ArraySink
from tilecast.sources import RasterioSource, open_source
from tilecast.sources.base import BaseSource, Grid, Source, band_dtypes, native_grid, source_paths, source_recipe_of

# ------------------------------------------------------------------------------------- required members only


class PlainRuntime:
    """Only the required members: doubles its one input."""

    signature = Signature((TensorSpec("x", None, None),), (TensorSpec("y", None, None),))

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def run(self, batch):
        x = batch["x"]
        self.batches.append(x)  # kept: a runner that reused it would change what is kept here
        return {"y": x[:, :1] * 2.0}

    def close(self) -> None:
        pass


class PlainSource:
    """Only the required members: pixel values encode their coordinates."""

    def __init__(self, h: int = 40, w: int = 56) -> None:
        self.data = coord_image(h, w, 2)
        self.grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 4600000), (h, w))
        self.band_names = ["row", "col"]
        self.dtype = np.dtype("float32")
        self.properties: dict = {}

    def read(self, window: Window):
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        return self.data[:, r : r + h, c : c + w], None

    def close(self) -> None:
        pass


class PlainSink:
    """Only the required members."""

    def __init__(self) -> None:
        self.writes: list[tuple[Window, np.ndarray]] = []
        self.closed = self.aborted = False

    def open(self, profile) -> None:
        self.profile = profile
        self.array = np.zeros((len(profile.band_names), *profile.grid.shape), profile.dtype)

    def write(self, window: Window, data: np.ndarray) -> None:
        r, c = int(window.row_off), int(window.col_off)
        self.array[:, r : r + data.shape[1], c : c + data.shape[2]] = data
        self.writes.append((window, data.copy()))

    def close(self):
        self.closed = True
        return self.array

    def abort(self) -> None:
        self.aborted = True


def _model(runtime, **kw) -> Model:
    params = dict(input_tile_size=8, batch_size=2, layout="NCHW", output_bands={"y": "float32"})
    return Model(runtime, **{**params, **kw})


def test_plain_objects_are_the_contracts_and_get_every_default():
    rt, src, sink = PlainRuntime(), PlainSource(), PlainSink()
    assert isinstance(rt, Runtime) and isinstance(src, Source) and isinstance(sink, Sink)
    assert (streams_of(rt), releases_inputs(rt), dict(metadata_of(rt)), model_path(rt), recipe_of(rt)) == (
        1, False, {}, None, None)
    assert native_grid(src) == src.grid and band_dtypes(src) == [np.float32] * 2
    assert source_paths(src) == [] and source_recipe_of(src) is None
    assert source_recipe(src)[:2] == ("object", src) and build_source(source_recipe(src)) is src
    assert block_rows_of(sink) == 1 and finishing_of(sink) is None
    assert not isinstance(sink, ChunkSink)
    assert open_source(src) is src


def test_plain_runtime_source_and_sink_run_end_to_end():
    rt, src, sink = PlainRuntime(), PlainSource(), PlainSink()
    out = _model(rt, input_overlap_size=2).predict_image(src).run(sink, progress=False)
    assert sink.closed and not sink.aborted
    np.testing.assert_array_equal(out[0], src.data[0] * 2)
    assert len(rt.batches) > 1


def test_a_plain_sink_behind_the_chunked_runner(tmp_path):
    src = PlainSource()
    pred = _model(PlainRuntime()).predict_image(src)
    sink = PlainSink()
    out = run_local_chunked(pred.job, BlockSinkAdapter(sink), chunk_size=16)
    np.testing.assert_array_equal(out[0], src.data[0] * 2)


def test_a_plain_runtime_never_gets_reused_arrays(raster):
    """releases_inputs defaults to False: every batch is a fresh array, so a runtime may keep what it was given."""
    img = np.random.default_rng(0).random((1, 64, 64)).astype("float32")
    rt = PlainRuntime()
    kept = []
    run = rt.run

    def keeping(batch):
        kept.append((batch["x"], batch["x"].copy()))
        return run(batch)

    rt.run = keeping  # type: ignore[method-assign]
    out = _model(rt).predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out[0], img[0] * 2)
    assert len(kept) == 32
    assert all(np.array_equal(x, copy) for x, copy in kept)
    assert len({id(x) for x, _ in kept}) == len(kept)


# ---------------------------------------------------------------------------------------- declared abilities


class Doubler(BaseRuntime):
    """A runtime that declares its abilities on the base class; records how many calls overlap."""

    signature = Signature((TensorSpec("x", None, None),), (TensorSpec("y", None, None),))

    def __init__(self, streams: int = 1, releases: bool = False, seconds: float = 0.01) -> None:
        self.streams, self.releases_inputs, self.seconds = streams, releases, seconds
        self.active = self.most = 0
        self.lock = threading.Lock()
        self.seen: list[np.ndarray] = []

    def run(self, batch):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.seen.append(batch["x"])
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        return {"y": batch["x"][:, :1] * 2.0}


@pytest.mark.parametrize("streams", [1, 2])
def test_declared_streams_get_that_many_calls_at_once(raster, streams):
    img = np.random.default_rng(1).random((1, 64, 64)).astype("float32")
    rt = Doubler(streams)
    out = _model(rt).predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out[0], img[0] * 2)
    assert rt.most == streams


def test_streams_declared_by_a_duck_typed_runtime_are_honoured(raster):
    img = np.random.default_rng(2).random((1, 64, 64)).astype("float32")
    rt = PlainRuntime()
    rt.streams = 2  # type: ignore[attr-defined]
    active = most = 0
    lock = threading.Lock()
    run = rt.run

    def slow(batch):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.01)
        with lock:
            active -= 1
        return run(batch)

    rt.run = slow  # type: ignore[method-assign]
    assert streams_of(rt) == 2
    out = _model(rt).predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out[0], img[0] * 2)
    assert most == 2


@pytest.mark.parametrize("releases", [False, True])
def test_only_a_runtime_that_releases_its_inputs_gets_them_again(tmp_path, raster, releases):
    img = np.random.default_rng(3).random((1, 64, 96)).astype("float32")  # 24 tiles, batches of 2
    rt = Doubler(releases=releases, seconds=0)
    out = _model(rt).predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out[0], img[0] * 2)
    reused = len({id(x) for x in rt.seen}) < len(rt.seen)
    assert reused == releases
    rt.seen.clear()
    path = _model(rt).predict_image(raster(img)).to_geotiff(tmp_path / "o.tif", resume=True, chunk_size=32,
                                                             progress=False)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), img[0] * 2)
    assert (len({id(x) for x in rt.seen}) < len(rt.seen)) == releases


def test_declared_metadata_path_and_recipe():
    class Described(Doubler):
        metadata = MappingProxyType({"mlm:item": "{}"})
        path = "/models/m.onnx"

        def recipe(self):
            return Doubler, (2,), {}

    rt = Described()
    assert metadata_of(rt) == {"mlm:item": "{}"} and model_path(rt) == "/models/m.onnx"
    factory, args, kwargs = recipe_of(rt)
    assert factory(*args, **kwargs).streams == 2
    assert metadata_of(Doubler()) == {} and model_path(Doubler()) is None and recipe_of(Doubler()) is None


class RowSink(BaseSink):
    block_rows = 16
    finishing = "polishing"

    def __init__(self) -> None:
        self.inner = PlainSink()

    def open(self, profile) -> None:
        self.inner.open(profile)

    def write(self, window, data) -> None:
        self.inner.write(window, data)

    def close(self):
        return self.inner.close()


def test_a_sinks_declared_block_rows_and_finishing_note_are_honoured():
    src = PlainSource(h=72, w=40)
    sink = RowSink()
    notes: list[str] = []

    class Noting(Progress):
        def note(self, text: str) -> None:
            notes.append(text)

    out = _model(PlainRuntime()).predict_image(src).run(sink, progress=Noting())
    np.testing.assert_array_equal(out[0], src.data[0] * 2)
    rows = [(int(w.row_off), int(w.height)) for w, _ in sink.inner.writes]
    assert all(r % 16 == 0 for r, _ in rows)
    assert all(h % 16 == 0 for _, h in rows[:-1]) and sum(h for _, h in rows) == 72
    assert notes == ["polishing"]


def test_block_rows_declared_by_a_duck_typed_sink_are_honoured():
    src = PlainSource(h=72, w=40)
    sink = PlainSink()
    sink.block_rows = 32  # type: ignore[attr-defined]
    _model(PlainRuntime()).predict_image(src).run(sink, progress=False)
    assert all(int(w.row_off) % 32 == 0 for w, _ in sink.writes)


def test_chunk_sinks_are_told_apart_by_their_protocol(tmp_path):
    assert isinstance(PartialGeoTIFFSink(tmp_path / "a.tif"), ChunkSink)
    assert isinstance(ZarrSink(tmp_path / "a.zarr"), ChunkSink)
    assert isinstance(BlockSinkAdapter(PlainSink()), ChunkSink)
    assert not isinstance(GeoTIFFSink(tmp_path / "b.tif"), ChunkSink) and not isinstance(ArraySink(), ChunkSink)
    assert isinstance(PartialGeoTIFFSink(tmp_path / "a.tif"), Checkpointed)
    assert not isinstance(BlockSinkAdapter(PlainSink()), Checkpointed)
    assert block_rows_of(GeoTIFFSink(tmp_path / "b.tif")) == 256 and block_rows_of(ArraySink()) == 1
    assert finishing_of(GeoTIFFSink(tmp_path / "b.tif")) and finishing_of(ArraySink()) is None


# -------------------------------------------------------------------------------------- rebuilding sources


def test_a_raster_source_describes_how_a_worker_reopens_it(raster):
    path = raster(coord_image(32, 32, 3), descriptions=["r", "c", "k"])
    src = RasterioSource(path, ["k", "r"])
    assert source_paths(src) == [path]
    kind, rebuild, paths = source_recipe(src)
    assert kind == "recipe" and paths == (path,)
    again = build_source((kind, rebuild, paths))
    assert again.band_names == ["k", "r"] and again.warp is None
    window = Window(3, 5, 10, 7)
    np.testing.assert_array_equal(again.read(window)[0], src.read(window)[0])


def test_an_in_memory_dataset_cannot_be_reopened_elsewhere(raster):
    from rasterio.io import MemoryFile

    with open(raster(np.ones((1, 16, 16), np.uint8)), "rb") as fh, MemoryFile(fh.read()) as mem:
        src = RasterioSource(mem.name)
        kind, _, paths = source_recipe(src)  # /vsimem/: the check before any task refuses it for other processes
        assert kind == "recipe" and paths == (mem.name,) and mem.name.startswith("/vsimem/")
    with rasterio.open("", "w+", driver="MEM", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(10, 0, 0, 0, -10, 80)) as ds, \
            pytest.raises(tilecast.SpecError, match="in-memory dataset"):
        source_recipe(RasterioSource(ds))


class RebuiltSource(BaseSource):
    """A source that declares its own recipe."""

    def __init__(self, h: int) -> None:
        self.inner = PlainSource(h=h)
        self.grid, self.band_names, self.dtype = self.inner.grid, self.inner.band_names, self.inner.dtype

    def read(self, window):
        return self.inner.read(window)

    def recipe(self):
        return RebuiltSource, (self.inner.grid.shape[0],), {}


def test_a_declared_source_recipe_is_used():
    src = RebuiltSource(24)
    kind, rebuild, paths = source_recipe(src)
    assert kind == "recipe" and paths == ()
    again = build_source((kind, rebuild, paths))
    assert isinstance(again, RebuiltSource) and again.grid == src.grid
    assert dict(src.properties) == {} and native_grid(src) == src.grid and band_dtypes(src) == [np.float32] * 2
