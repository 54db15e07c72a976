"""Malformed cards and unusual third-party metadata: tilecast errors naming the field, never a bare KeyError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import tilecast
from tilecast.card import Card
from tilecast.card.deepness import card_from_deepness
from tilecast.card.io import read_card_file
from tilecast.errors import InputError, ModelLoadError, SpecError


def test_a_card_file_that_is_not_an_item_is_a_load_error(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="not a STAC MLM item"):
        read_card_file(path)


def test_an_input_or_output_without_a_name_is_named_in_the_error():
    item = {"properties": {"mlm:input": [{"bands": ["a"]}]}}
    with pytest.raises(SpecError, match=r"mlm:input\[0\]\.name"):
        Card(item).to_params()
    item = {"properties": {"mlm:input": [{"name": "x", "bands": ["a"]}], "mlm:output": [{"result": {}}]}}
    with pytest.raises(SpecError, match=r"mlm:output\[0\]\.name"):
        Card(item).to_params()


def _classed(hint):
    return Card({"properties": {
        "mlm:input": [{"name": "x", "bands": ["a"]}],
        "mlm:output": [{"name": "c", "classification:classes": [{"value": 0, "name": "w", "color_hint": hint}]}],
    }})


def test_color_hints_with_a_hash_are_read_and_bad_ones_named():
    assert _classed("#00fF00").to_params().params["output_bands"]["c"]["colors"] == {0: (0, 255, 0)}
    with pytest.raises(SpecError, match="color_hint"):
        _classed("green").to_params()


def _deepness(**meta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return card_from_deepness({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}, None)


@pytest.mark.parametrize("size", ["500x500", "[500, 500]", "500,500", "500", "500.0"])
def test_deepness_tile_size_strings(size):
    p = _deepness(tiles_size=size, tiles_overlap=10).to_params().params
    assert p["input_tile_size"] == (450, 450) and p["input_overlap_size"] == (25, 25)


@pytest.mark.parametrize(("key", "value"), [("tiles_size", "big"), ("resolution", "ten"),
                                            ("class_names", {"a": "b"}), ("tiles_overlap", "lots")])
def test_deepness_unreadable_values_name_the_key(key, value):
    meta = {"tiles_size": 256, key: value}
    with pytest.raises(SpecError, match=key):
        _deepness(**meta)


def test_cards_are_read_as_utf8_whatever_the_locale(tmp_path):
    """JSON is UTF-8: a card with non-ASCII names, read under an ASCII (or cp1252) locale, is not refused (or
    garbled)."""
    model = tmp_path / "u.onnx"
    model.write_bytes(b"")
    item = {"properties": {"mlm:name": "Wälder 森林", "mlm:input": [{"name": "x", "bands": ["a"]}]}}
    (tmp_path / "u.onnx.json").write_text(json.dumps(item, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "card.json").write_text(json.dumps(item, ensure_ascii=False), encoding="utf-8")
    code = ("import sys; from tilecast.card.io import read_card, read_card_file; "
            "a = read_card(sys.argv[1]).properties['mlm:name']; b = read_card_file(sys.argv[2]).properties['mlm:name'];"
            " print(ascii([a, b]))")
    env = {**os.environ, "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C",
           "PYTHONPATH": os.pathsep.join([str(Path(tilecast.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, str(model), str(tmp_path / "card.json")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ascii(["Wälder 森林"] * 2)


def test_a_deepness_gsd_in_metres_is_not_taken_as_degrees(tmp_path):
    """Deepness's resolution is cm/px: on a geographic image it must not warp to 0.2-degree pixels."""
    from rasterio.transform import from_origin
    from tests.conftest import write_raster
    from tests.test_card import _deepness_model

    from tilecast import Model

    path = _deepness_model(tmp_path / "deepness.onnx")
    rgb = np.zeros((3, 40, 50), np.uint8)
    img = write_raster(tmp_path / "rgb.tif", rgb, crs="EPSG:4326", transform=from_origin(10.0, 50.0, 2e-6, 2e-6),
                       descriptions=("red", "green", "blue"))
    with Model.load(path) as m, pytest.raises(InputError, match="projected CRS"):
        m.predict_image(img)
