"""Every code block of README.md and docs/*.md runs, on the demo data (issue 18, item 3).

Blocks are read by ``tests/docs_fixtures.py``: each shell command (continuations joined, comments cut), each Python
block (keyed by its first line) and each text block is one item. :data:`CASES` says, for every item, how it runs:
:class:`Run` (in a fresh workspace holding the placeholder files the doc names, with the explicit text
substitutions listed there) or :class:`NotRunnable` (with the reason). An item missing from the table fails
``test_every_block_is_in_the_table``: a new example must be made runnable or listed.

Placeholders (one workspace per doc, copied from assets built once per module):

- ``scene.tif``: the Landsat 7 sample stacked as in ``examples/demo.py``; README.md gets all six bands (B1-B5, B7;
  its examples select the model's five), the other guides the model's five bands B1-B5. docs/model-cards.md, whose
  card is for a Sentinel-2 model, gets a generated 4-band 10 m raster (B02, B03, B04, B08) in EPSG:32633.
- ``unet.onnx``, ``m.onnx``, ``landcover.onnx`` (dask.md): ``models/landsat_landcover.onnx`` (the latter two with a
  card, since the docs call them without flags). docs/model-cards.md's ``landcover.onnx`` is a generated 1x1
  network (4 bands -> 3 class scores); features.md's ``landcover.onnx``, ``crop_type.onnx`` and ``classifier.onnx``
  are small scikit-learn forests converted with skl2onnx.
- Vector files: the sample's own points and polygons (with ``class`` = the land-cover code), generated parcels.
- Endpoints: ``127.0.0.1:8500`` is a real ``tilecast serve`` started by the documented command on a free port.
- docs/vectors.md: ``ortho.tif`` holds 8 px squares; ``trees.onnx`` and ``buildings-seg.onnx`` are analytic
  detectors (boxes; YOLO-seg instance masks) with Deepness/GeoDeep metadata, checked against the squares themselves.
  ``landcover.tif`` (also view.md's and the README's ``out/landcover.tif``) is the demo's predicted class map.
- ``tilecast view`` runs as a process with ``--no-browser`` on a free port: its TileJSON, one native-zoom tile and
  the value at the centre are fetched, then it is stopped; the value is checked against the raster or the model.
- docs/formats.md: ``scene.tif`` is a 3-band RGB raster; the ``.mar`` is built by ``torch-model-archiver`` (those
  items skip when the tool is missing), the ``.tflite`` by TensorFlow's converter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from docs_fixtures import ROOT, doc_items
from tilecast.errors import TilecastWarning

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---- the table -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A runnable item: ``subs`` are ``(old, new)`` replacements of the documented text, in order; ``setup`` runs
    first (documented commands of the same doc, or callables of the workspace); ``check(ws, out)`` looks at the
    results; ``xfail`` names the code change still needed (strict: the lead flips it once applied)."""

    subs: tuple[tuple[str, str], ...] = ()
    setup: tuple[str | Callable[[Path], None], ...] = ()
    check: Callable[[Path, str], None] | None = None
    xfail: str | None = None
    python_prelude: str = ""


@dataclass(frozen=True)
class NotRunnable:
    reason: str


@dataclass(frozen=True)
class Text:
    """A block that is not code (diagram, layout, measured output); ``check`` may compare it with reality."""

    what: str
    check: Callable[[str], None] | None = None


SAMPLE_BOUNDS = ("--bounds 500000 4590000 510000 4600000", "--bounds 634000 218000 641000 225000")
"""The README's bounds are a UTM example; the sample is in EPSG:32119 (630534, 215488) - (644470, 228114)."""

BENCH = NotRunnable("a benchmark (minutes on 2 cores); tests/test_bench_smoke.py runs the benchmarks at toy size")
MAKE = NotRunnable("`make` builds and installs a virtual environment; CI runs `make test`, tests/test_demo.py the demo")
PIP = NotRunnable("installs packages from PyPI (no network in tests); tests/test_packaging.py checks the extras")


def _landcover_matches_model(ws: Path, out: str, name: str = "landcover.tif", scene: str = "scene.tif") -> None:
    """The tiled map equals the model run once on the whole scene (receptive field 7 < the overlap)."""
    import onnxruntime as ort
    from scipy import ndimage

    with rasterio.open(ws / scene) as src:
        x = src.read(list(range(1, 6)), masked=True)
    # compare where the model's 7 x 7 receptive field sees valid input only (tilecast masks the rest)
    inside = ndimage.binary_erosion(~np.ma.getmaskarray(x).any(axis=0), np.ones((7, 7), bool), border_value=1)
    x = x.filled(0).astype(np.float32)[None]
    sess = ort.InferenceSession(str(ROOT / "models/landsat_landcover.onnx"), providers=["CPUExecutionProvider"])
    expected = sess.run(["landcover"], {"image": x})[0][0]
    with rasterio.open(ws / name) as dst:
        got = dst.read(1, masked=True)
    valid = ~np.ma.getmaskarray(got)
    assert valid.mean() > 0.8, "most of the scene is predicted (its nodata frame is not)"
    np.testing.assert_array_equal(got.data[valid & inside], expected[valid & inside])
    assert (valid & inside).sum() > 0.8 * inside.sum()


def _probabilities_7_bands(ws: Path, out: str) -> None:
    with rasterio.open(ws / "prob.tif") as dst:
        assert dst.count == 7 and dst.dtypes[0] == "float32"
        p = dst.read(masked=True)
    total = p.sum(axis=0)
    assert np.ma.allclose(total, 1.0, atol=1e-4), "softmax probabilities sum to one"


def _card_argmax(ws: Path, out: str) -> None:
    """The card's z-score scaling and argmax applied to the generated 1x1 network, computed here independently."""
    w = (np.arange(12, dtype=np.float32).reshape(3, 4) % 5 - 2) / 3  # the weights of _onnx_scores(.., 4, 3)
    with rasterio.open(ws / "scene.tif") as src:
        x = src.read().astype(np.float32)
    expected = np.argmax(np.einsum("kc,chw->khw", w, (x - 1200) / 400), axis=0)
    with rasterio.open(ws / "landcover.tif") as dst:
        got = dst.read(1, masked=True)
    valid = ~np.ma.getmaskarray(got)
    assert valid.mean() > 0.95 and set(np.unique(got.data[valid])) == {0, 1, 2}
    np.testing.assert_array_equal(got.data[valid], expected[valid])


def _ndvi(ws: Path, out: str) -> None:
    """The callable model's output is (nir - red) / (nir + red) of the scene's B4 and B3, computed here."""
    with rasterio.open(ws / "scene.tif") as src:
        red, nir = src.read(3, masked=True).astype(np.float64), src.read(4, masked=True).astype(np.float64)
    with rasterio.open(ws / "ndvi.tif") as dst:
        got = dst.read(1, masked=True)
    valid = ~np.ma.getmaskarray(got)
    assert valid.mean() > 0.8
    np.testing.assert_allclose(got.data[valid], ((nir - red) / (nir + red)).data[valid], rtol=1e-6)


def _features(name: str, columns: list[str], n: int | None = None) -> Callable[[Path, str], None]:
    """The output keeps every input feature and adds the predicted columns."""

    def check(ws: Path, out: str) -> None:
        import pyogrio  # the project's vector engine (geopandas 0.14's fiona drops float32 columns)

        gdf = pyogrio.read_dataframe(ws / name)
        assert set(columns) <= set(gdf.columns), gdf.columns
        if n is not None:
            assert len(gdf) == n
        assert gdf[columns[0]].notna().any()

    return check


def _opens(name: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        with rasterio.open(ws / name) as dst:
            assert dst.read(1, masked=True).count() > 0

    return check


def _same_as_local(ws: Path, out: str) -> None:
    _landcover_matches_model(ws, out, "out.tif")


def _import_equals_scene(ws: Path, out: str) -> None:
    """The exported patches, imported back, are the scene's pixels (one 256 px patch; edge patches are dropped)."""
    with rasterio.open(ws / "predicted.tif") as dst, rasterio.open(ws / "scene.tif") as src:
        got = dst.read()
        window = rasterio.windows.from_bounds(*dst.bounds, transform=src.transform)
        want = src.read(window=window, masked=True).filled(0)  # masked pixels are exported as --default-value 0
    assert got.shape == (5, 256, 256)
    np.testing.assert_array_equal(got, want)


def _copy_patches_as_predictions(ws: Path) -> None:
    """Stand-in for a model run outside tilecast: the exported patches themselves come back as 'predictions'."""
    (ws / "predictions").mkdir(exist_ok=True)
    for n, shard in enumerate(sorted((ws / "tiles").glob("scene-*.tfrecord.gz"))):
        shutil.copy(shard, ws / "predictions" / f"pred-{n:05d}.tfrecord.gz")


def _split_warning(ws: Path, out: str) -> None:
    spec = json.loads((ws / "patches/spec.json").read_text())
    empty = [name for name, n in spec["counts"].items() if n == 0]
    assert empty, "the demo scene fits one 512 px split block, so val and test come out empty"
    assert "--split-block" in out and all(name in out.split("wrote")[0] for name in empty), (
        f"empty splits {empty} came out without a warning that explains the split block:\n{out}"
    )


EXPORT_IMAGE = "tilecast export image scene.tif --patch 256 --kernel 128 --max-file-size 100MB -o tiles/"
CARD = (
    "tilecast card landcover.onnx --bands B02=blue,B03=green,B04=red,B08=nir --tile 224 --overlap 16 "
    "--scaling z-score:1200:400 --output-band landcover:uint8 --classes water,forest,urban --colors "
    "0000ff,00aa00,ff0000 --argmax --gsd 10 10 --gsd-tolerance 0.02 --crs EPSG:32633"
)
DEMO_PREDICT = (
    "tilecast predict out/landsat_stack.tif --model models/landsat_landcover.onnx --bands B1,B2,B3,B4,B5 --tile 128 "
    "--overlap 4 --output-band landcover:uint8 --classes 1=developed,2=agriculture,3=herbaceous,4=shrubland,5=forest,"
    "6=water,7=sediment -o out/landcover.tif --overwrite"
)
DEMO_PREDICT_HALO = DEMO_PREDICT.replace(" -o out/", " --mask-halo -o out/")
PATCHES = (
    "tilecast export patches scene.tif --labels polygons.gpkg --label-field class --patch 128 --per-class 500 --seed 1 "
    "--splits train=0.8,val=0.1,test=0.1 -o patches/"
)
FEWER_PATCHES = ("--per-class 500", "--per-class 5")  # 128 x 128 x 5 float patches: 3,500 of them take ~30 s
ENDPOINT = ("127.0.0.1:8500", "127.0.0.1:{port}")
FEATURES_ELLIPSIS = (
    " ... ",
    " --sample b3=lsat7_2000_30.tif --sample b4=lsat7_2000_40.tif --sample b5=lsat7_2000_50.tif "
    "--sample b7=lsat7_2000_70.tif ",
)

PARQUET_INDEX = (
    "needs FeatureBatch.to_arrow (features/io.py) to keep the row count when no property column is left (here the "
    "input's `class` column is replaced by the output `class`): pyarrow's ArrowInvalid today"
)

# ---- maps, vectors and model formats (docs/view.md, docs/vectors.md, docs/formats.md) -----------------------------

README_VIEW = (
    "tilecast view out/landsat_stack.tif --model models/landsat_landcover.onnx --bands B1,B2,B3,B4,B5 --tile 128 "
    "--overlap 4 --output-band landcover:uint8 --classes 1=developed,2=agriculture,3=herbaceous,4=shrubland,5=forest,"
    "6=water,7=sediment --rgb B3,B2,B1"
)
MAR = "torch-model-archiver --model-name landcover --version 1.0 --serialized-file model.pt --handler image_segmenter"
TORCH_PRELUDE = "import torch\n\ntorch.manual_seed(0)\nmodel = torch.nn.Conv2d(3, 2, 1)  # a scriptable network\n"
KERNEL = np.array([[0.5, -1.0], [0.25, 2.0], [-0.75, 1.0]], np.float32)
"""The 1x1 Keras convolution of docs/formats.md's TFLite example: 3 bands in, 2 out."""
KERAS_PRELUDE = (
    "import numpy as np\nimport tensorflow as tf\n\n"
    "keras_model = tf.keras.Sequential([tf.keras.Input((256, 256, 3), name='image'), "
    "tf.keras.layers.Conv2D(2, 1, use_bias=False)])\n"
    f"keras_model.layers[0].set_weights([np.array({KERNEL.tolist()}, np.float32).reshape(1, 1, 3, 2)])\n"
)
AI_PLATFORM_LOCAL = (
    'url="http://127.0.0.1:{port}/v1/models/landcover:predict", token="t")\n'
    'model.predict_image("landsat.tif").to_geotiff("remote.tif")'
)
SQUARES = {"side": 8, "tile": 64, "overlap": 12, "res": 0.5, "x0": 500000.0, "y0": 4600000.0}
"""docs/vectors.md's ortho.tif: 8 px squares of value 255 on a 0 background; the detectors see 64 + 2 x 12 px."""


def _documented(doc: str, key: str) -> str:
    return next(b.text for d, k, b in doc_items() if (d, k) == (doc, key))


def _exec_block(doc: str, key: str, prelude: str) -> Callable[[Path], None]:
    """A setup step that runs a documented Python block (with its prelude) in the workspace."""

    def step(ws: Path) -> None:
        _run_python(prelude + _documented(doc, key), ws, f"{doc}: {key}")

    return step


TORCH_SCRIPT = _exec_block("docs/formats.md", "import torch", TORCH_PRELUDE)
_keras_to_tflite = _exec_block("docs/formats.md", "from pathlib import Path", KERAS_PRELUDE)


def _archiver() -> list[str] | None:
    """``torch-model-archiver`` (dev dependency group), as tests/test_formats_torchserve.py finds it."""
    import importlib.util

    if exe := shutil.which("torch-model-archiver"):
        return [exe]
    if importlib.util.find_spec("model_archiver") is not None:
        return [sys.executable, "-m", "model_archiver.model_packaging"]
    return None


def _run_archiver(words: list[str], ws: Path) -> tuple[int, str]:
    exe = _archiver()
    if exe is None:
        pytest.skip("torch-model-archiver is not installed (pip install torch-model-archiver; dev dependency group)")
    proc = subprocess.run([*exe, *words[1:]], cwd=ws, env=_env(), capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def _opens_zip(name: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        import zipfile

        with zipfile.ZipFile(ws / name) as z:
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        assert manifest["model"]["handler"] == "image_segmenter", manifest

    return check


def _rgb() -> np.ndarray:
    with rasterio.open("scene.tif") as src:
        return src.read().astype(np.float32)


def _mar_scores(ws: Path, out: str) -> None:
    """scores.tif is the scripted network itself applied to the scene after the image handler's ToTensor and
    ImageNet Normalize, computed here with torch."""
    import torch

    x = _rgb() / 255
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    x = (x - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        expected = torch.jit.load(str(ws / "model.pt"))(torch.from_numpy(x[None])).numpy()[0]
    with rasterio.open(ws / "scores.tif") as dst:
        got = dst.read()
    assert got.shape == expected.shape == (2, *x.shape[1:])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _tflite_matches_numpy(ws: Path, out: str) -> None:
    """The converted model, loaded as documented, predicts the 1x1 convolution computed here with numpy."""
    from tilecast import Model

    model = Model.load(ws / "landcover.tflite", input_tile_size=256)
    got = model.predict_image(ws / "scene.tif").to_numpy()
    expected = np.einsum("io,ihw->ohw", KERNEL, _rgb())
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=1e-5, atol=1e-3)


def _ai_platform_equals_local(ws: Path, out: str) -> None:
    """The AI Platform call, sent to the local server, equals the same ONNX model run here with the same tiles."""
    from tilecast import Model

    local = Model.from_onnx(
        ROOT / "models/landsat_landcover.onnx", input_tile_size=64, output_bands=["landcover:uint8"]
    )
    local.predict_image(ws / "landsat.tif").to_geotiff(ws / "local.tif")
    with rasterio.open(ws / "remote.tif") as remote, rasterio.open(ws / "local.tif") as here:
        got, want = remote.read(masked=True), here.read(masked=True)
    assert got.count() > 0.8 * got.size
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
    np.testing.assert_array_equal(got.compressed(), want.compressed())


def _read_vectors(path: Path):
    """GeoParquet through pyarrow (this GDAL's Parquet driver needs libduckdb), the rest through pyogrio."""
    import geopandas
    import pyogrio

    return geopandas.read_parquet(path) if path.suffix == ".parquet" else pyogrio.read_dataframe(path)


def _squares_found(path: Path, ws: Path, boxes: bool) -> None:
    """One feature per square of ortho.tif, whose bounds are the square's (computed from the raster itself)."""
    from scipy import ndimage

    with rasterio.open(ws / "ortho.tif") as src:
        img, transform = src.read(1), src.transform
    labels, n = ndimage.label(img > 0)
    want = []
    for rows, cols in ndimage.find_objects(labels):
        x0, y1 = transform * (cols.start, rows.start)
        x1, y0 = transform * (cols.stop, rows.stop)
        want.append((x0, y0, x1, y1))
    gdf = _read_vectors(path)
    assert len(gdf) == n, f"{len(gdf)} features for {n} squares"
    got = np.array(sorted(map(tuple, gdf.geometry.bounds.values)))
    np.testing.assert_allclose(got, np.array(sorted(want)), atol=1e-6)
    side = SQUARES["side"] * SQUARES["res"]
    if boxes:
        assert set(gdf.class_name) == {"tree"} and (gdf.score > 0.5).all()
    else:  # instance polygons: the masks, exact (a square here), with their area
        np.testing.assert_allclose(gdf.geometry.area, side * side)
        np.testing.assert_allclose(gdf["area"], side * side)


def _polygons_cover_classes(path: Path, raster: Path) -> None:
    """Per class, the polygons' total area is the class raster's pixel count times the pixel area."""
    import pyogrio

    gdf = pyogrio.read_dataframe(path)
    with rasterio.open(raster) as src:
        band = src.read(1, masked=True)
        pixel = abs(src.transform.a * src.transform.e)
    values, counts = np.unique(band.compressed(), return_counts=True)
    assert len(values) > 1 and len(gdf) > len(values)
    area = gdf.geometry.area.groupby(gdf["class_id"]).sum()
    assert sorted(area.index) == sorted(values.tolist()), (sorted(area.index), values)
    for v, c in zip(values, counts, strict=True):
        assert area[v] == pytest.approx(c * pixel, rel=1e-9), v
    assert gdf.geometry.is_valid.all()


def _vectors_block(ws: Path, out: str) -> None:
    _squares_found(ws / "trees.parquet", ws, boxes=True)
    import pyogrio

    gdf = pyogrio.read_dataframe(ws / "landcover.gpkg")
    assert len(gdf) > 0 and (gdf.geometry.area >= 500).all(), "min_area=500 applied"


def _detector_fragment_parses(text: str, ws: Path) -> None:
    """The card fragment is valid JSON that tilecast's detector settings accept, with the values it states."""
    from tilecast.vectors.metadata import describe_detector, detector_spec

    fragment = json.loads("{" + text + "}")["tilecast:detector"]
    spec = detector_spec(card_properties={"tilecast:detector": fragment})
    for key in ("det_type", "box_format", "objectness", "confidence", "iou", "merge_threshold", "match"):
        assert getattr(spec, key) == fragment[key], (key, getattr(spec, key), fragment[key])
    assert spec.classes == (0,) and dict(spec.class_names) == {0: "car"}
    assert describe_detector(spec)["det_type"].startswith("generic")


def _detector_assets(a: Path) -> None:
    """ortho.tif (squares on a 0.5 m grid), trees.onnx (a box detector) and buildings-seg.onnx (instance masks),
    both analytic, with Deepness/GeoDeep metadata so that the documented commands need no flags."""
    from test_vectors_models import scattered_corners, square_detector, squares_image

    s = SQUARES
    corners = scattered_corners(200, 240, s["side"], s["tile"], 40)
    img = np.repeat(squares_image(200, 240, corners, s["side"], 255, "uint8")[None], 3, axis=0)  # grey RGB
    profile = {"crs": "EPSG:32633", "transform": rasterio.Affine(s["res"], 0, s["x0"], 0, -s["res"], s["y0"]),
               "width": 240, "height": 200}
    _write_like(a / "ortho.tif", img, profile, ["red", "green", "blue"])
    view = s["tile"] + 2 * s["overlap"]
    meta = {"model_type": "Detector", "tiles_size": str(view), "tiles_overlap": str(200 * s["overlap"] / view),
            "class_names": '{"0": "tree"}', "det_conf": "0.5"}
    _rgb_input(square_detector(a / "trees.onnx", s["side"], view, metadata={**meta, "det_type": "yolo_v8"}))
    _square_segmenter(a / "buildings-seg.onnx", s["side"], view, {**meta, "det_type": "yolo_seg"})
    _rgb_input(a / "buildings-seg.onnx")


def _rgb_input(path: str | Path) -> None:
    """Deepness/GeoDeep models take RGB: the analytic detector sees the mean of the three bands."""
    import onnx
    from onnx import helper

    m = onnx.load(str(path))
    g = m.graph
    for node in g.node:
        node.input[:] = ["gray" if i == "image" else i for i in node.input]
    g.node.insert(0, helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1))
    g.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    onnx.save(m, str(path))


def _square_segmenter(path: Path, side: int, view: int, metadata: dict) -> None:
    """The square detector as a YOLO-seg head: one mask coefficient (10) and one prototype (pixel / 255 - 0.5), so
    each mask is sigmoid(10 x prototype) > 0.5 exactly on the square."""
    import onnx
    from onnx import helper, numpy_helper

    from test_vectors_models import square_detector

    square_detector(path, side, view, metadata=metadata)
    m = onnx.load(str(path))
    g = m.graph
    cat = next(n for n in g.node if n.op_type == "Concat")
    g.initializer.extend([numpy_helper.from_array(np.array([10.0], np.float32), "ten"),
                          numpy_helper.from_array(np.array([0.5], np.float32), "half")])
    g.node.insert(list(g.node).index(cat), helper.make_node("Add", ["z", "ten"], ["coef"]))
    cat.input.append("coef")
    g.node.extend([helper.make_node("Sub", ["b", "half"], ["output1"])])
    g.output.append(helper.make_tensor_value_info("output1", onnx.TensorProto.FLOAT, None))
    onnx.save(m, str(path))


def _view_and_format_assets(a: Path, data: np.ndarray, profile: dict) -> None:
    """The class map docs view and polygonize (the demo's predict command), an NDVI raster and an RGB scene."""
    cmd = DEMO_PREDICT.replace("out/landsat_stack.tif", str(a / "stack6.tif"))
    cmd = cmd.replace("models/landsat_landcover.onnx", str(a / "landsat.onnx"))
    code, out = _tilecast([*shlex.split(cmd.replace("out/landcover.tif", str(a / "classes.tif")))[1:], "-q"])
    assert code == 0, out
    red, nir = data[2].astype(np.float32), data[3].astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = np.where((red > 0) & (nir > 0), (nir - red) / (nir + red), np.nan).astype(np.float32)
    _write_like(a / "ndvi.tif", ndvi[None], {**profile, "nodata": np.nan}, ["ndvi"])
    rgb = ((np.indices((3, 300, 300)).sum(axis=0) * 7) % 256).astype(np.uint8)
    _write_like(a / "rgb.tif", rgb, {**profile, "width": 300, "height": 300, "nodata": None}, ["red", "green", "blue"])


# ---- tilecast view: a short-lived server on a free port ----------------------------------------------------------


def _view(words: list[str], ws: Path) -> tuple[int, str]:
    """``tilecast view ...`` as documented, with ``--no-browser`` on a free port: its TileJSON, the native-zoom tile
    at the centre (a 256 px PNG with pixels) and the values there (after the tile, so the block is computed)."""
    import httpx
    import morecantile
    from PIL import Image

    port = _free_port()
    args = [*words[1:], "--no-browser", "--no-cache", "--port", str(port), "-q"]
    cmd = [sys.executable, "-c", "from tilecast.cli import main; main(prog_name='tilecast')", *args]
    proc = subprocess.Popen(cmd, cwd=ws, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                return proc.returncode, proc.stdout.read().decode()
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(base + "tilejson.json", timeout=5)
                if r.status_code == 200:
                    break
            assert time.monotonic() < deadline, "tilecast view did not answer in 90 s"
            time.sleep(0.2)
        tj = r.json()
        lon, lat = tj["center"][:2]
        t = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, tj["maxzoom"] - 4)  # the native zoom
        r = httpx.get(base + f"tiles/{t.z}/{t.x}/{t.y}.png", timeout=300)
        assert r.status_code == 200, r.text
        import io

        png = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
        assert png.shape == (256, 256, 4) and (png[..., 3] == 255).any(), "the tile shows the layer"
        point = httpx.get(base + "point", params={"lon": lon, "lat": lat}, timeout=60).json()
    finally:
        proc.stdout.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0, json.dumps({"tilejson": tj, "point": point, "lonlat": [lon, lat]})


def _pixel(path: Path, lonlat: list[float]) -> tuple[int, int]:
    from rasterio.warp import transform as warp

    with rasterio.open(path) as src:
        (x,), (y,) = warp("EPSG:4326", src.crs, [lonlat[0]], [lonlat[1]])
        return src.index(x, y)


def _view_shows_raster(ws: Path, out: str, name: str = "out/landcover.tif") -> None:
    """The map's value at the centre is the raster's pixel there; its bounds are the raster's."""
    from rasterio.warp import transform_bounds

    res = json.loads(out)
    with rasterio.open(ws / name) as src:
        row, col = _pixel(ws / name, res["lonlat"])
        want = src.read(1, window=((row, row + 1), (col, col + 1)))[0, 0]
        bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    np.testing.assert_allclose(res["tilejson"]["bounds"], bounds, atol=1e-6)
    (layer,) = [v for v in res["point"].values() if isinstance(v, dict) and "values" in v]
    assert layer["values"][0] == pytest.approx(float(want), rel=1e-6), (layer, want)


def _view_point_is_model(ws: Path, out: str, scene: str, model: str) -> None:
    """The map's prediction at the centre is the ONNX model run here on the whole scene (its field of view, 7 px,
    is inside every documented overlap)."""
    import onnxruntime as ort

    res = json.loads(out)
    with rasterio.open(ws / scene) as src:
        x = src.read(list(range(1, 6)), masked=True).filled(0).astype(np.float32)[None]
    sess = ort.InferenceSession(str(ws / model), providers=["CPUExecutionProvider"])
    expected = sess.run(["landcover"], {"image": x})[0][0]
    row, col = _pixel(ws / scene, res["lonlat"])
    assert res["point"]["prediction"]["values"] == [int(expected[row, col])], res["point"]


CASES: dict[tuple[str, str], Run | NotRunnable | Text] = {
    # README.md
    ("README.md", "make demo"): MAKE,
    ("README.md", "make test"): MAKE,
    ("README.md", "import tilecast"): Run(),
    ("README.md", "ndvi = tilecast.Model.from_callable("): Run(
        python_prelude="import tilecast\n",
        subs=(('bands=["red", "nir"]', 'bands=["B3", "B4"]'),),  # Landsat 7's red and near infrared
        check=_ndvi,
    ),
    ("README.md", "tilecast info scene.tif"): Run(),
    ("README.md", "tilecast info unet.onnx"): Run(),
    (
        "README.md",
        "tilecast predict scene.tif --model unet.onnx --bands B1,B2,B3,B4,B5 --tile 256 --overlap 16 "
        "--output-band landcover:uint8 -o landcover.tif",
    ): Run(check=_landcover_matches_model),
    (
        "README.md",
        "tilecast predict scene.tif --model unet.onnx --bands B1,B2,B3,B4,B5 --tile 256 --overlap 16 --blend cosine "
        "--output-band probabilities:float32:1 --bounds 500000 4590000 510000 4600000 -o prob.tif",
    ): Run(subs=(SAMPLE_BOUNDS,), check=_probabilities_7_bands),
    (
        "README.md",
        "tilecast predict scene.tif --model unet.onnx --bands B1,B2,B3,B4,B5 --tile 256 --crs EPSG:3035 "
        "--resolution 10 10 --fix-input-proj --resampling bilinear -o warped.tif",
    ): Run(subs=(("EPSG:3035 --resolution 10 10", "EPSG:32617 --resolution 30 30"),), check=_opens("warped.tif")),
    (
        "README.md",
        "rio tilecast-predict scene.tif --model unet.onnx --bands B1,B2,B3,B4,B5 --tile 256 --overlap 16 "
        "--output-band landcover:uint8 -o landcover.tif",
    ): Run(
        check=_landcover_matches_model,
    ),
    (
        "README.md",
        "source ──read windows──▶ plan ──tiles──▶ runner ──batches──▶ runtime ──outputs──▶ assembler ──strips──▶ sink",
    ): Text("diagram"),
    ("README.md", "src/tilecast/"): Text("folder layout"),
    (
        "README.md",
        "TileSizeError: the model's input image: ?x6x64x64 float32 takes 64 x 64 pixels, but tile (64, 64) "
        "with overlap",
    ): Text("an error message", check=lambda text, ws: _check_tile_size_text(text, ws)),
    ("README.md", DEMO_PREDICT_HALO): Run(
        check=lambda ws, out: _landcover_matches_model(ws, out, "out/landcover.tif", "out/landsat_stack.tif")
    ),
    # docs/benchmarks.md
    ("docs/benchmarks.md", ".venv/bin/python bench/bench_predict.py --big"): BENCH,
    ("docs/benchmarks.md", "$ PYTHONPATH=src .venv/bin/python bench/bench_autotile.py --size 3072 --repeats 3"): BENCH,
    # docs/dask.md
    ("docs/dask.md", "pip install 'tilecast[dask]'"): PIP,
    ("docs/dask.md", "tilecast predict scene.tif --model landcover.onnx -o out.tif --engine dask"): Run(
        subs=(("--engine dask", "--engine dask --workers 1"),),
        check=_same_as_local,
    ),
    (
        "docs/dask.md",
        "tilecast predict scene.tif --model landcover.onnx -o out.tif --engine dask --workers 4",
    ): NotRunnable("four worker processes on a 2-core test machine; the same run with --workers 1 runs above"),
    ("docs/dask.md", "tilecast predict 'scenes/*.tif' --model landcover.onnx -o out.tif --engine dask"): Run(
        subs=(("--engine dask", "--engine dask --workers 1"),),
        check=_same_as_local,
    ),
    ("docs/dask.md", "tilecast predict a.tif b.tif c.tif --model landcover.onnx -o out.tif"): Run(check=_same_as_local),
    (
        "docs/dask.md",
        "tilecast predict items.json --model landcover.onnx -o out.tif --bands B04,B03,B02,B08 "
        "--engine dask --scheduler tcp://10.0.0.5:8786",
    ): NotRunnable(
        "a remote Dask scheduler (tcp://10.0.0.5) and Sentinel-2 STAC items; tests/test_mosaic.py covers STAC items"
    ),
    ("docs/dask.md", "tilecast predict scene.tif --model m.onnx -o out.tif --resume"): Run(check=_same_as_local),
    (
        "docs/dask.md",
        "tilecast predict scene.tif --model m.onnx -o out.tif --engine dask --performance-report r.html",
    ): Run(subs=(("--engine dask", "--engine dask --workers 1"),), check=_same_as_local),
    ("docs/dask.md", "from dask.distributed import Client"): Run(
        subs=(
            ("Client()", "Client(n_workers=1, threads_per_worker=2, dashboard_address=':0')"),
            ('"scene.vrt"', '"scene.tif"'),
        ),  # a VRT of the scene: VRT inputs are covered by tests/test_mosaic.py
        check=_same_as_local,
    ),
    ("docs/dask.md", "from tilecast.sources.mosaic import MosaicSource"): Run(
        python_prelude='import tilecast\nmodel = tilecast.Model.load("landcover.onnx")\n',
        subs=(('crs="EPSG:32633", resolution=10', 'crs="EPSG:32119", resolution=28.5'),),
    ),
    # docs/demo.md
    ("docs/demo.md", "make demo"): MAKE,
    ("docs/demo.md", "make test"): MAKE,
    ("docs/demo.md", DEMO_PREDICT_HALO): Run(
        check=lambda ws, out: _landcover_matches_model(ws, out, "out/landcover.tif", "out/landsat_stack.tif")
    ),
    # docs/gpu.md
    ("docs/gpu.md", "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"): PIP,
    (
        "docs/gpu.md",
        "tilecast predict scene.tif --model unet.onnx --tile 512 --overlap 16 --device cuda:0,1 --precision fp16 "
        "-o out.tif -v",
    ): NotRunnable("needs two GPUs and onnxruntime-gpu; tests/test_gpu_paths.py runs these paths on CPU stand-ins"),
    ("docs/gpu.md", "import tilecast"): NotRunnable("needs GPUs; tests/test_gpu_paths.py runs the loaders on CPU"),
    ("docs/gpu.md", "python bench/gpu_check.py"): BENCH,
    ("docs/gpu.md", "python bench/gpu_check.py --quick"): BENCH,
    # docs/endpoints.md
    ("docs/endpoints.md", "pip install 'tilecast[server]'"): PIP,
    ("docs/endpoints.md", "pip install 'tilecast[tf]'"): PIP,
    ("docs/endpoints.md", "tilecast serve unet.onnx --name landcover --port 8500"): Run(),
    ("docs/endpoints.md", "tilecast serve models/ --grpc-port 8501 --token-env SERVE_TOKEN"): Run(),
    (
        "docs/endpoints.md",
        "tilecast serve a=unet.onnx --model b=prepared_savedmodel/ --max-batch 16 --batch-timeout-ms 5",
    ): NotRunnable("needs a SavedModel wrapped by `tilecast prepare` (TensorFlow); tests/test_prepare.py serves one"),
    (
        "docs/endpoints.md",
        "tilecast predict scene.tif --endpoint http://127.0.0.1:8500/v2/models/landcover --tile 256 "
        "--overlap 16 --max-payload-bytes 4000000 -o out.tif",
    ): Run(subs=(ENDPOINT,), check=_same_as_local),
    (
        "docs/endpoints.md",
        "tilecast predict scene.tif --endpoint projects/p/locations/us-central1/endpoints/123 "
        "--payload-format SERIALIZED_TF_TENSORS --tile 64 --output-band landcover:uint8 --token-env TOKEN -o out.tif",
    ): NotRunnable(
        "a Vertex AI project and Google credentials; tests/test_endpoint.py runs the vertex protocol "
        "against tilecast serve"
    ),
    (
        "docs/endpoints.md",
        'model = tilecast.Model.from_endpoint("http://127.0.0.1:8500/v1/models/landcover:predict",',
    ): Run(
        python_prelude="import tilecast\n",
        # the Vertex AI line needs a Google Cloud project (and its `...` stands for the arguments above)
        subs=(
            ENDPOINT,
            (
                'model = tilecast.Model.from_vertex_ai("projects/p/locations/us-central1/endpoints/123", '
                "input_tile_size=64, ...)\n",
                "",
            ),
        ),
        check=_same_as_local,
    ),
    ("docs/endpoints.md", "from tilecast.remote import EndpointOptions"): Run(
        python_prelude="import tilecast\n", subs=(ENDPOINT,)
    ),
    (
        "docs/endpoints.md",
        "tilecast prepare --source-dir unet/ --dest-dir unet_ee/ --input "
        '\'{"serving_default_image:0": "array"}\' --output \'{"StatefulPartitionedCall:0": "landcover"}\'',
    ): NotRunnable("needs a TensorFlow SavedModel `unet/` (TensorFlow); tests/test_prepare.py runs prepare"),
    ("docs/endpoints.md", ".venv/bin/python bench/bench_serve.py --size 4096 --repeats 2"): BENCH,
    # docs/features.md
    (
        "docs/features.md",
        "tilecast predict-features parcels.gpkg --model crop_type.onnx --input-property "
        "ndvi_mean,area --output-property crop:int32 -o parcels_pred.gpkg",
    ): Run(check=_features("parcels_pred.gpkg", ["crop", "ndvi_mean", "area"], 28)),
    (
        "docs/features.md",
        "tilecast predict-features fields.parquet --model classifier.onnx --sample scene.tif --stats "
        "mean,std --output-property class=label:uint8 -o out.parquet",
    ): Run(),
    (
        "docs/features.md",
        "tilecast predict-features landsat96_polygons.shp --model landcover.onnx --sample "
        "b1=lsat7_2000_10.tif --sample b2=lsat7_2000_20.tif ... --stats mean --input-property "
        "b1_mean,b2_mean,b3_mean,b4_mean,b5_mean,b7_mean --output-property landcover=label:int32 --output-property "
        "probs=probabilities:float32:1 --nulls skip -o landcover.gpkg",
    ): Run(
        subs=(FEATURES_ELLIPSIS,), check=_features("landcover.gpkg", ["landcover", "probs_0", "probs_6", "label"], 34)
    ),
    (
        "docs/features.md",
        "tilecast predict-features points.fgb --endpoint http://127.0.0.1:8500/v1/models/clf:predict "
        "--payload-format RAW_JSON --input-property f0,f1,f2 --output-property cls=label:int32 -o scored.fgb",
    ): Run(subs=(ENDPOINT,), check=_features("scored.fgb", ["cls", "f0"], 50)),
    ("docs/features.md", "import geopandas"): Run(
        # the block's second call reuses `model` (the 2-property crop model) for 10 zonal statistics
        subs=(("predict_features_file(model,", 'predict_features_file(Model.from_onnx("classifier.onnx"),'),),
    ),
    ("docs/features.md", ".venv/bin/python bench/bench_features.py --repeats 5"): BENCH,
    (
        "docs/features.md",
        "1,000,000 point features x 10 properties, RandomForest(20 trees, depth 8) via skl2onnx; 2 "
        "CPUs, load average 6.8; median of 5",
    ): Text("measured output"),
    (
        "docs/features.md",
        "a  ORT session.run, one call on in-memory arrays       0.55    1,809,948   0.93     261 MiB",
    ): Text("measured output"),
    (
        "docs/features.md",
        "a  ORT session.run, one call on in-memory arrays       0.61    1,639,261   0.86     259 MiB",
    ): Text("measured output"),
    # docs/install.md
    ("docs/install.md", "pip install 'tilecast[server,features]'"): PIP,
    ("docs/install.md", "make demo"): MAKE,
    ("docs/install.md", "make test"): MAKE,
    ("docs/install.md", "make test-fast"): MAKE,
    ("docs/install.md", "make data"): MAKE,
    ("docs/install.md", "python -m tilecast.datasets fetch"): Run(),  # a no-op once fetched: no network
    ("docs/install.md", "python -m tilecast.datasets path"): Run(),
    ("docs/install.md", 'eval "$(_TILECAST_COMPLETE=bash_source tilecast)"'): Run(),
    ("docs/install.md", 'eval "$(_TILECAST_COMPLETE=zsh_source tilecast)"'): Run(),
    ("docs/install.md", "_TILECAST_COMPLETE=fish_source tilecast | source"): NotRunnable(
        "a fish command (`| source`); tests/test_packaging.py checks the fish script click generates"
    ),
    ("docs/install.md", "docker build -t tilecast-serve ."): NotRunnable(
        "needs a container tool; tests/test_packaging.py lints the Dockerfile"
    ),
    ("docs/install.md", "docker run --rm -p 8080:8080 tilecast-serve"): NotRunnable("needs a container tool"),
    ("docs/install.md", "curl localhost:8080/health"): NotRunnable("talks to the container started above"),
    # docs/model-cards.md
    ("docs/model-cards.md", "tilecast predict scene.tif --model landcover.onnx -o landcover.tif"): Run(
        setup=(CARD,), check=_card_argmax
    ),
    ("docs/model-cards.md", CARD): Run(),
    ("docs/model-cards.md", "tilecast info landcover.onnx"): Run(setup=(CARD,)),
    ("docs/model-cards.md", "tilecast info landcover.onnx --json"): Run(setup=(CARD,)),
    ("docs/model-cards.md", "from tilecast import Model"): Run(setup=(CARD,), check=_card_argmax),
    (
        "docs/model-cards.md",
        "from tilecast.card import CardFields, InputFields, ModelFields, TileFields, build_card, write_card",
    ): Run(),
    # docs/training-data.md
    (
        "docs/training-data.md",
        "tilecast export samples scene.tif --labels points.gpkg --label-field class -o samples.tfrecord.gz",
    ): Run(),
    ("docs/training-data.md", PATCHES): Run(
        subs=(FEWER_PATCHES,),
        check=_split_warning,
    ),
    ("docs/training-data.md", EXPORT_IMAGE): Run(),
    (
        "docs/training-data.md",
        "tilecast import predictions/*.tfrecord.gz --mixer tiles/scene-mixer.json -o predicted.tif",
    ): Run(setup=(EXPORT_IMAGE, _copy_patches_as_predictions), check=_import_equals_scene),
    (
        "docs/training-data.md",
        "from tilecast.export import export_samples, export_patches, export_image, import_predictions",
    ): Run(
        setup=(EXPORT_IMAGE, _copy_patches_as_predictions, lambda ws: shutil.rmtree(ws / "tiles")),
        subs=(("per_class=500", "per_class=5"),),
        check=_import_equals_scene,
    ),
    ("docs/training-data.md", "import numpy as np"): Run(setup=(PATCHES.replace(*FEWER_PATCHES),)),
    (
        "docs/training-data.md",
        "python examples/workflow_landsat.py --out models/landsat_landcover.onnx --workdir out/workflow",
    ): NotRunnable(
        "trains the demo model with PyTorch (rewrites models/); the --small run below is tests/test_workflow.py (slow)"
    ),
    ("docs/training-data.md", "python examples/workflow_landsat.py --out /tmp/m.onnx --small"): NotRunnable(
        "tests/test_workflow.py runs exactly this (marked slow: it trains with PyTorch)"
    ),
    ("docs/training-data.md", "python bench/bench_export.py"): BENCH,
    ("docs/training-data.md", "python bench/bench_export.py --quick"): BENCH,
    # README.md: See it on a map
    ("README.md", "tilecast view out/landcover.tif"): Run(check=lambda ws, out: _view_shows_raster(ws, out)),
    ("README.md", README_VIEW): Run(
        check=lambda ws, out: _view_point_is_model(ws, out, "out/landsat_stack.tif", "models/landsat_landcover.onnx")
    ),
    # docs/endpoints.md
    (
        "docs/endpoints.md",
        "400 then 2000 well-formed v2 requests (64px x 4 bands), 200 in flight; 1100 idle and 200 slow-header "
        "sockets; 5 rounds of malformed and amplification requests; 2 cores, load 10.5",
    ): Text("measured output"),
    # docs/formats.md
    ("docs/formats.md", "import torch"): Run(python_prelude=TORCH_PRELUDE),
    ("docs/formats.md", MAR): Run(setup=(TORCH_SCRIPT,), check=_opens_zip("landcover.mar")),
    ("docs/formats.md", "from tilecast import Model"): Run(setup=(TORCH_SCRIPT, MAR), check=_mar_scores),
    ("docs/formats.md", "from pathlib import Path"): Run(python_prelude=KERAS_PRELUDE, check=_tflite_matches_numpy),
    ("docs/formats.md", 'model = Model.load("landcover.tflite", input_tile_size=256)'): Run(
        setup=(_keras_to_tflite,),
        python_prelude="from tilecast import Model\n",
        check=_tflite_matches_numpy,
    ),
    (
        "docs/formats.md",
        'model = Model.from_ai_platform_predictor(project_id="my-project", model_name="landcover", version="v3",',
    ): Run(
        python_prelude="from tilecast import Model\n",
        # a Google Cloud project in the documented form; here the same call reaches a local `tilecast serve`
        subs=(('output_bands=["landcover:uint8"])', 'output_bands=["landcover:uint8"], ' + AI_PLATFORM_LOCAL),),
        check=_ai_platform_equals_local,
    ),
    # docs/vectors.md
    ("docs/vectors.md", "tilecast predict ortho.tif --model trees.onnx -o trees.gpkg"): Run(
        check=lambda ws, out: _squares_found(ws / "trees.gpkg", ws, boxes=True)
    ),
    ("docs/vectors.md", "tilecast predict ortho.tif --model buildings-seg.onnx -o buildings.parquet"): Run(
        check=lambda ws, out: _squares_found(ws / "buildings.parquet", ws, boxes=False)
    ),
    ("docs/vectors.md", "tilecast predict scene.tif --model landcover.onnx -o landcover.fgb"): Run(
        check=lambda ws, out: _polygons_cover_classes(ws / "landcover.fgb", ws / "landcover.tif")
    ),
    ("docs/vectors.md", "tilecast polygonize landcover.tif -o landcover.gpkg"): Run(
        check=lambda ws, out: _polygons_cover_classes(ws / "landcover.gpkg", ws / "landcover.tif")
    ),
    ("docs/vectors.md", "from tilecast.vectors import predict_vectors, to_geodataframe, polygonize_raster"): Run(
        python_prelude='from tilecast import Model\nmodel = Model.load("trees.onnx")\n',
        check=_vectors_block,
    ),
    (
        "docs/vectors.md",
        '"tilecast:detector": {"det_type": "generic", "box_format": "xyxy", "objectness": false,',
    ): Text("a model card fragment", check=_detector_fragment_parses),
    ("docs/vectors.md", "python bench/bench_vectors.py --size 20000 --objects 1000000"): BENCH,
    ("docs/vectors.md", "python bench/bench_vectors.py --size 5000 --objects 62500"): BENCH,
    ("docs/vectors.md", "bench_vectors: 20000 x 20000 px, tile 512 + 8 overlap, 6-px squares, median of 3"): Text(
        "measured output"
    ),
    ("docs/vectors.md", "variant                            wall s    cpu s    Mpx/s  peak RSS MiB"): Text(
        "measured output"
    ),
    # docs/view.md
    ("docs/view.md", "tilecast view scene.tif --model landcover.onnx"): Run(
        check=lambda ws, out: _view_point_is_model(ws, out, "scene.tif", "landcover.onnx")
    ),
    (
        "docs/view.md",
        "tilecast view scene.tif --model unet.onnx --tile 256 --overlap 16 --output-band landcover:uint8 "
        "--classes 1=water,2=forest,3=crops --rgb 3,2,1",
    ): Run(check=lambda ws, out: _view_point_is_model(ws, out, "scene.tif", "unet.onnx")),
    ("docs/view.md", "tilecast view out/landcover.tif"): Run(check=lambda ws, out: _view_shows_raster(ws, out)),
    ("docs/view.md", "tilecast view ndvi.tif --colormap rdylgn --rescale -0.2,0.9"): Run(
        check=lambda ws, out: _view_shows_raster(ws, out, "ndvi.tif")
    ),
    ("docs/view.md", 'result = model.predict_image("scene.tif")'): Run(
        python_prelude='import tilecast\nmodel = tilecast.Model.load("landcover.onnx")\n'
    ),
    (
        "docs/view.md",
        "browser ──XYZ tile z/x/y──▶ tile layer ──blocks under the tile──▶ block runner ──chunk of whole tiles──▶ "
        "model",
    ): Text("diagram"),
    ("docs/view.md", ".venv/bin/python bench/bench_view.py"): BENCH,
    ("docs/view.md", ".venv/bin/python bench/bench_view.py --size 1024 --repeats 1"): BENCH,
}


def _check_tile_size_text(text: str, ws: Path) -> None:
    """The README's sample message is what tilecast says today for such a model (and its advice is valid syntax)."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 6, 64, 64])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(ws / "fixed.onnx"))
    args = "predict scene.tif --model fixed.onnx --tile 64,64 --overlap 8,8 --output-band out:float32:1 -o x.tif"
    code, out = _tilecast(shlex.split(args))
    assert code != 0
    documented = " ".join(text.split())
    said = " ".join(out.split()).removeprefix("Error: ")
    assert said == documented, f"the README's message is not tilecast's:\n{said}"
    hint = documented.rsplit("use ", 1)[1].replace(" with ", " ")
    assert (
        _tilecast(
            [
                "predict",
                "scene.tif",
                "--model",
                "fixed.onnx",
                *shlex.split(hint),
                "--output-band",
                "out:float32:1",
                "-o",
                "y.tif",
                "-q",
            ]
        )[0]
        == 0
    ), f"the advice {hint!r} does not run"


# ---- demo data ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _tilecast(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """``tilecast ARGS`` in this process (exit code, stdout + stderr)."""
    from tilecast.cli import main

    with warnings.catch_warnings():  # shown on stderr, as in a user's shell, not raised by the "error" filter
        warnings.simplefilter("always", TilecastWarning)
        warnings.showwarning = _show_on_stderr
        result = CliRunner().invoke(main, args, env=env, catch_exceptions=True)
    out = result.output
    if result.exception and not isinstance(result.exception, SystemExit):
        out += f"\n{type(result.exception).__name__}: {result.exception}"
    return result.exit_code, out


def _write_like(path: Path, data: np.ndarray, profile: dict, names: list[str]) -> None:
    profile = {**profile, "count": data.shape[0], "dtype": str(data.dtype), "driver": "GTiff"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(names)


def _onnx_scores(path: Path, bands: int, classes: int) -> None:
    """A 1x1 network: NCHW ``bands`` -> ``classes`` scores (fixed weights), any tile size."""
    from onnx import TensorProto, helper, numpy_helper, save

    w = (np.arange(bands * classes, dtype=np.float32).reshape(classes, bands, 1, 1) % 5 - 2) / 3
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes, "H", "W"])
    node = helper.make_node("Conv", ["image", "w"], ["scores"])
    graph = helper.make_graph([node], "scores", [x], [y], [numpy_helper.from_array(w, "w")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _tabular(path: Path, n_features: int, n_classes: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from tabular_models import tabular_classifier

    path.write_bytes(tabular_classifier(n_features=n_features, n_classes=n_classes)[1])


def _scene_box(profile: dict):
    from shapely.geometry import box

    return box(*rasterio.transform.array_bounds(profile["height"], profile["width"], profile["transform"]))


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Every input file the docs name, built once."""
    from tilecast.datasets import landsat_dir
    from tilecast.errors import SourceNotFoundError

    try:
        sample = landsat_dir()
    except SourceNotFoundError as exc:
        pytest.skip(str(exc))
    sys.path.insert(0, str(ROOT / "examples"))
    import landsat

    a = tmp_path_factory.mktemp("assets")
    landsat.write_stack(a / "stack6.tif")
    with rasterio.open(a / "stack6.tif") as src:
        profile, data = src.profile, src.read()
    _write_like(a / "stack5.tif", data[:5], profile, list(landsat.MODEL_BANDS))
    for name, cut in {"a.tif": (0, 200), "b.tif": (180, 350), "c.tif": (330, 489)}.items():
        p = {
            **profile,
            "width": cut[1] - cut[0],
            "transform": profile["transform"] * rasterio.Affine.translation(cut[0], 0),
        }
        _write_like(a / name, data[:5, :, cut[0] : cut[1]], p, list(landsat.MODEL_BANDS))
    shutil.copy(ROOT / "models/landsat_landcover.onnx", a / "landsat.onnx")
    shutil.copy(a / "landsat.onnx", a / "landsat_card.onnx")
    code, out = _tilecast(
        [
            "card",
            str(a / "landsat_card.onnx"),
            "--bands",
            "B1,B2,B3,B4,B5",
            "--tile",
            "128",
            "--overlap",
            "8",
            "--output-band",
            "landcover:uint8",
        ]
    )
    assert code == 0, out
    # a Sentinel-2-like scene for docs/model-cards.md (its card is for B02, B03, B04, B08 at 10 m in EPSG:32633)
    rng = np.random.default_rng(0)
    s2 = rng.normal(1200, 400, size=(4, 256, 256)).clip(0, 10000).astype(np.uint16)
    s2_profile = {
        "crs": "EPSG:32633",
        "transform": rasterio.Affine(10, 0, 500000, 0, -10, 4600000),
        "width": 256,
        "height": 256,
        "nodata": 0,
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
    }
    _write_like(a / "s2.tif", s2, s2_profile, ["B02", "B03", "B04", "B08"])
    _onnx_scores(a / "s2_scores.onnx", 4, 3)
    _onnx_scores(a / "unet3.onnx", 3, 2)
    # vectors: the sample's points and polygons with the land-cover code as `class`; parcels with properties
    import geopandas

    for kind in ("points", "polygons"):
        gdf = geopandas.read_file(sample / f"landsat96_{kind}.shp")
        gdf["class"] = gdf["id"].astype("int32")
        if kind == "points":  # labels on the scene (115 of the sample's points lie beyond it)
            gdf = gdf[gdf.to_crs(profile["crs"]).within(_scene_box(profile))]
        gdf.to_file(a / f"{kind}.gpkg")
    for f in sample.glob("landsat96_polygons.*"):
        shutil.copy(f, a / f.name)
    for f in sample.glob("lsat7_2000_*.tif"):
        shutil.copy(f, a / f.name)
    polygons = geopandas.read_file(a / "polygons.gpkg").to_crs(profile["crs"])
    polygons = polygons[polygons.within(_scene_box(profile).buffer(-1500))]  # clear of the nodata frame
    polygons[["class", "geometry"]].to_parquet(a / "fields.parquet")
    parcels = polygons[["geometry"]].copy()
    parcels["ndvi_mean"] = np.linspace(-0.2, 0.8, len(parcels)).astype("float32")
    parcels["area"] = parcels.geometry.area.astype("float32")
    parcels.to_file(a / "parcels.gpkg")
    points = geopandas.GeoDataFrame(
        {f"f{i}": rng.normal(size=50).astype("float32") for i in range(3)},
        geometry=geopandas.points_from_xy(rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)),
        crs="EPSG:4326",
    )
    points.to_file(a / "points.fgb")
    _tabular(a / "crop_type.onnx", 2, 3)
    _tabular(a / "classifier.onnx", 10, 3)
    _tabular(a / "landcover_tab.onnx", 6, 7)
    _tabular(a / "clf.onnx", 3, 3)
    _detector_assets(a)
    _view_and_format_assets(a, data, profile)
    return a


# placeholder name in the doc -> asset; everything is copied into a fresh workspace per item
WORKSPACES: dict[str, dict[str, str]] = {
    "README.md": {
        "scene.tif": "stack6.tif",
        "unet.onnx": "landsat.onnx",
        "out/landsat_stack.tif": "stack6.tif",
        "models/landsat_landcover.onnx": "landsat.onnx",
        "out/landcover.tif": "classes.tif",
    },
    "docs/demo.md": {"out/landsat_stack.tif": "stack6.tif", "models/landsat_landcover.onnx": "landsat.onnx"},
    "docs/dask.md": {
        "scene.tif": "stack5.tif",
        "landcover.onnx": "landsat_card.onnx",
        "m.onnx": "landsat_card.onnx",
        "scenes/a.tif": "a.tif",
        "scenes/b.tif": "b.tif",
        "scenes/c.tif": "c.tif",
        "a.tif": "a.tif",
        "b.tif": "b.tif",
        "c.tif": "c.tif",
    },
    "docs/endpoints.md": {"scene.tif": "stack5.tif", "unet.onnx": "landsat.onnx", "models/unet.onnx": "landsat.onnx"},
    "docs/gpu.md": {},
    "docs/features.md": {
        "scene.tif": "stack5.tif",
        "parcels.gpkg": "parcels.gpkg",
        "fields.parquet": "fields.parquet",
        "crop_type.onnx": "crop_type.onnx",
        "classifier.onnx": "classifier.onnx",
        "landcover.onnx": "landcover_tab.onnx",
        "points.fgb": "points.fgb",
        **{f"landsat96_polygons.{e}": f"landsat96_polygons.{e}" for e in ("shp", "shx", "dbf", "prj")},
        **{f"lsat7_2000_{b}0.tif": f"lsat7_2000_{b}0.tif" for b in (1, 2, 3, 4, 5, 7)},
    },
    "docs/install.md": {},
    "docs/model-cards.md": {"scene.tif": "s2.tif", "landcover.onnx": "s2_scores.onnx", "unet.onnx": "unet3.onnx"},
    "docs/training-data.md": {
        "scene.tif": "stack5.tif",
        "points.gpkg": "points.gpkg",
        "polygons.gpkg": "polygons.gpkg",
    },
    "docs/benchmarks.md": {},
    "docs/formats.md": {"scene.tif": "rgb.tif", "landsat.tif": "stack5.tif"},
    "docs/vectors.md": {
        "ortho.tif": "ortho.tif",
        "trees.onnx": "trees.onnx",
        "buildings-seg.onnx": "buildings-seg.onnx",
        "scene.tif": "stack5.tif",
        "landcover.onnx": "landsat_card.onnx",
        "landcover.tif": "classes.tif",
    },
    "docs/view.md": {
        "scene.tif": "stack5.tif",
        "landcover.onnx": "landsat_card.onnx",
        "unet.onnx": "landsat.onnx",
        "out/landcover.tif": "classes.tif",
        "ndvi.tif": "ndvi.tif",
    },
}


def _workspace(doc: str, assets: Path, tmp: Path) -> Path:
    for name, asset in WORKSPACES[doc].items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(assets / asset, tmp / name)
    (tmp / "out").mkdir(exist_ok=True)
    return tmp


# ---- servers -----------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def _served(args: list[str], cwd: Path, port: int, env: dict[str, str] | None = None):
    """``tilecast serve ARGS`` as a process on 127.0.0.1:``port``, stopped afterwards."""
    cmd = [sys.executable, "-c", "from tilecast.cli import main; main(prog_name='tilecast')", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"tilecast serve exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tilecast serve did not become ready in 60 s"
            time.sleep(0.2)
        yield port
    finally:
        proc.stdout.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def landcover_server(assets, tmp_path_factory):
    """docs/endpoints.md's first ``tilecast serve`` command, as documented, on a free port."""
    ws = _workspace("docs/endpoints.md", assets, tmp_path_factory.mktemp("served"))
    port = _free_port()
    with _served(["serve", "unet.onnx", "--name", "landcover", "--port", str(port)], ws, port):
        yield port


@pytest.fixture(scope="module")
def clf_server(assets, tmp_path_factory):
    """A served tabular classifier ``clf`` (3 properties) for docs/features.md's endpoint example."""
    ws = tmp_path_factory.mktemp("clf")
    shutil.copy(assets / "clf.onnx", ws / "clf.onnx")
    port = _free_port()
    with _served(["serve", "clf=clf.onnx", "--port", str(port)], ws, port):
        yield port


# ---- running an item ---------------------------------------------------------------------------------------------


def _substitute(text: str, subs: tuple[tuple[str, str], ...], ports: dict[str, int]) -> str:
    for old, new in subs:
        new = new.format(**ports) if "{" in new and "port" in new else new
        assert old in text, f"substitution {old!r} no longer matches the documented text; update CASES"
        text = text.replace(old, new)
    return text


def _words(cmd: str, ws: Path) -> list[str]:
    """``shlex`` words, with unquoted globs expanded in ``ws`` as the shell would."""
    out = []
    for word in shlex.split(cmd):
        quoted = f"'{word}'" in cmd or f'"{word}"' in cmd
        if "*" in word and not quoted:
            out.extend(sorted(str(p.relative_to(ws)) for p in ws.glob(word)) or [word])
        else:
            out.append(word)
    return out


def _rio_group():
    """rasterio's ``rio`` with this tree's plugin, as click-plugins registers it (under the command's own name)."""
    from rasterio.rio.main import main_group

    plugins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["rasterio.rio_plugins"]
    for target in plugins.values():
        module, _, attr = target.partition(":")
        main_group.add_command(getattr(import_module(module), attr))
    return main_group, plugins


def _serve(words: list[str], ws: Path) -> tuple[int, str]:
    ports = {"--port": _free_port(), "--grpc-port": _free_port()}
    args = list(words[1:])
    for flag, port in ports.items():
        if flag in args:
            args[args.index(flag) + 1] = str(port)
    if "--port" not in args:
        args += ["--port", str(ports["--port"])]
    env = {**_env(), "SERVE_TOKEN": "s3cret"}
    with _served(args, ws, ports["--port"], env):
        if "--token-env" in args:
            req = urllib.request.Request(f"http://127.0.0.1:{ports['--port']}/v2/models/unet")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            assert err.value.code == 401
            err.value.close()
            req.add_header("Authorization", "Bearer s3cret")
            with urllib.request.urlopen(req, timeout=5) as r:
                assert json.loads(r.read())["name"] == "unet"
    return 0, ""


def _shim(ws: Path) -> dict[str, str]:
    """An environment whose PATH has a ``tilecast`` running this tree's code."""
    bin_dir = ws / ".bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "tilecast"
    script.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "from tilecast.cli import main; main(prog_name=\'tilecast\')" "$@"\n'
    )
    script.chmod(0o755)
    env = _env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def _run_shell(cmd: str, ws: Path) -> tuple[int, str]:
    words = _words(cmd, ws)
    if words[0] == "tilecast" and words[1] == "serve":
        return _serve(words, ws)
    if words[0] == "tilecast" and words[1] == "view":
        return _view(words, ws)
    if words[0] == "torch-model-archiver":
        return _run_archiver(words, ws)
    if words[0] == "tilecast":
        return _tilecast(words[1:])
    if words[0] == "rio":
        group, _ = _rio_group()
        result = CliRunner().invoke(group, words[1:], catch_exceptions=True)
        return result.exit_code, result.output + (f"\n{result.exception!r}" if result.exception else "")
    if words[0] == "python":
        proc = subprocess.run([sys.executable, *words[1:]], cwd=ws, env=_env(), capture_output=True, text=True)
        return proc.returncode, proc.stdout + proc.stderr
    if words[0] == "eval":
        shell = "zsh" if "zsh_source" in cmd else "bash"
        env = _shim(ws)
        if shutil.which(shell) is None:  # no zsh here: the script that the line evaluates must still come out
            proc = subprocess.run(
                ["tilecast"], env={**env, "_TILECAST_COMPLETE": "zsh_source"}, capture_output=True, text=True
            )
            return (0 if "compdef" in proc.stdout else 1), proc.stdout + proc.stderr
        check = "complete -p tilecast" if shell == "bash" else "whence -w _tilecast_completion"
        proc = subprocess.run([shell, "-c", f"{cmd} && {check}"], cwd=ws, env=env, capture_output=True, text=True)
        return proc.returncode, proc.stdout + proc.stderr
    raise AssertionError(f"no runner for {words[0]!r}")


def _run_python(code: str, ws: Path, name: str) -> tuple[int, str]:
    namespace: dict = {"__name__": "__docs__"}
    # masked pixels reach a model as 0 (fill_value), so 0 / 0 happens where the output is masked anyway
    # a TilecastWarning ("works, but maybe not as meant") is shown, as in a user's session, not raised
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("default", TilecastWarning)
        exec(compile(code, name, "exec"), namespace)  # the documented example is the test
    namespace.clear()
    return 0, ""


def _run_setup(doc: str, steps, ws: Path) -> None:
    for step in steps:
        if callable(step):
            step(ws)
            continue
        code, out = _run_shell(step, ws)
        assert code == 0, f"setup {step!r} failed:\n{out}"


def _items():
    params = []
    for doc, key, block in doc_items():
        case = CASES.get((doc, key))
        marks = []
        if isinstance(case, Run) and case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
        params.append(pytest.param(doc, key, block, id=f"{doc}:{block.line}:{key[:40]}", marks=marks))
    return params


# ---- tests -------------------------------------------------------------------------------------------------------


def test_every_block_is_in_the_table():
    """A block that is neither runnable nor listed (or a table entry whose block is gone) fails here."""
    found = {(doc, key) for doc, key, _ in doc_items()}
    new = sorted(found - set(CASES))
    gone = sorted(set(CASES) - found)
    assert not new, "documented examples not in CASES (make them run, or list why not):\n" + "\n".join(map(str, new))
    assert not gone, "CASES entries whose example is no longer documented:\n" + "\n".join(map(str, gone))


def test_every_doc_has_a_workspace():
    docs = {doc for doc, _, _ in doc_items()}
    assert docs <= set(WORKSPACES), sorted(docs - set(WORKSPACES))


@pytest.mark.parametrize(("doc", "key", "block"), _items())
def test_doc_example(doc, key, block, assets, tmp_path, monkeypatch, request):
    case = CASES.get((doc, key))
    if case is None:
        pytest.fail(f"{doc}:{block.line}: {key!r} is neither runnable nor listed in CASES")
    if isinstance(case, NotRunnable):
        pytest.skip(f"not runnable here: {case.reason}")
    ws = _workspace(doc, assets, tmp_path)
    monkeypatch.chdir(ws)
    if isinstance(case, Text):
        if case.check is None:
            assert block.kind == "text"
            return
        case.check(block.text, ws)
        return
    ports = {}
    text = key if block.kind == "shell" else block.text
    if any("{port}" in new for _, new in case.subs):
        server = "clf_server" if "clf" in text else "landcover_server"
        ports["port"] = request.getfixturevalue(server)
    _run_setup(doc, case.setup, ws)
    text = _substitute(text, case.subs, ports)
    if block.kind == "shell":
        code, out = _run_shell(text, ws)
    else:
        code, out = _run_python(case.python_prelude + text, ws, f"{doc}:{block.line}")
    assert code == 0, f"{doc}:{block.line} failed ({code}):\n{text}\n{out}"
    if case.check:
        case.check(ws, out)


def test_rio_plugin_name_matches_the_docs():
    """The rio command the README documents is the one pyproject registers (click-plugins uses the command's name)."""
    _, plugins = _rio_group()
    for entry, target in plugins.items():
        module, _, attr = target.partition(":")
        assert getattr(import_module(module), attr).name == entry == "tilecast-predict"


def test_vector_output_without_dims_names_the_cli_fix(assets, tmp_path, monkeypatch):
    """``--output-band probabilities:float32`` on a 7-class output: the README now says ``:1``; the error should too."""
    ws = _workspace("README.md", assets, tmp_path)
    monkeypatch.chdir(ws)
    code, out = _tilecast(
        shlex.split(
            "predict scene.tif --model unet.onnx --bands B1,B2,B3,B4,B5 --tile 128 "
            "--output-band probabilities:float32 -o p.tif -q"
        )
    )
    assert code == 1 and "7 channels" in out
    assert "probabilities:float32:1" in out, out
