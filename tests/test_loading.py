"""load_model: format detection, card precedence, explicit overrides, band matching by description."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from tests.conftest import write_raster
from tests.onnx_models import linear_1x1, mean_conv

from tilecast.card import build_card, card_path, write_card
from tilecast.errors import ModelLoadError, SpecError
from tilecast.loading import detect_format, load_model
from tilecast.model import Model
from tilecast.spec import OutputBand


def test_detect_format(tmp_path):
    onnx_path = linear_1x1(tmp_path / "a.onnx", [1.0])
    assert detect_format(onnx_path) == "onnx"
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert detect_format(tmp_path / "sm") == "savedmodel"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"without saved_model\.pb"):
        detect_format(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="not found"):
        detect_format(tmp_path / "nope.onnx")
    for name, fmt in (("m.pt2", "torch.export"), ("m.keras", "keras"), ("m.torchscript", "torchscript")):
        (tmp_path / name).write_bytes(b"x")
        assert detect_format(tmp_path / name) == fmt


def test_torch_export_saved_as_pt_is_detected(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Conv2d(1, 1, 1)
    torch.export.save(torch.export.export(net, (torch.zeros(1, 1, 4, 4),)), str(tmp_path / "prog.pt"))
    torch.jit.save(torch.jit.script(net), str(tmp_path / "script.pt"))
    assert detect_format(tmp_path / "prog.pt") == "torch.export"
    assert detect_format(tmp_path / "script.pt") == "torchscript"


def test_no_card_gives_a_plain_model(tmp_path):
    path = linear_1x1(tmp_path / "a.onnx", [2.0])
    m = load_model(path, input_tile_size=8, layout=None, blend=None)
    assert type(m) is Model and tuple(m.spec.geometry.tile) == (8, 8)


def test_overlap_override_keeps_a_fixed_model_input(tmp_path):
    path = mean_conv(tmp_path / "m.onnx", bands=1, hw=(40, 40))
    card = build_card(name="m", bands=["x"], input_tile_size=(32, 32), input_overlap_size=(4, 4),
                      input_names=["image"], output_bands=[OutputBand("mean", np.dtype("float32"))])
    write_card(card, path, embed=False)
    m = load_model(path, input_overlap_size=8)
    assert tuple(m.spec.geometry.tile) == (24, 24) and tuple(m.spec.geometry.padded) == (40, 40)
    m2 = m.with_options(blend="cosine")
    assert type(m2) is Model and m2.card is m.card and m2.spec.blend == "cosine"


def test_card_argument_and_band_matching(tmp_path):
    path = linear_1x1(tmp_path / "a.onnx", [1.0, 10.0, 100.0])
    card = build_card(name="lin", bands=["B04", "B03", "B02"], input_tile_size=(16, 16), input_names=["x"],
                      common_names={"B04": "red", "B03": "green", "B02": "blue"},
                      output_bands=[OutputBand("y", np.dtype("float32"))])
    other = tmp_path / "elsewhere.json"
    other.write_text(card.to_json())
    rng = np.random.default_rng(0)
    data = rng.random((3, 20, 30)).astype("float32")
    # Raster named by common names in another order (blue, green, red): the card reorders it.
    img = write_raster(tmp_path / "bgr.tif", data, descriptions=("blue", "green", "red"))
    m = load_model(path, card=other)
    assert not card_path(path).exists()
    m.predict_image(img).to_geotiff(tmp_path / "o.tif")
    with rasterio.open(tmp_path / "o.tif") as ds:
        got = ds.read(1)
    assert np.allclose(got, data[2] + 10 * data[1] + 100 * data[0], atol=1e-4)
    # Explicit bands win over matching.
    m = load_model(path, card=other, bands=[1, 2, 3])
    m.predict_image(img).to_geotiff(tmp_path / "p.tif")
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert np.allclose(ds.read(1), data[0] + 10 * data[1] + 100 * data[2], atol=1e-4)


def test_card_json_is_a_stac_item(tmp_path):
    path = linear_1x1(tmp_path / "a.onnx", [1.0])
    card = build_card(name="lin", bands=["x"], input_tile_size=16, input_names=["x"],
                      output_bands=[OutputBand("y", np.dtype("float32"))])
    write_card(card, path, embed=False)
    item = json.loads(card_path(path).read_text())
    assert item["type"] == "Feature" and item["assets"]["model"]["roles"] == ["mlm:model"]
    pystac = pytest.importorskip("pystac")
    assert pystac.Item.from_dict(item).id == "lin"


def test_providers_for_a_model_that_does_not_take_them_are_refused(tmp_path):
    """--providers cuda with a TorchScript model was silently ignored (the model ran where --device said)."""
    torch = pytest.importorskip("torch")
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(1, 1, 1)), str(tmp_path / "script.pt"))
    with pytest.raises(SpecError, match=r"providers \['CUDAExecutionProvider'\] are ONNX Runtime's.*--device"):
        load_model(tmp_path / "script.pt", providers=["CUDAExecutionProvider"], input_tile_size=8)
