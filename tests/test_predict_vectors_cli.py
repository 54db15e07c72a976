"""``tilecast predict -o objects.gpkg``: the command line writes a detector's merged objects, read back with GDAL."""

from __future__ import annotations

import numpy as np
import pyogrio
from click.testing import CliRunner

from test_vectors import OV, SIDE, TILE, expected_bounds, scene, sort_rows  # noqa: F401 (scene is a fixture)
from test_vectors_models import square_detector
from tilecast.cli import main


def _predict(*args: str):
    return CliRunner().invoke(main, ["predict", *args])


def test_predict_writes_one_box_per_square_to_a_geopackage(tmp_path, scene):  # noqa: F811
    path, corners = scene
    model = square_detector(tmp_path / "sq.onnx", SIDE, TILE + 2 * OV)
    out = tmp_path / "squares.gpkg"
    res = _predict(path, "--model", model, "--tile", str(TILE), "--overlap", str(OV), "--layout", "NCHW",
                   "--det-type", "yolo_v8", "--confidence", "0.5", "--classes", "square", "-o", str(out), "-q")
    assert res.exit_code == 0, res.output
    df = pyogrio.read_dataframe(out)
    assert len(df) == len(corners)
    assert np.array_equal(sort_rows(df.geometry.bounds.values), sort_rows(expected_bounds(corners)))
    assert set(df.class_name) == {"square"} and df.crs.to_epsg() == 32633


def test_predict_refuses_raster_options_with_a_vector_output(tmp_path, scene):  # noqa: F811
    path, _ = scene
    model = square_detector(tmp_path / "sq.onnx", SIDE, TILE + 2 * OV)
    res = _predict(path, "--model", model, "--tile", str(TILE), "--overlap", str(OV), "--layout", "NCHW",
                   "--compress", "LZW", "-o", str(tmp_path / "x.gpkg"))
    assert res.exit_code != 0 and "--compress" in res.output and "raster outputs" in res.output
    assert not (tmp_path / "x.gpkg").exists()
    res = _predict(path, "--model", model, "--tile", str(TILE), "--overlap", str(OV), "--layout", "NCHW",
                   "--min-area", "5", "-o", str(tmp_path / "x.tif"))
    assert res.exit_code != 0 and "--min-area" in res.output and "vector outputs" in res.output


def test_info_shows_how_a_deepness_detector_is_decoded(tmp_path):
    meta = {"model_type": "Detector", "det_type": "YOLO_Ultralytics", "class_names": '{"0": "roof"}',
            "det_conf": "0.5", "det_iou_thresh": "0.3", "tiles_size": str(TILE + 2 * OV)}
    model = square_detector(tmp_path / "deepness.onnx", SIDE, TILE + 2 * OV, metadata=meta)
    res = CliRunner().invoke(main, ["info", model])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.lstrip().startswith("detector"))
    assert "yolo_v8" in line and "0.5" in line and "0.3" in line and "roof" in line
    plain = square_detector(tmp_path / "plain.onnx", SIDE, TILE + 2 * OV)
    assert "detector" not in CliRunner().invoke(main, ["info", plain]).output
