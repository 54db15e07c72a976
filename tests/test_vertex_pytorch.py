"""Vertex AI's prebuilt PyTorch container contract in ``tilecast serve``: TorchServe-format JSON requests
(``{"instances": [{"b64": PNG}]}``) to a real server hosting a TorchServe ``.mar``, answered with the ONNX run of the
same weights on the pixels TorchServe's image handler would have made; Earth Engine's ``RAW_JSON`` and ``ND_ARRAYS``
rows; the limits; KServe v2 metadata of a TorchScript model (outputs of unknown rank); and the legacy AI Platform
route that ``Model.from_ai_platform_predictor(url=...)`` reaches.

The archive is built by ``torch-model-archiver`` when it is installed, else written in the same layout by hand (a zip
with ``MAR-INF/MANIFEST.json`` beside the TorchScript file, as ``--archive-format default`` writes it).
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
Image = pytest.importorskip("PIL.Image")

import onnxruntime as ort  # noqa: E402

import tilecast  # noqa: E402
from conftest import write_raster  # noqa: E402
from onnx_models import per_band_sum  # noqa: E402
from test_server import tilecast_serve  # noqa: E402
from tilecast.payloads.checks import DecodeBudget  # noqa: E402
from tilecast.payloads.images import decode_b64_bytes, image_kind  # noqa: E402
from tilecast.payloads.tensors import serialize_tensor  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
VERTEX = "/v1/projects/p/locations/us-central1/endpoints/123:predict"


def _archive(d: Path, name: str, serialized: Path, handler: str) -> Path:
    try:
        from test_formats_torchserve import archive

        return archive(d, name, serialized, handler)
    except pytest.skip.Exception:
        pass
    manifest = {"createdOn": "01/01/2026 00:00:00", "runtime": "python", "archiverVersion": "0.12.0",
                "model": {"modelName": name, "serializedFile": serialized.name, "handler": handler,
                          "modelVersion": "1.0"}}
    mar = d / f"{name}.mar"
    with zipfile.ZipFile(mar, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.write(serialized, serialized.name)
    return mar


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A conv net as TorchScript in an ``image_segmenter`` archive (served) and as ONNX (the reference)."""
    d = tmp_path_factory.mktemp("vertex_pt")
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    torch.jit.script(net).save(str(d / "net.pt"))
    torch.onnx.export(net, (torch.zeros(1, 3, 24, 24),), str(d / "net.onnx"), input_names=["image"],
                      output_names=["output"], dynamo=False,
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}})
    mar = _archive(d, "seg", d / "net.pt", "image_segmenter")
    with tilecast_serve(str(mar), "--max-body-bytes", "1000000", log=d / "serve.log") as (_, base, _):
        yield d, base


def _onnx(d: Path, chw: np.ndarray) -> np.ndarray:
    """The ONNX run of the weights on what the image handler makes of 8-bit pixels: ToTensor, then Normalize."""
    x = ((chw.astype(np.float32) / 255 - MEAN) / STD).astype(np.float32)[None]
    return ort.InferenceSession(str(d / "net.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0][0]


def _png(chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.moveaxis(chw, 0, -1)).save(buf, format="PNG")
    return buf.getvalue()


def _tiff(chw: np.ndarray) -> bytes:
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=chw.shape[2], height=chw.shape[1], count=chw.shape[0],
                      dtype=chw.dtype) as ds:
            ds.write(chw)
        return mem.read()


def _b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode()}


def _pixels(seed: int, h: int = 20, w: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8)


@pytest.mark.parametrize("route", [VERTEX, "/v1/models/seg:predict"])
def test_torchserve_image_rows_equal_the_onnx_run(served, route):
    d, base = served
    images = [_pixels(1), _pixels(2)]
    body = {"instances": [_b64(_png(images[0])), _b64(_tiff(images[1]))], "parameters": {"topk": 1}}
    r = httpx.post(base + route, json=body, timeout=60)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2
    for img, pred in zip(images, preds, strict=True):
        got, expected = np.asarray(pred, np.float32), _onnx(d, img)
        assert got.shape == expected.shape == (2, 20, 28)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        assert np.abs(expected).max() > 0.1


def test_nd_array_and_tensor_rows(served):
    """A nested list row is a tensor (Earth Engine's ND_ARRAYS); a b64 row that is no image is a TensorProto."""
    d, base = served
    img = _pixels(3)
    body = {"instances": [img.tolist(), _b64(serialize_tensor(img))]}
    r = httpx.post(base + VERTEX, json=body, timeout=60)
    assert r.status_code == 200, r.text
    for pred in r.json()["predictions"]:
        np.testing.assert_allclose(np.asarray(pred, np.float32), _onnx(d, img), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("body", "match"), [
    ({"instances": [_b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)]}, "PNG image cannot be decoded"),
    ({"instances": [_b64(b"not a tensor at all")]}, "nor a PNG, JPEG or TIFF image"),
    ({"instances": [{"b64": 5}]}, "an object value must be"),
    ({"instances": [[1.0]], "parameters": [1]}, '"parameters" must be a JSON object'),
])
def test_bad_rows_are_400(served, body, match):
    r = httpx.post(served[1] + VERTEX, json=body, timeout=60)
    assert r.status_code == 400 and match in r.json()["error"], r.text


def test_image_declaring_more_than_the_limit_is_refused_before_decoding(served):
    raw = _png(np.zeros((3, 1000, 1000), np.uint8))  # a few kB of PNG, 3 MB of pixels; the server takes 1 MB
    assert len(raw) < 100_000
    r = httpx.post(served[1] + VERTEX, json={"instances": [_b64(raw)]}, timeout=60)
    assert r.status_code == 400 and "over this server's limit" in r.json()["error"], r.text


def test_decode_budget_is_charged_from_the_header():
    raw = _png(np.zeros((3, 300, 200), np.uint8))
    assert image_kind(raw) == "PNG" and image_kind(_tiff(np.zeros((1, 2, 2), np.uint16))) == "TIFF"
    charged = []
    budget = DecodeBudget(10 ** 6, lambda n, what: charged.append((n, what)))
    assert decode_b64_bytes(raw, budget).shape == (3, 300, 200)
    assert charged == [(180_000, "a 200x300x3 PNG image")]
    with pytest.raises(tilecast.errors.InputError, match="over this server's limit"):
        decode_b64_bytes(raw, DecodeBudget(100_000))


def test_jpeg_rows_decode_like_pillow():
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([yy * 7, xx * 7, (yy + xx) * 3]).astype(np.uint8)
    buf = io.BytesIO()  # 4:4:4: chroma upsampling (which GDAL's libjpeg and Pillow's do differently) is not tested
    Image.fromarray(np.moveaxis(img, 0, -1)).save(buf, format="JPEG", quality=95, subsampling=0)
    got = decode_b64_bytes(buf.getvalue())
    ref = np.moveaxis(np.asarray(Image.open(io.BytesIO(buf.getvalue()))), -1, 0)
    assert got.shape == ref.shape == (3, 32, 32) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref).max() <= 2  # two JPEG decoders may round an IDCT differently
    assert np.abs(got.astype(int) - img).max() <= 8


def test_v2_metadata_says_unknown_rank_and_predict_image_binds_outputs(served, tmp_path):
    d, base = served
    meta = httpx.get(base + "/v2/models/seg", timeout=30).json()
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32"}]  # no "shape": [-1] (rank 1) for TorchScript
    pixels = np.random.default_rng(5).integers(0, 256, (3, 40, 60)).astype(np.float32)
    image = write_raster(tmp_path / "raw.tif", pixels)
    params = dict(input_tile_size=20, input_overlap_size=0, batch_size=4,
                  output_bands={"output": {"type": "float32", "dimensions": 1}})
    with tilecast.Model.from_endpoint(base + "/v2/models/seg", **params) as remote:
        got = remote.predict_image(image).to_numpy()
    normalised = write_raster(tmp_path / "norm.tif", (pixels / 255 - MEAN) / STD)
    with tilecast.Model.from_onnx(d / "net.onnx", **params) as local:
        expected = local.predict_image(normalised).to_numpy()
    assert got.shape == expected.shape == (2, 40, 60)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["RAW_JSON", "ND_ARRAYS", "SERIALIZED_TF_TENSORS"])
def test_ai_platform_predictor_against_tilecast_serve(tmp_path, fmt):
    """``url=`` is the server's root: the client posts to /v1/projects/P/models/M/versions/V:predict."""
    bands = ["B1", "B2", "B3"]
    per_band_sum(tmp_path / "pb.onnx", bands, [1.0, -2.0, 0.5])
    rng = np.random.default_rng(9)
    image = write_raster(tmp_path / "in.tif", rng.normal(size=(3, 30, 40)).astype(np.float32), descriptions=bands)
    params = dict(input_tile_size=16, input_overlap_size=2, batch_size=4)
    with tilecast.Model.from_onnx(tmp_path / "pb.onnx", **params) as local:
        expected = local.predict_image(image).to_numpy()
    with tilecast_serve(str(tmp_path / "pb.onnx")) as (_, base, _), tilecast.Model.from_ai_platform_predictor(
            project_id="proj", model_name="pb", version="v1", url=base, payload_format=fmt, token="unused",
            **params) as remote:
        assert remote.runtime.endpoint.infer_url == base + "/v1/projects/proj/models/pb/versions/v1:predict"
        got = remote.predict_image(image).to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.abs(expected).max() > 0.1


def test_ai_platform_route_refuses_unknown_paths(served):
    r = httpx.post(served[1] + "/v1/projects/p/models/seg/bogus:predict", json={"instances": [[1]]}, timeout=30)
    assert r.status_code == 404

