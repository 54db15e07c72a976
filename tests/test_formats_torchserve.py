"""TorchServe ``.mar`` archives built by the real ``torch-model-archiver``: their outputs equal the ONNX export of the
same weights, fed the pixels the archive's handler would have made (ImageNet normalisation of 0..255 values).

``torch-model-archiver`` (PyPI) must be on PATH or importable (it is in the dev dependency group); else these skip.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import tilecast  # noqa: E402
from conftest import write_raster  # noqa: E402
from tilecast.card import detect_format  # noqa: E402
from tilecast.errors import ModelLoadError, TileSizeError  # noqa: E402
from tilecast.runtimes.torchserve import handler_preprocessing  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# No overlap and a raster of whole tiles: no tile is padded, since padding (zeros in the raster's units) is not what
# the handler would have normalised.
PARAMS = dict(input_tile_size=20, input_overlap_size=0, batch_size=4,
              output_bands={"scores": {"type": "float32", "dimensions": 1}})  # TorchScript records no output shape


def archiver() -> list[str]:
    exe = shutil.which("torch-model-archiver")
    if exe:
        return [exe]
    if importlib.util.find_spec("model_archiver") is not None:
        return [sys.executable, "-m", "model_archiver.model_packaging"]
    pytest.skip("torch-model-archiver is not installed (pip install torch-model-archiver; dev dependency group)")


def archive(d: Path, name: str, serialized: Path, handler: str, *extra: str) -> Path:
    cmd = [*archiver(), "--model-name", name, "--version", "1.0", "--serialized-file", str(serialized),
           "--handler", handler, "--export-path", str(d), "-f", *extra]
    subprocess.run(cmd, check=True, capture_output=True, cwd=d)
    return d / f"{name}.mar"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """One small conv net saved twice: TorchScript (for the archive) and ONNX (the reference)."""
    d = tmp_path_factory.mktemp("mar")
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1)).eval()
    torch.jit.script(net).save(str(d / "net.pt"))
    x = torch.zeros(1, 3, 24, 24)
    torch.onnx.export(net, (x,), str(d / "net.onnx"), input_names=["image"], output_names=["output"],
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}},
                      dynamo=False)
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (3, 40, 60)).astype(np.float32)  # 8-bit image values, as TorchServe gets them
    raw = write_raster(d / "raw.tif", pixels)
    normalised = write_raster(d / "normalised.tif", (pixels / 255 - MEAN[:, None, None]) / STD[:, None, None])
    return d, raw, normalised


def onnx_run(d: Path, image: str) -> np.ndarray:
    with tilecast.Model.from_onnx(d / "net.onnx", **PARAMS) as m:
        return m.predict_image(image).to_numpy()


def test_image_segmenter_archive_equals_onnx_of_normalised_pixels(weights):
    d, raw, normalised = weights
    mar = archive(d, "seg", d / "net.pt", "image_segmenter")
    assert detect_format(mar) == "torchserve"
    with tilecast.Model.load(mar, **PARAMS) as model:
        out = model.predict_image(raw).to_numpy()
        assert "image_segmenter" in model.runtime.metadata["torchserve:preprocessing"]
    expected = onnx_run(d, normalised)
    assert out.shape == expected.shape == (2, 40, 60)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected).max() > 0.1  # the comparison is not between zeros


def test_base_handler_passes_values_through(weights):
    d, raw, _ = weights
    mar = archive(d, "plain", d / "net.pt", "base_handler")
    with tilecast.Model.load(mar, layout="NCHW", **PARAMS) as model:  # base_handler does not say the channels
        out = model.predict_image(raw).to_numpy()
    np.testing.assert_allclose(out, onnx_run(d, raw), rtol=1e-5, atol=1e-3)


def test_custom_handler_subclass_is_read_for_its_normalisation(weights):
    d, raw, _ = weights
    handler = d / "my_handler.py"
    handler.write_text(
        "from torchvision import transforms\n"
        "from ts.torch_handler.image_classifier import ImageClassifier\n\n"
        "class Landcover(ImageClassifier):\n"
        "    topk = 3\n"
        "    image_processing = transforms.Compose([\n"
        "        transforms.Resize(256),\n"
        "        transforms.ToTensor(),\n"
        "        transforms.Normalize(mean=[0.5, 0.25, 0.75], std=[0.5, 0.125, 0.25]),\n"
        "    ])\n\n"
        "    def postprocess(self, data):\n"
        "        return data.argmax(1).tolist()\n"
    )
    mar = archive(d, "custom", d / "net.pt", str(handler))
    pixels = _read(raw)
    mean, std = np.array([0.5, 0.25, 0.75], np.float32), np.array([0.5, 0.125, 0.25], np.float32)
    expected_in = write_raster(d / "custom_in.tif", (pixels / 255 - mean[:, None, None]) / std[:, None, None])
    with tilecast.Model.load(mar, **PARAMS) as model:
        out = model.predict_image(raw).to_numpy()
    np.testing.assert_allclose(out, onnx_run(d, expected_in), rtol=1e-4, atol=1e-4)


def test_custom_preprocess_and_eager_models_are_refused(weights):
    d, _, _ = weights
    handler = d / "own_pre.py"
    handler.write_text(
        "from ts.torch_handler.base_handler import BaseHandler\n\n"
        "class Mine(BaseHandler):\n"
        "    def preprocess(self, data):\n"
        "        return data\n"
    )
    mar = archive(d, "ownpre", d / "net.pt", str(handler))
    with pytest.raises(ModelLoadError, match=r"not supported: class Mine has its own preprocess\(\).*--handler"):
        tilecast.Model.load(mar, **PARAMS)
    model_file = d / "arch.py"
    model_file.write_text("import torch\n\nclass Net(torch.nn.Module):\n    pass\n")
    torch.save({}, d / "state.pth")
    eager = archive(d, "eager", d / "state.pth", "image_classifier", "--model-file", str(model_file))
    with pytest.raises(ModelLoadError, match=r"eager-mode model.*torch.jit.script"):
        tilecast.Model.load(eager, **PARAMS)


def test_wrong_channel_count_names_the_handler(weights):
    d, _, _ = weights
    mar = d / "seg.mar" if (d / "seg.mar").exists() else archive(d, "seg", d / "net.pt", "image_segmenter")
    with tilecast.Model.load(mar, **PARAMS) as model, pytest.raises(TileSizeError, match=r"normalises 3 channels"):
        model.runtime.run({"input": np.zeros((1, 4, 8, 8), np.float32)})


@pytest.mark.parametrize(("source", "divide", "mean"), [
    ("class H(ObjectDetector):\n    pass\n", 255.0, None),
    ("class H(ImageSegmenter):\n    image_processing = T.Compose([T.ToTensor(), T.Normalize((0.1,), (0.2,))])\n",
     255.0, (0.1,)),
])
def test_handler_sources(source, divide, mean):
    pre = handler_preprocessing("h.py", source)
    assert (pre.divide, pre.mean) == (divide, mean)


@pytest.mark.parametrize(("source", "why"), [
    ("class H(ImageClassifier):\n    image_processing = T.Compose([T.Grayscale(), T.ToTensor()])\n", "Grayscale"),
    ("def handle(data, context):\n    return data\n", "derives from none"),
    ("class H(VisionHandler):\n    pass\n", "without image_processing"),
    ("class H(ImageClassifier):\n    image_processing = T.Compose([T.Normalize(MEAN, STD)])\n", "literal mean"),
])
def test_unsupported_handler_sources(source, why):
    with pytest.raises(ModelLoadError, match=why):
        handler_preprocessing("h.py", source)
    with pytest.raises(ModelLoadError, match="neither a standard TorchServe handler"):
        handler_preprocessing("text_classifier")


def test_info_and_serve_open_the_archive(weights):
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    from click.testing import CliRunner

    from test_server import tilecast_serve
    from tilecast.cli import main

    d, _, _ = weights
    mar = archive(d, "served", d / "net.pt", "image_segmenter")
    result = CliRunner().invoke(main, ["info", str(mar)])
    assert result.exit_code == 0, result.output
    assert "format: torchserve" in result.output and "x / 255" in result.output
    batch = np.random.default_rng(1).integers(0, 256, (3, 3, 20, 20)).astype(np.float32)
    # one batch through the server (it reports an unknown output shape as rank 1, so predict_image cannot bind it)
    with tilecast_serve(str(mar)) as (_, base, _), \
            tilecast.Model.from_endpoint(base + "/v2/models/served", **PARAMS) as remote:
        out = remote.runtime.run({"input": batch})["output"]
    with tilecast.Model.from_onnx(d / "net.onnx", **PARAMS) as reference:
        expected = reference.runtime.run({"image": (batch / 255 - MEAN[:, None, None]) / STD[:, None, None]})
    np.testing.assert_allclose(out, expected["output"], rtol=1e-4, atol=1e-4)


def _read(path: str) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read().astype(np.float32)
