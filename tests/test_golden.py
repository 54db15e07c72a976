"""Golden checksums: every capability's output, pinned bit for bit on the tree before issue 13's refactor (dfd659a).

Each case runs a small generated input (images whose pixel values encode their coordinates, with nodata and masked
areas) through the public API or the CLI and compares digests of what must not change:

- rasters: the pixel bytes of every band and every overview level (read with rasterio), and the metadata (CRS,
  transform, dtypes, nodata, block sizes, compression, layout, band descriptions, tags, colour tables);
- TFRecord: the records' raw bytes after gunzip, per file name (tilecast writes gzip members with mtime 0 and
  serializes protobuf deterministically, so the bytes do not depend on the time or the process);
- tables: the decoded column values (Parquet through pyarrow, never the file's bytes, which embed the pyarrow
  version); CSV text (written with a C format, ``%.9g``); JSON sidecars (mixer, spec) decoded, paths reduced to names;
- features: the GeoDataFrame's columns (dtype name and value bytes) and geometries as WKB.

The models are hand-built ONNX graphs whose arithmetic is exact on integer inputs (sums, powers-of-two averages,
argmax), so the digests do not depend on ONNX Runtime's threading. Dask runs must give the same digests as local
runs. Nothing here hashes text produced by numpy's repr (it changes between numpy 1.x and 2.x).

To re-pin after a deliberate output change: ``TILECAST_GOLDEN_PRINT=1 pytest tests/test_golden.py -s`` prints the
new digests as a dict to paste below (and say why in the commit).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from conftest import coord_image, write_raster
from tilecast import Model
from tilecast.cli import main

# A call form deprecated by a later refactor must still give the pinned output: its warning is not an error here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

PRINT = os.environ.get("TILECAST_GOLDEN_PRINT") == "1"
_seen: dict[str, dict[str, str]] = {}

# Pinned on the base tree (commit dfd659a, numpy 1.26). A Dask case pins the same digests as its local twin.
EXPECTED: dict[str, dict[str, str]] = {
    # pixels of the next five changed on purpose (issue 17 item 8): masks are per band, Earth Engine's rule, so
    # the model now receives the other bands' values next to the scene's one-band masked box
    "predict_crop": {"pixels": "fe6a2621dd7876b83b99", "meta": "80145240cb31070bbaf7"},
    "predict_cosine": {"pixels": "c3f18a161cedc2f8d7b4", "meta": "80145240cb31070bbaf7"},
    "predict_classes": {"pixels": "1f445ce0f5373118cd56", "meta": "769c1df50e22fce21cf1"},
    "predict_nan": {"pixels": "2dc228b0facd278bda39", "meta": "ac941c1687407f190f18"},
    "predict_append": {"pixels": "727525025f0168f5cdbd", "meta": "275515a93a6a29b19b9f"},
    "predict_scale": {"pixels": "08a1ca3903c2d65a6be6", "meta": "f224509c4b65e4bfeacb"},
    "predict_resume": {"pixels": "fe6a2621dd7876b83b99", "meta": "80145240cb31070bbaf7"},
    "predict_zarr": {"zarr": "157ec8e7e0c7f1967036"},
    # meta changed on purpose (issue 18): class maps get a default tab10 colour table
    "cli_predict_classes": {"pixels": "1f445ce0f5373118cd56", "meta": "7f142ba989566402f79d"},
    "cli_predict_cosine_bounds": {"pixels": "b87e6cfa18192d0b3e78", "meta": "84f713b751f3676df398"},
    "export_image": {
        "records": "2420b85d46a6baf7a636",
        "stream": "3c44aa8f3db7a228497a",
        "mixer": "cd89e3b06f11c6b86e20",
        "spec": "3880fe876e87a3803de7",
        "count": "66",
        "skipped": "0",
    },
    "export_image_dask": {
        "records": "998ab57f40258c0ffe30",
        "stream": "3c44aa8f3db7a228497a",
        "mixer": "cd89e3b06f11c6b86e20",
        "spec": "6804f92a214ce835dd9c",
        "count": "66",
        "skipped": "0",
    },
    # meta changed on purpose (issue 18): the imported COG records its nodata
    "import_predictions": {"pixels": "bbcfe380cca85e401dd6", "meta": "98ab160c219dd868ec99"},
    "export_samples_tfrecord.gz": {
        "train:s-train.tfrecord.gz": "ba6d27639bde65dd5e32",
        "test:s-test.tfrecord.gz": "72d20691ca282214e5ab",
        "counts": '{"test":76,"train":55}',
        "skipped": "19",
        "spec": "a41c6e047989314a8906",
    },
    "export_samples_parquet": {
        "train:s-train.parquet": "788db2466a520e899f17",
        "test:s-test.parquet": "3293169f4231b8a64b36",
        "counts": '{"test":76,"train":55}',
        "skipped": "19",
    },
    "export_samples_csv": {
        "train:s-train.csv": "df1be8e2e6efc4d1b91a",
        "test:s-test.csv": "1433ab98624fbaee530b",
        "counts": '{"test":76,"train":55}',
        "skipped": "19",
    },
    "export_patches": {
        "all:patches-00000.tfrecord.gz": "dd1f6506f25f014d9612",
        "counts": '{"all":86}',
        "skipped": "14",
        "spec": "8449832759317d7889a4",
    },
    "cli_export_patches": {"stream": "f4b8054e58fcc5618486", "spec": "19e15697ead85b3af1e5"},
    "features_properties": {"frame": "6d12b229dc35b5cce0e4"},
    "features_zonal": {"frame": "956cba27997a8eeb9abd"},
    "cli_features_parquet": {"table": "b537f5f87cfebee3db58", "frame": "9b167b82180f18f808e9"},
    "cli_features_gpkg": {"frame": "9b167b82180f18f808e9"},
    "numpy_sine_canary": {"weights": "982fedd5e6ed5a056646"},
}


# --- digests -----------------------------------------------------------------------------------------------------


def _h(*parts: bytes | str) -> str:
    d = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else bytes(p)
        d.update(len(b).to_bytes(8, "little"))
        d.update(b)
    return d.hexdigest()[:20]


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _name_only(value: Any) -> Any:
    """Paths in tags and JSON sidecars reduced to their file names (tmp folders differ between runs)."""
    if isinstance(value, str) and os.sep in value and (value.startswith(os.sep) or value.startswith(".")):
        return os.path.basename(value)
    if isinstance(value, list):
        return [_name_only(v) for v in value]
    if isinstance(value, dict):
        return {k: _name_only(v) for k, v in value.items()}
    return value


def raster_digest(path: str | os.PathLike) -> dict[str, str]:
    """``pixels``: every band at full resolution and at every overview level; ``meta``: the profile and metadata."""
    with rasterio.open(path) as ds:
        levels = len(ds.overviews(1))
        pixels = [ds.read(i).tobytes() for i in ds.indexes]
        colormaps = []
        for i in ds.indexes:
            try:
                cm = ds.colormap(i)
                colormaps.append(sorted([int(k), [int(c) for c in v]] for k, v in cm.items()))
            except ValueError:
                colormaps.append(None)
        meta = {
            "driver": ds.driver,
            "size": [ds.width, ds.height, ds.count],
            "dtypes": list(ds.dtypes),
            "nodata": repr(None if ds.nodata is None else float(ds.nodata)),
            "nodatavals": [repr(None if v is None else float(v)) for v in ds.nodatavals],
            "crs": ds.crs.to_string() if ds.crs else None,
            "transform": [repr(float(v)) for v in ds.transform[:6]],
            "blocks": [list(s) for s in ds.block_shapes],
            "compression": ds.compression.name if ds.compression else None,
            "structure": ds.tags(ns="IMAGE_STRUCTURE"),
            "overviews": [ds.overviews(i) for i in ds.indexes],
            "descriptions": list(ds.descriptions),
            "tags": _name_only(ds.tags()),
            "band_tags": [ds.tags(i) for i in ds.indexes],
            "colormaps": colormaps,
            "mask_flags": [[f.name for f in flags] for flags in ds.mask_flag_enums],
        }
    for level in range(levels):
        with rasterio.open(path, overview_level=level) as ov:
            meta.setdefault("overview_shapes", []).append([ov.width, ov.height])
            pixels.extend(ov.read(i).tobytes() for i in ov.indexes)
    return {"pixels": _h(*pixels), "meta": _h(_canon(meta))}


def _gunzip(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def tfrecord_digest(files) -> str:
    """Per file (in name order): its name and the records' bytes after gunzip."""
    parts = []
    for f in sorted(map(Path, files), key=lambda p: p.name):
        parts += [f.name, _gunzip(f)]
    return _h(*parts)


def tfrecord_stream_digest(files) -> str:
    """The records of all files read in name order (Earth Engine's order), whatever the sharding."""
    return _h(b"".join(_gunzip(f) for f in sorted(map(Path, files), key=lambda p: p.name)))


def json_digest(path) -> str:
    return _h(_canon(_name_only(json.loads(Path(path).read_text()))))


def parquet_digest(path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    parts = []
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        parts += [name, str(col.type)]
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            parts.append(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
        else:  # strings, binary (WKB geometries), lists: their Python values
            parts.append(_canon([v.hex() if isinstance(v, bytes) else v for v in col.to_pylist()]))
    return _h(*parts)


def csv_digest(path) -> str:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return _h(_canon(rows))


def frame_digest(gdf) -> str:
    """A (Geo)DataFrame: column names, dtype names, values (numbers as bytes, the rest as JSON), geometries as WKB."""
    parts = [_canon([str(c) for c in gdf.columns])]
    for name in gdf.columns:
        col = gdf[name]
        parts.append(str(col.dtype))
        if name == getattr(gdf, "_geometry_column_name", None):
            parts.extend(g.wkb for g in col)
            parts.append(col.crs.to_string() if col.crs else "")
        elif col.dtype.kind in "biuf":
            parts.append(np.ascontiguousarray(col.to_numpy()).tobytes())
        else:
            parts.append(_canon([v.tolist() if hasattr(v, "tolist") else v for v in col]))
    return _h(*parts)


def check(name: str, got: dict[str, str]) -> None:
    """Compare with the pinned digests; a Dask twin (``NAME@dask``) is held to its local case's digests."""
    _seen[name] = got
    if PRINT:
        print(f"\n    {name!r}: {got!r},", file=sys.stderr)
        return
    key = name.split("@")[0]
    assert key in EXPECTED, f"no pinned digest for {key!r}; computed {got!r}"
    assert got == EXPECTED[key], f"{name}: output changed: computed {got!r}, pinned {EXPECTED[key]!r}"


# --- models: exact arithmetic on integer inputs -------------------------------------------------------------------


def _save(graph, path) -> str:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def box_sum(path, bands: int) -> str:
    """NCHW: the 3 x 3 sum of all bands (exact in float32 for the coordinate images), output ``s``."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((1, bands, 3, 3), np.float32)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("s", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["image", "w"], ["s"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return _save(helper.make_graph([node], "box", [x], [y], [numpy_helper.from_array(w, "w")]), path)


def argmax(path, bands: int) -> str:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("classes", TensorProto.INT64, None)
    node = helper.make_node("ArgMax", ["x"], ["classes"], axis=1, keepdims=0)
    return _save(helper.make_graph([node], "argmax", [x], [y]), path)


def avgpool2(path, bands: int) -> str:
    """2 x 2 average (a quarter of an integer sum: exact), so the output grid is half the input's."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    return _save(helper.make_graph([node], "pool", [x], [y]), path)


def tabular(path, n_features: int) -> str:
    """skl2onnx's convention: ``input`` (N, F) -> ``variable`` (N, 1) = x @ [1, 2, ...] + 0.5 (exact)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(1, n_features + 1, dtype=np.float32).reshape(-1, 1), "w")
    b = numpy_helper.from_array(np.array([0.5], np.float32), "b")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])
    y = helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])
    nodes = [helper.make_node("MatMul", ["input", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["variable"])]
    return _save(helper.make_graph(nodes, "lin", [x], [y], [w, b]), path)


# --- inputs ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Scene (3 bands, nodata -1 with a masked box), a NaN-nodata variant, label points/raster and the models."""
    d = tmp_path_factory.mktemp("golden")
    img = coord_image(90, 110, 3)
    img[:, 20:45, 30:75] = -1  # a masked box: a fully masked tile and partial ones
    img[1, 60:64, 5:9] = -1  # one band masked only
    scene = write_raster(d / "scene.tif", img, nodata=-1, descriptions=["red", "green", "blue"], tags={"gain": "2"})
    fimg = coord_image(70, 80, 2)
    fimg[:, 10:30, 50:70] = np.nan
    nan_scene = write_raster(d / "nan.tif", fimg, nodata=float("nan"))
    lab = np.full((90, 110), 255, "uint8")
    rr, cc = np.mgrid[3:88:4, 2:108:5]
    lab[rr, cc] = (rr * 7 + cc * 3) % 4 + 1
    labels = write_raster(d / "labels.tif", lab, nodata=255)
    models = d / "models"
    models.mkdir()
    return {
        "dir": d,
        "scene": scene,
        "nan": nan_scene,
        "labels": labels,
        "box3": box_sum(models / "box3.onnx", 3),
        "box2": box_sum(models / "box2.onnx", 2),
        "argmax3": argmax(models / "argmax3.onnx", 3),
        "pool3": avgpool2(models / "pool3.onnx", 3),
        "tab2": tabular(models / "tab2.onnx", 2),
    }


@pytest.fixture(scope="module")
def points(base):
    gpd = pytest.importorskip("geopandas")
    from rasterio.transform import xy

    with rasterio.open(base["scene"]) as ds:
        rows = np.arange(0, 90, 3)[:, None].repeat(8, 1).ravel()
        cols = (np.arange(8)[None, :] * 13 + rows[:, None] % 7).ravel()[: rows.size] % 110
        xs, ys = xy(ds.transform, rows, cols)
        return gpd.GeoDataFrame(
            {"cls": ((rows + cols) % 3 + 1).astype(float), "w": np.arange(rows.size, dtype=float)},
            geometry=gpd.points_from_xy(xs, ys),
            crs=ds.crs,
        )


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("cloudpickle")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0", silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _folder(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    out.mkdir()
    return out


# --- predict -----------------------------------------------------------------------------------------------------


def _crop(base):
    return Model.from_onnx(
        base["box3"], input_tile_size=24, input_overlap_size=4, batch_size=3, output_bands={"s": "float32"}
    ).predict_image(base["scene"])


def _cosine(base):
    return Model.from_onnx(
        base["box3"],
        input_tile_size=(24, 20),
        input_overlap_size=(4, 6),
        blend="cosine",
        batch_size=2,
        output_bands={"s": "float32"},
    ).predict_image(base["scene"])


def _classes(base):
    return Model.from_onnx(
        base["argmax3"],
        input_tile_size=32,
        input_overlap_size=2,
        output_bands={
            "cls": {"type": "uint8", "classes": ["r", "g", "b"], "colors": [[255, 0, 0], [0, 255, 0], [0, 0, 255]]}
        },
    ).predict_image(base["scene"])


def test_predict_crop(base, tmp_path):
    check("predict_crop", raster_digest(_crop(base).to_geotiff(tmp_path / "o.tif")))


def test_predict_cosine_float(base, tmp_path):
    check("predict_cosine", raster_digest(_cosine(base).to_geotiff(tmp_path / "o.tif")))


def test_predict_classes_uint8(base, tmp_path):
    check("predict_classes", raster_digest(_classes(base).to_geotiff(tmp_path / "o.tif")))


def test_predict_nan_nodata_uncompressed_no_overviews(base, tmp_path):
    pred = Model.from_onnx(
        base["box2"], input_tile_size=16, input_overlap_size=2, output_bands={"s": "float32"}
    ).predict_image(base["nan"])
    check("predict_nan", raster_digest(pred.to_geotiff(tmp_path / "o.tif", compress="NONE", overviews=False)))


def test_predict_append_input_and_region(base, tmp_path):
    pred = Model.from_onnx(
        base["box3"], input_tile_size=16, input_overlap_size=1, output_bands={"s": "float32"}
    ).predict_image(base["scene"], append_input=True, window=((5, 80), (7, 101)))
    check("predict_append", raster_digest(pred.to_geotiff(tmp_path / "o.tif")))


def test_predict_output_scale_and_bands(base, tmp_path):
    pred = Model.from_onnx(
        base["pool3"], input_tile_size=32, output_tile_size=16, output_bands={"y": {"type": "float32", "dimensions": 1}}
    ).predict_image(base["scene"], bands=["blue", "red", "green"])
    check("predict_scale", raster_digest(pred.to_geotiff(tmp_path / "o.tif")))


def test_predict_resumable_chunked(base, tmp_path):
    out = _crop(base).to_geotiff(tmp_path / "o.tif", resume=True, chunk_size=48)
    check("predict_resume", raster_digest(out))


def zarr_digest(zarr, path) -> str:
    group = zarr.open_group(str(path), mode="r")
    parts = [_canon(_name_only(dict(group.attrs)))]
    for name in sorted(group.array_keys()):
        arr = group[name]
        parts += [
            name,
            np.dtype(arr.dtype).str,
            _canon(list(arr.shape)),
            _canon(list(arr.chunks)),
            _canon(_name_only(dict(arr.attrs))),
            np.ascontiguousarray(arr[...]).tobytes(),
        ]
    return _h(*parts)


def test_predict_to_zarr(base, tmp_path):
    zarr = pytest.importorskip("zarr")
    path = _crop(base).to_zarr(tmp_path / "o.zarr", chunk_size=48)
    check("predict_zarr", {"zarr": zarr_digest(zarr, path)})


def cli(*args) -> None:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def _cli_classes(base) -> list:
    return ["predict", base["scene"], "--model", base["argmax3"], "--tile", "32", "--overlap", "2",
            "--output-band", "cls:uint8", "--classes", "0=low,1=mid,2=high", "-q"]  # fmt: skip


def test_predict_cli(base, tmp_path):
    cli(*_cli_classes(base), "-o", tmp_path / "o.tif")
    check("cli_predict_classes", raster_digest(tmp_path / "o.tif"))
    cli("predict", base["scene"], "--model", base["box3"], "--tile", "24", "--overlap", "4", "--blend", "cosine",
        "--output-band", "s:float32", "--bounds", "500100", "4599300", "501000", "4599900", "-o", tmp_path / "b.tif",
        "-q")  # fmt: skip
    check("cli_predict_cosine_bounds", raster_digest(tmp_path / "b.tif"))


@pytest.mark.parametrize("case", ["crop", "cosine", "classes"])
def test_predict_dask_is_the_local_output(base, client, tmp_path, case):
    pred = {"crop": _crop, "cosine": _cosine, "classes": _classes}[case](base)
    out = pred.to_geotiff(tmp_path / "o.tif", engine="dask", client=client, chunk_size=48)
    check(f"predict_{case}@dask", raster_digest(out))


def test_predict_dask_documented_call_and_zarr(base, client, tmp_path):
    """docs/dask.md's form: ``predict_image(..., engine="dask")`` on the current client, default chunks."""
    model = Model.from_onnx(
        base["box3"], input_tile_size=24, input_overlap_size=4, batch_size=3, output_bands={"s": "float32"}
    )
    out = model.predict_image(base["scene"], engine="dask").to_geotiff(tmp_path / "o.tif")
    check("predict_crop@dask-default", raster_digest(out))
    zarr = pytest.importorskip("zarr")
    path = _crop(base).to_zarr(tmp_path / "o.zarr", engine="dask", client=client, chunk_size=48)
    check("predict_zarr@dask", {"zarr": zarr_digest(zarr, path)})


def test_predict_cli_dask(base, client, tmp_path):
    cli(*_cli_classes(base), "-o", tmp_path / "o.tif", "--engine", "dask", "--scheduler", client.scheduler.address)
    check("cli_predict_classes@dask", raster_digest(tmp_path / "o.tif"))


def test_numpy_sine_canary():
    """Blend weights come from numpy's float64 ``sin`` (see the cosine and hann rules). If the cosine digests above
    change together with this one, numpy (its version or the CPU's SIMD path) changed them, not tilecast."""
    parts = []
    for o in range(1, 9):
        parts.append((np.sin(0.5 * np.pi * (np.arange(2 * o) + 0.5) / (2 * o)) ** 2).tobytes())
        x = (np.arange(2 * o + 24) + 0.5) / (2 * o + 24)
        parts.append((np.sin(np.pi * x) ** 2).tobytes())
    check("numpy_sine_canary", {"weights": _h(*parts)})


# --- exports and import ------------------------------------------------------------------------------------------


def _image_export(base, out: Path, **kw):
    from tilecast.export import export_image

    return export_image(base["scene"], out, [16, 8], kernel=[4, 2], max_file_size=6_000, default_value=-5, **kw)


def _image_digest(res) -> dict[str, str]:
    return {
        "records": tfrecord_digest(res.files["all"]),
        "stream": tfrecord_stream_digest(res.files["all"]),
        "mixer": json_digest(res.mixer),
        "spec": json_digest(res.spec),
        "count": str(res.count),
        "skipped": str(res.skipped),
    }


def test_export_image(base, tmp_path):
    check("export_image", _image_digest(_image_export(base, _folder(tmp_path, "out"))))


def test_export_image_dask(base, client, tmp_path):
    res = _image_export(base, _folder(tmp_path, "out"), engine="dask", client=client, chunk_rows=2)
    # Dask shards per chunk: the files (and the spec that lists them) differ, the records in name order do not.
    got = _image_digest(res)
    local = EXPECTED.get("export_image", {})
    assert PRINT or {k: v for k, v in got.items() if k not in ("records", "spec")} == {
        k: v for k, v in local.items() if k not in ("records", "spec")
    }
    check("export_image_dask", got)


def test_import_predictions(base, tmp_path):
    from tilecast.export import export_image, import_predictions

    res = export_image(base["scene"], _folder(tmp_path, "tiles"), 20, kernel=4)
    out = import_predictions(res.files["all"], res.mixer, tmp_path / "back.tif")  # the margin from the spec
    check("import_predictions", raster_digest(out))


def _samples_kw(points):
    return dict(
        labels=points,
        label_field="cls",
        properties=["w"],
        n=150,
        seed=4,
        split_block=32,
        geometries=True,
        chunk=32,
        splits={"train": 0.7, "test": 0.3},
    )


def _samples_digest(res) -> dict[str, str]:
    got = {f"{split}:{f.name}": _table_digest(f) for split, files in res.files.items() for f in files}
    got["counts"] = _canon(res.counts)
    got["skipped"] = str(res.skipped)
    if res.spec is not None:
        got["spec"] = json_digest(res.spec)
    return got


def _table_digest(f: Path) -> str:
    name = f.name
    if name.endswith(".parquet"):
        return parquet_digest(f)
    if name.endswith(".csv"):
        return csv_digest(f)
    return tfrecord_digest([f])


@pytest.mark.parametrize("fmt", ["tfrecord.gz", "parquet", "csv"])
def test_export_samples(base, points, tmp_path, fmt):
    from tilecast.export import export_samples

    res = export_samples(base["scene"], _folder(tmp_path, "o") / f"s.{fmt}", **_samples_kw(points))
    check(f"export_samples_{fmt}", _samples_digest(res))


@pytest.mark.parametrize("fmt", ["tfrecord.gz", "parquet", "csv"])
def test_export_samples_dask(base, points, client, tmp_path, fmt):
    from tilecast.export import export_samples

    res = export_samples(
        base["scene"],
        _folder(tmp_path, "o") / f"s.{fmt}",
        engine="dask",
        client=client,
        samples_per_task=40,
        **_samples_kw(points),
    )
    check(f"export_samples_{fmt}@dask", _samples_digest(res))


def _patches(base, out, **kw):
    from tilecast.export import export_patches

    return export_patches(
        base["scene"], out, [7, 5], label_raster=base["labels"], per_class=25, seed=2, default_value=-3, chunk=48, **kw
    )


def test_export_patches(base, tmp_path):
    check("export_patches", _samples_digest(_patches(base, _folder(tmp_path, "o"))))


def test_export_patches_dask(base, client, tmp_path):
    res = _patches(base, _folder(tmp_path, "o"), engine="dask", client=client, samples_per_task=30)
    check("export_patches@dask", _samples_digest(res))


def _export_cli(base, points, tmp_path, *extra) -> dict[str, str]:
    points.to_file(tmp_path / "pts.geojson", driver="GeoJSON")
    out = tmp_path / "cli"
    cli("export", "patches", base["scene"], "--labels", tmp_path / "pts.geojson", "--label-field", "cls",
        "--patch", "5", "--seed", "1", "-n", "60", "-q", "-o", f"{out}/", *extra)  # fmt: skip
    files = sorted(out.glob("*.tfrecord.gz"))
    return {"stream": tfrecord_stream_digest(files), "spec": json_digest(out / "spec.json")}


def test_export_cli(base, points, tmp_path):
    got = _export_cli(base, points, tmp_path)
    check("cli_export_patches", got)


def test_export_cli_dask(base, points, client, tmp_path):
    got = _export_cli(base, points, tmp_path, "--engine", "dask", "--scheduler", client.scheduler.address,
                      "--samples-per-task", "30")  # fmt: skip
    check("cli_export_patches@dask", got)


# --- features ----------------------------------------------------------------------------------------------------


def _gdf(n: int = 12):
    gpd = pytest.importorskip("geopandas")
    pytest.importorskip("pyarrow")
    from shapely.geometry import Point, box

    geoms = [
        Point(500000.0 + 35 + 70 * i, 4600000.0 - 25 - 60 * i)
        if i % 3
        else box(500000.0 + 40 * i, 4599000.0 - 30 * i, 500000.0 + 40 * i + 85, 4599000.0 - 30 * i + 55)
        for i in range(n)
    ]
    return gpd.GeoDataFrame(
        {"a": np.arange(n, dtype=np.float64) * 1.5, "b": (np.arange(n) * 10).astype(np.int64)},
        geometry=geoms,
        crs="EPSG:32633",
    )


def test_predict_properties(base):
    from tilecast.features import predict_properties

    model = Model.from_onnx(base["tab2"])
    out = predict_properties(model, _gdf(), input_properties=["a", "b"], output_properties=["y=variable:float32"])
    check("features_properties", {"frame": frame_digest(out)})
    out = predict_properties(
        model,
        _gdf(),
        sample=base["scene"],
        bands=["red", "blue"],
        stats=["mean"],
        input_properties=["red_mean", "blue_mean"],
        output_properties=["y=variable:float64"],
        nulls="skip",
    )
    check("features_zonal", {"frame": frame_digest(out)})


def test_predict_features_cli(base, tmp_path):
    gpd = pytest.importorskip("geopandas")
    src = tmp_path / "in.gpkg"
    _gdf().to_file(src, engine="pyogrio")
    for name in ("o.parquet", "o.gpkg"):
        res = CliRunner().invoke(
            main,
            [
                "predict-features",
                str(src),
                "-m",
                base["tab2"],
                "--input-property",
                "a,b",
                "--output-property",
                "y=variable:float32",
                "-o",
                str(tmp_path / name),
                "-q",
            ],
        )
        assert res.exit_code == 0, res.output
    check(
        "cli_features_parquet",
        {
            "table": parquet_digest(tmp_path / "o.parquet"),
            "frame": frame_digest(gpd.read_parquet(tmp_path / "o.parquet")),
        },
    )
    check("cli_features_gpkg", {"frame": frame_digest(gpd.read_file(tmp_path / "o.gpkg", engine="pyogrio"))})
