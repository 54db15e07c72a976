"""Model cards: build, validate (STAC + MLM), embed, convert to parameters, Deepness/GeoDeep keys, CLI round trip."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import rasterio
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from rasterio.transform import from_origin
from tests.conftest import write_raster
from tests.onnx_models import linear_1x1, mean_conv

import tilecast.card.io
from tilecast.card import (
    ONNX_KEY,
    Card,
    build_card,
    card_path,
    match_bands,
    read_card,
    validate_card,
    write_card,
)
from tilecast.cli import main
from tilecast.errors import BandMismatchError, InputError, ModelLoadError, SpecError
from tilecast.loading import load_model
from tilecast.runtimes.base import Signature, TensorSpec
from tilecast.runtimes.scaled import ScaledRuntime, Scaling, parse_scaling
from tilecast.spec import OutputBand


def _grid(rx, ry):
    return from_origin(500000.0, 4600000.0, rx, ry)


def _card(**kw):
    args = dict(name="lin", bands=["B04", "B03", "B02"], input_tile_size=(32, 32), input_overlap_size=(4, 4),
                layout="NCHW", input_names=["x"], scaling=[Scaling("z-score", mean=100, stddev=50)],
                common_names={"B04": "red", "B03": "green", "B02": "blue"},
                output_bands=[OutputBand("y", np.dtype("float32"), 0, ((0, "low"), (1, "high")),
                                          ((0, (0, 0, 255)), (1, (255, 0, 0))))],
                resolution=(10, 10), crs="EPSG:32633", blend="crop")
    args.update(kw)
    return build_card(**args)


def test_card_validates_against_stac_and_mlm():
    card = _card()
    assert validate_card(card) == []
    p = card.properties
    assert p["mlm:input"][0]["input"] == {"shape": [-1, 3, 40, 40], "dim_order": ["batch", "channel", "height",
                                                                                   "width"], "data_type": "float32"}
    assert p["mlm:input"][0]["value_scaling"] == [{"type": "z-score", "mean": 100.0, "stddev": 50.0}]
    assert p["mlm:output"][0]["classification:classes"][1]["color_hint"] == "FF0000"
    assert p["tilecast:tile_size"] == [32, 32] and p["tilecast:overlap"] == [4, 4]


def test_invalid_cards_are_reported():
    card = _card()
    del card.properties["mlm:architecture"]
    card.properties["mlm:input"][0]["input"]["dim_order"] = ["batch"]  # shape and dim_order differ in length
    problems = validate_card(card)
    assert any("mlm:architecture" in p for p in problems)
    assert any("Dimension order" in p or "dim_order" in p for p in problems)
    bad = _card()
    bad.item["geometry"] = "nowhere"
    assert any("STAC" in p for p in validate_card(bad))


def test_card_to_params_round_trip():
    cp = _card().to_params()
    assert cp.params["input_tile_size"] == (32, 32)
    assert cp.params["input_overlap_size"] == (4, 4)
    assert cp.params["layout"] == "NCHW" and cp.params["resolution"] == (10.0, 10.0)
    assert cp.params["output_bands"]["y"]["classes"] == {0: "low", 1: "high"}
    assert cp.params["output_bands"]["y"]["colors"] == {0: (0, 0, 255), 1: (255, 0, 0)}
    assert cp.scaling["x"][0] == Scaling("z-score", mean=100.0, stddev=50.0)
    assert cp.channel_axis["x"] == 1
    assert cp.common_names == {"B04": "red", "B03": "green", "B02": "blue"}


def test_scaling_semantics_follow_mlm():
    x = np.array([0.0, 50.0, 100.0], np.float32)
    assert np.allclose(parse_scaling("scale:50").apply(x), [0, 1, 2])  # data / value
    assert np.allclose(parse_scaling("offset:50").apply(x), [-50, 0, 50])  # data - value
    assert np.allclose(parse_scaling("min-max:0:200").apply(x), [0, 0.25, 0.5])
    assert np.allclose(parse_scaling("z-score:50:25").apply(x), [-2, 0, 2])
    assert np.allclose(parse_scaling("clip:10:60").apply(x), [10, 50, 60])
    with pytest.raises(SpecError, match="z-score:MEAN:STD"):
        parse_scaling("z-score:1")
    with pytest.raises(SpecError, match="not supported"):
        Scaling("log")
    with pytest.raises(SpecError, match=r"minimum .* must be <= maximum"):
        parse_scaling("clip:5:1")  # it clipped every value to 1


def test_scaled_runtime_per_band_and_argmax():
    from tilecast.runtimes.callable import CallableRuntime

    seen = {}

    def fn(x):
        seen["x"] = x
        return np.stack([x[:, 0], x[:, 1]], axis=1)

    rt = ScaledRuntime(CallableRuntime(fn, inputs=["x"], outputs=["y"]),
                       {"x": [Scaling("scale", value=2), Scaling("offset", value=1)]}, {"x": 1}, {"y": 1})
    out = rt.run({"x": np.stack([np.full((1, 2, 2), 4.0), np.full((1, 2, 2), 1.0)], axis=1)})
    assert np.allclose(seen["x"][:, 0], 2) and np.allclose(seen["x"][:, 1], 0)
    assert out["y"].dtype == np.uint8 and (out["y"] == 0).all()


def test_sidecar_and_embedded(tmp_path):
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 0.0, 0.0])
    card = _card()
    side = write_card(card, path)
    assert side == card_path(path) == tmp_path / "lin.onnx.json"
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props[ONNX_KEY])["properties"]["mlm:name"] == "lin"
    side.unlink()
    from tilecast.runtimes.onnx import OnnxRuntime

    rt = OnnxRuntime(path)
    found = read_card(path, rt.metadata, rt.signature)
    assert found is not None and found.source == "embedded" and found.properties["mlm:name"] == "lin"


def test_corrupted_card_and_model(tmp_path):
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 0.0, 0.0])
    card_path(path).write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(path)
    card_path(path).write_text(json.dumps({"type": "Feature", "properties": {}}))
    with pytest.raises(ModelLoadError, match="not a STAC MLM item"):
        load_model(path)
    broken = tmp_path / "broken.onnx"
    with open(path, "rb") as f:
        broken.write_bytes(f.read()[:40])
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model(broken)
    with pytest.raises(ModelLoadError, match="cannot tell the model format"):
        (tmp_path / "weights.bin").write_bytes(b"\x00\x01")
        load_model(tmp_path / "weights.bin")


def test_card_contradicting_signature(tmp_path):
    path = mean_conv(tmp_path / "m.onnx", bands=2, hw=(24, 24))
    card = _card(bands=["a", "b"], input_names=["image"], input_tile_size=(30, 30), input_overlap_size=(0, 0),
                 scaling=None, output_bands=[OutputBand("mean", np.dtype("float32"))], resolution=None, crs=None)
    write_card(card, path, embed=False)
    with pytest.raises(SpecError, match="height = 30"):
        load_model(path)
    card = _card(bands=["a", "b", "c"], input_names=["image"], input_tile_size=(24, 24), input_overlap_size=(0, 0),
                 scaling=None, resolution=None, crs=None)
    write_card(card, path, embed=False, overwrite=True)
    with pytest.raises(SpecError, match=r"channel = 3.*image: \?x2x24x24"):
        load_model(path)
    card = _card(bands=["a", "b"], input_names=["pixels"], input_tile_size=(24, 24), input_overlap_size=(0, 0),
                 scaling=None, resolution=None, crs=None)
    write_card(card, path, embed=False, overwrite=True)
    with pytest.raises(SpecError, match="'pixels' but the model's input is 'image'"):
        load_model(path)


def test_match_bands():
    common = {"B04": "red", "B03": "green"}
    assert match_bands(["B04", "B03"], ["B03", "B04"], common) == [2, 1]
    assert match_bands(["B04", "B03"], ["Green", "Red", "NIR"], common) == [2, 1]
    assert match_bands(["B04", "B03"], ["x", "y"], common, ["green", "red"]) == [2, 1]
    assert match_bands(["B04", "B03"], ["b1", "b2"], common) == [1, 2]  # unnamed: Earth Engine order
    with pytest.raises(BandMismatchError, match=r"raster has \['red', 'nir'\]; missing \['B03 \(green\)'\]"):
        match_bands(["B04", "B03"], ["red", "nir"], common)


def _deepness_model(path, classes=2, size=64):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes, size, size])
    w = np.zeros((classes, 3, 1, 1), np.float32)
    w[0, 0], w[1, 1] = 1.0, 1.0  # class 0 score = standardized red, class 1 = standardized green
    node = helper.make_node("Conv", ["input", "w"], ["output"], kernel_shape=[1, 1])
    graph = helper.make_graph([node], "seg", [x], [y], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({0: "background", 1: "field"}),
        "resolution": json.dumps(20),
        "tiles_size": json.dumps(size),
        "tiles_overlap": json.dumps(25),
        "standardization_mean": json.dumps([0.5, 0.4, 0.3]),
        "standardization_std": json.dumps([0.2, 0.1, 0.3]),
        "seg_thresh": json.dumps(0.5),
    }
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return str(path)


def test_deepness_metadata_is_read(tmp_path):
    path = _deepness_model(tmp_path / "deepness.onnx")
    from tilecast.runtimes.onnx import OnnxRuntime

    rt = OnnxRuntime(path)
    card = read_card(path, rt.metadata, rt.signature)
    assert card is not None and card.source == "deepness"
    assert validate_card(card) == []
    cp = card.to_params()
    assert cp.params["input_tile_size"] == (48, 48) and cp.params["input_overlap_size"] == (8, 8)  # 25 % of 64
    assert cp.params["resolution"] == (0.2, 0.2) and cp.params["fix_input_proj"] is True  # 20 cm/px
    assert cp.params["output_bands"]["class"]["classes"] == {0: "background", 1: "field"}
    assert cp.scaling["input"][0] == Scaling("z-score", mean=0.5 * 255, stddev=0.2 * 255)
    assert cp.argmax == {"output": 1}

    # Runs unchanged: x/255 standardized, then argmax of the two channels.
    rgb = np.zeros((3, 40, 50), np.uint8)
    rgb[0], rgb[1] = 200, 50  # red high -> class 0 ((200/255-.5)/.2=1.4 vs (50/255-.4)/.1=-2)
    rgb[0, :, 25:], rgb[1, :, 25:] = 60, 250
    img = write_raster(tmp_path / "rgb.tif", rgb, transform=_grid(0.2, 0.2), descriptions=("red", "green", "blue"))
    out = tmp_path / "out.tif"
    model = load_model(path)
    model.predict_image(img).to_geotiff(out)
    with rasterio.open(out) as ds:
        got = ds.read(1)
    assert (got[:, :25] == 0).all() and (got[:, 25:] == 1).all()


def test_gsd_policy(tmp_path):
    path = linear_1x1(tmp_path / "lin.onnx", [1.0])
    card = _card(bands=["a"], common_names={}, scaling=None, resolution=(10, 10), crs=None,
                 output_bands=[OutputBand("y", np.dtype("float32"))], gsd_tolerance=0.05)
    write_card(card, path, embed=False)
    ok = write_raster(tmp_path / "ok.tif", np.ones((1, 20, 20), np.float32), transform=_grid(10.2, 10.2))
    load_model(path).predict_image(ok).to_geotiff(tmp_path / "o.tif")  # 2 % off: accepted as is
    far = write_raster(tmp_path / "far.tif", np.ones((1, 20, 20), np.float32), transform=_grid(20, 20))
    with pytest.raises(InputError, match="fix-input-proj"):
        load_model(path).predict_image(far)
    pred = load_model(path, fix_input_proj=True).predict_image(far)
    assert pred.grid.resolution == (10.0, 10.0)


def test_explicit_arguments_override_card(tmp_path):
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 1.0, 1.0])
    write_card(_card(resolution=None, crs=None), path, embed=False)
    m = load_model(path, input_tile_size=16, input_overlap_size=None, blend=None)
    assert tuple(m.spec.geometry.tile) == (16, 16) and tuple(m.spec.geometry.overlap) == (4, 4)
    assert load_model(path, bands=[1, 2, 3]).card.explicit_bands


def test_cli_card_info_predict_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, 70, 90)).astype(np.uint8)
    img = write_raster(tmp_path / "scene.tif", data, descriptions=("blue", "green", "red"))
    path = mean_conv(tmp_path / "m.onnx", bands=3, k=5)
    runner = CliRunner()
    flags = ["--tile", "32", "--overlap", "4", "--layout", "NCHW", "--output-band", "mean:float32"]
    r = runner.invoke(main, ["card", path, "--bands", "R=red,G=green,B=blue", "--scaling", "scale:255",
                             "--name", "meanconv", *flags])
    assert r.exit_code == 0, r.output
    assert "receptive field: about 2 px" in r.output
    assert validate_card(Card(json.loads(card_path(path).read_text()))) == []

    r = runner.invoke(main, ["info", path])
    assert r.exit_code == 0, r.output
    assert "meanconv" in r.output and "scale:255" in r.output and "image" in r.output
    r = runner.invoke(main, ["info", path, "--json"])
    info = json.loads(r.output)
    assert info["tile"] == [32, 32] and info["bands"][0]["common_name"] == "red"

    # What `tilecast predict scene.tif --model m.onnx -o a.tif` does once predict calls load_model without flags.
    load_model(path).predict_image(str(img)).to_geotiff(tmp_path / "a.tif")
    # The same, fully flagged, without a card: scale the raster by hand and pick the bands explicitly.
    card_path(path).unlink()
    plain = mean_conv(tmp_path / "plain.onnx", bands=3, k=5)
    scaled = write_raster(tmp_path / "scaled.tif", data.astype(np.float32) / 255)
    r = runner.invoke(main, ["predict", str(scaled), "--model", plain, "-o", str(tmp_path / "b.tif"), "-q",
                             "--bands", "3,2,1", *flags])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert np.allclose(a.read(), b.read(), atol=1e-6)


def test_cli_card_warns_on_small_overlap(tmp_path):
    path = mean_conv(tmp_path / "m.onnx", bands=1, k=9)
    r = CliRunner().invoke(main, ["card", path, "--bands", "x", "--tile", "32", "--overlap", "1",
                                  "--output-band", "mean:float32"])
    assert r.exit_code == 0, r.output
    assert "receptive field: about 4 px" in r.output and "use --overlap 4" in r.output


def test_cli_card_rejects_wrong_outputs(tmp_path):
    path = mean_conv(tmp_path / "m.onnx", bands=1, k=3)
    r = CliRunner().invoke(main, ["card", path, "--bands", "x", "--tile", "32", "--output-band", "probs:float32:1",
                                  "--output-band", "other:float32"])
    assert r.exit_code != 0
    assert "do not match" in r.output or "declared outputs" in r.output


def test_cli_card_bands_mismatch_at_predict(tmp_path):
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 1.0])
    r = CliRunner().invoke(main, ["card", path, "--bands", "red,nir", "--tile", "16", "--output-band", "y:float32"])
    assert r.exit_code == 0, r.output
    img = write_raster(tmp_path / "rgb.tif", np.ones((3, 20, 20), np.float32), descriptions=("red", "green", "blue"))
    with pytest.raises(BandMismatchError, match=r"raster has \['red', 'green', 'blue'\]; missing \['nir'\]"):
        load_model(path).predict_image(img)


def test_signature_of_card_wrapper_for_any_inputs():
    rt = ScaledRuntime(_Any(), {"x": [Scaling("scale", value=2)]})
    assert rt.signature.inputs == ()


class _Any:
    signature = Signature((), (TensorSpec("y", None, None),))

    def run(self, batch):
        return {"y": next(iter(batch.values()))}

    def close(self):
        pass


def test_geodeep_style_metadata(tmp_path):
    """GeoDeep reuses Deepness keys, lower-case model types and a class list; tile size from the input shape."""
    path = tmp_path / "geodeep.onnx"
    _deepness_model(path, size=32)
    model = onnx.load(path)
    del model.metadata_props[:]
    helper.set_model_props(model, {"model_type": "segmentation", "class_names": json.dumps(["bg", "tree"]),
                                   "resolution": "10", "tiles_overlap": "50"})
    onnx.save(model, str(path))
    from tilecast.runtimes.onnx import OnnxRuntime

    rt = OnnxRuntime(str(path))
    cp = read_card(path, rt.metadata, rt.signature).to_params()
    assert cp.params["input_tile_size"] == (16, 16) and cp.params["input_overlap_size"] == (8, 8)
    assert cp.params["output_bands"]["class"]["classes"] == {0: "bg", 1: "tree"}
    assert cp.scaling["input"][0] == Scaling("z-score", mean=0.0, stddev=255.0)
    assert cp.params["resolution"] == (0.1, 0.1)


def test_tabular_model_card(tmp_path):
    """A per-pixel scikit-learn model (ONNX via skl2onnx): fed (pixels, bands) rows, scaled per column."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    rng = np.random.default_rng(0)
    x = rng.random((400, 2)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(int)
    clf = sklearn.LogisticRegression().fit((x - 0.5) / 0.25, y)
    onx = skl2onnx.convert_sklearn(clf, initial_types=[("x", FloatTensorType([None, 2]))],
                                   options={id(clf): {"zipmap": False}}, target_opset=17)
    path = tmp_path / "clf.onnx"
    path.write_bytes(onx.SerializeToString())
    r = CliRunner().invoke(main, ["card", str(path), "--bands", "a,b", "--scaling", "z-score:0.5:0.25",
                                  "--output-band", "label:uint8"])
    assert r.exit_code == 0, r.output
    assert "per-pixel (tabular) model" in r.output
    card = json.loads(card_path(path).read_text())
    assert card["properties"]["tilecast:layout"] == "pixels"
    assert card["properties"]["mlm:input"][0]["input"]["shape"] == [-1, 2]
    assert validate_card(card) == []
    data = rng.random((2, 30, 40)).astype(np.float32)
    img = write_raster(tmp_path / "ab.tif", data, descriptions=("a", "b"))
    load_model(str(path)).predict_image(img).to_geotiff(tmp_path / "o.tif")
    with rasterio.open(tmp_path / "o.tif") as ds:
        got = ds.read(1)
    want = clf.predict((data.reshape(2, -1).T - 0.5) / 0.25).reshape(30, 40)
    assert (got == want).mean() > 0.999


def test_earth_engine_band_layout_card(tmp_path):
    """Earth Engine's layout: one (N, H, W, 1) input per band, each scaled on its own."""
    from tests.onnx_models import per_band_sum

    path = per_band_sum(tmp_path / "pb.onnx", ["B4", "B8"], [1.0, 10.0])
    r = CliRunner().invoke(main, ["card", path, "--bands", "B4=red,B8=nir", "--tile", "16", "--layout", "bands",
                                  "--scaling", "scale:2", "--scaling", "offset:1", "--output-band", "output:float32"])
    assert r.exit_code == 0, r.output
    card = json.loads(card_path(path).read_text())
    assert [i["name"] for i in card["properties"]["mlm:input"]] == ["B4", "B8"]
    data = np.stack([np.full((20, 20), 4.0), np.full((20, 20), 3.0)]).astype(np.float32)
    img = write_raster(tmp_path / "s.tif", data, descriptions=("B4", "B8"))
    load_model(path).predict_image(img).to_geotiff(tmp_path / "o.tif")
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert np.allclose(ds.read(1), 4.0 / 2 + 10 * (3.0 - 1))


def test_band_layout_renames_bands_matched_by_common_name(tmp_path):
    """Earth Engine's per-band layout with bands matched by eo:common_name: the selected raster bands take the names
    of the card's inputs, so the result equals the stacked layout's on the same raster."""
    from tests.onnx_models import per_band_sum

    rng = np.random.default_rng(5)
    data = rng.normal(size=(2, 20, 20)).astype(np.float32)
    img = write_raster(tmp_path / "s.tif", data[::-1], descriptions=("B8", "B4"))  # nir first
    with rasterio.open(img, "r+") as ds:  # both spellings of the per-band tag tilecast reads
        ds.update_tags(1, common_name="nir")
        ds.update_tags(2, **{"eo:common_name": "red"})
    stacked = linear_1x1(tmp_path / "st.onnx", [1.0, 10.0], bias=0.0, layout="NHWC")
    r = CliRunner().invoke(main, ["card", stacked, "--bands", "red,nir", "--tile", "16", "--layout", "NHWC",
                                  "--output-band", "y:float32"])
    assert r.exit_code == 0, r.output
    load_model(stacked).predict_image(img).to_geotiff(tmp_path / "stacked.tif")
    with rasterio.open(tmp_path / "stacked.tif") as ds:
        expect = ds.read(1)
    assert np.allclose(expect, data[0] + 10 * data[1], atol=1e-5)
    per_band = per_band_sum(tmp_path / "pb.onnx", ["red", "nir"], [1.0, 10.0])
    r = CliRunner().invoke(main, ["card", per_band, "--bands", "red,nir", "--tile", "16", "--layout", "bands",
                                  "--output-band", "output:float32"])  # the card names the inputs by common name
    assert r.exit_code == 0, r.output
    load_model(per_band).predict_image(img).to_geotiff(tmp_path / "a.tif")
    # a card naming the bands as the sensor does, whose inputs are the common names
    write_card(build_card(name="pb", bands=["B4", "B8"], common_names={"B4": "red", "B8": "nir"},
                          input_names=["red", "nir"], input_tile_size=(16, 16), layout="bands",
                          output_bands=[OutputBand("output", np.dtype("float32"))], output_names=["output"]), per_band,
               overwrite=True)
    load_model(per_band).predict_image(img).to_geotiff(tmp_path / "b.tif")
    for name in ("a.tif", "b.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert np.array_equal(ds.read(1), expect), name


def test_cli_card_update_keeps_what_flags_do_not_name(tmp_path):
    from tests.onnx_models import per_band_sum

    path = per_band_sum(tmp_path / "pb.onnx", ["B4", "B8"], [1.0, 10.0])
    runner = CliRunner()
    r = runner.invoke(main, ["card", path, "--bands", "B4=red,B8=nir", "--tile", "16", "--layout", "bands",
                             "--scaling", "scale:2", "--scaling", "offset:1", "--output-band", "output:float32",
                             "--classes", "a,b"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["card", path, "--tile", "32", "--blend", "crop", "--name", "renamed"])
    assert r.exit_code == 0, r.output
    p = json.loads(card_path(path).read_text())["properties"]
    assert p["tilecast:tile_size"] == [32, 32] and p["tilecast:output_tile_size"] == [32, 32]
    assert p["mlm:name"] == "renamed"
    assert [i["value_scaling"] for i in p["mlm:input"]] == [[{"type": "scale", "value": 2.0}],
                                                             [{"type": "offset", "value": 1.0}]]
    assert [c["description"] for c in p["mlm:output"][0]["classification:classes"]] == ["a", "b"]


def test_a_card_write_that_fails_leaves_the_old_files_and_no_temporary_one(tmp_path, monkeypatch):
    """A full disk while the sidecar or the model with its embedded card is written: the previous files stay as
    they were and no ``.tmp`` file is left beside them."""
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 0.0, 0.0])
    write_card(_card(), path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tilecast.card.io.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_card(_card(), path, overwrite=True)
    monkeypatch.setattr(tilecast.card.io.os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
