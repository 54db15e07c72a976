"""``tilecast polygonize`` and the checks ``tilecast predict`` makes before writing vectors."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
from click.testing import CliRunner

from test_vectors_polygons import TRANSFORM, class_map, whole_raster_polygons
from tilecast.cli.polygonize import check_output_options, polygonize
from tilecast.vectors import VectorFormatError


def test_polygonize_command(tmp_path, raster):
    data = class_map(90, 70, seed=5)
    path = raster(data, transform=TRANSFORM)
    out = tmp_path / "classes.gpkg"
    res = CliRunner().invoke(polygonize, [path, "-o", str(out), "--strip-rows", "8", "--ignore", "0", "-q"])
    assert res.exit_code == 0, res.output
    df = pyogrio.read_dataframe(out)
    expected = [p for p in whole_raster_polygons(data) if p[0] != 0]
    assert len(df) == len(expected) and set(df.class_id) == {1, 2, 3}
    assert df.geometry.area.sum() == pytest.approx(sum(g.area for _, g in expected))
    again = CliRunner().invoke(polygonize, [path, "-o", str(out), "-q"])
    assert again.exit_code == 1 and "OutputExistsError" in again.output and "--overwrite" in again.output


def test_polygonize_refuses_a_continuous_raster(tmp_path, raster):
    path = raster(np.zeros((20, 20), np.float32))
    res = CliRunner().invoke(polygonize, [path, "-o", str(tmp_path / "x.gpkg")])
    assert res.exit_code == 1 and "VectorFormatError" in res.output and "class map" in res.output
    res = CliRunner().invoke(polygonize, [path, "-o", str(tmp_path / "x.tif")])
    assert res.exit_code == 1 and "not a vector format" in res.output


def test_raster_and_vector_options_are_not_mixed():
    assert check_output_options("trees.gpkg", {"compress": "DEFLATE"}) is True
    assert check_output_options("trees.tif", {"compress": "ZSTD"}) is False
    with pytest.raises(VectorFormatError, match="--compress, --no-overviews only apply to raster outputs"):
        check_output_options("trees.gpkg", {"compress": "ZSTD", "no_overviews": True})
    with pytest.raises(VectorFormatError, match="--min-area only apply to vector outputs"):
        check_output_options("classes.tif", {"min_area": 5.0})


def test_write_vectors_is_what_predict_calls_for_a_vector_output(tmp_path, raster):
    """``tilecast predict -o x.gpkg`` hands its options to write_vectors (registered by the CLI's predict)."""
    import tilecast
    from tilecast.cli.polygonize import write_vectors

    data = class_map(60, 50, seed=2)
    path = raster(data, transform=TRANSFORM)
    model = tilecast.Model.from_callable(lambda x: x[:, :1], layout="NCHW", input_tile_size=16,
                                         output_bands={"class": "uint8"})
    opts = {"overwrite": False, "vector_crs": "EPSG:4326", "min_area": None, "simplify": None, "det_type": None,
            "confidence": None, "iou": None, "engine": "local"}
    out = tmp_path / "classes.fgb"
    write_vectors(model.predict_image(path), str(out), opts, quiet=True)
    df = pyogrio.read_dataframe(out)
    assert df.crs.to_epsg() == 4326 and len(df) == len(whole_raster_polygons(data))
