"""Review of the vector outputs: class maps in the dtypes GDAL's polygonize does not take."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from tilecast.vectors.polygonize import StripPolygonizer

pyogrio = pytest.importorskip("pyogrio")


def test_uint32_class_raster_with_the_usual_nodata_polygonizes_only_its_classes(tmp_path):
    """Symptom: a uint32 class raster with nodata 4294967295 came out with its nodata as a region of class -1
    (the values were cast to int32 before nodata was masked)."""
    from tilecast.vectors import polygonize_raster

    a = np.full((6, 6), 4294967295, np.uint32)
    a[1:3, 1:3] = 7
    path = tmp_path / "u32.tif"
    with rasterio.open(path, "w", driver="GTiff", width=6, height=6, count=1, dtype="uint32", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 5000000), nodata=4294967295) as ds:
        ds.write(a, 1)
    out = polygonize_raster(path, tmp_path / "u32.gpkg", strip_rows=2)
    df = pyogrio.read_dataframe(out)
    assert df["class_id"].tolist() == [7] and df["class_name"].tolist() == ["7"]
    assert df["area"].tolist() == [400.0] and df.geometry.area.tolist() == [400.0]


def test_values_beyond_int32_keep_their_value_and_stay_apart():
    """Values GDAL cannot take as they are (int64, uint32 past 2**31) are polygonized as exact codes, so two
    classes that an int32 cast would fold together (2**32 + 1 and 1) stay two regions with their own values."""
    a = np.array([[1, 1, 2**32 + 1], [1, 2**40, 2**32 + 1]], np.int64)
    poly = StripPolygonizer([2**40])
    parts = [poly.add(0, a[:1]), poly.add(1, a[1:]), poly.finish()]
    got = sorted((int(v), float(g.area)) for p in parts for g, v in zip(p.geoms, p.values, strict=True))
    assert got == [(1, 3.0), (2**32 + 1, 2.0)]
