"""Fix round 10 of the vector outputs: GeoJSON is RFC 7946 (WGS84 lon/lat) whatever the raster's CRS, with areas
measured where they were; the noding of neighbouring class-map polygons.

Outputs are read back with pyogrio and compared with the polygons of the class map (``rasterio.features.shapes``)
moved to lon/lat independently, with pyproj.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer

from conftest import write_raster
from tilecast.vectors import polygonize_raster

pyogrio = pytest.importorskip("pyogrio")

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)


def blobs(h: int = 40, w: int = 50) -> np.ndarray:
    a = np.zeros((h, w), np.uint8)
    a[5:20, 8:30] = 1
    a[10:15, 12:18] = 2  # a hole in class 1 with an island
    a[25:38, 3:45] = 3
    a[25:30, 40:50] = 1
    return a


def expected_polygons(data: np.ndarray, transform: Affine, to: str | None = None) -> list[tuple[int, shapely.Geometry]]:
    """The class map's polygons in map coordinates (then moved to ``to`` by pyproj), sorted by class and area."""
    out = []
    for g, v in rasterio.features.shapes(data, connectivity=4, transform=transform):
        out.append((int(v), shapely.geometry.shape(g)))
    out.sort(key=lambda p: (p[0], p[1].area))
    if to is not None:
        t = Transformer.from_crs("EPSG:32633", to, always_xy=True)
        out = [(v, shapely.transform(g, lambda xy: np.stack(t.transform(xy[:, 0], xy[:, 1]), axis=1)))
               for v, g in out]
    return out


def assert_geojson_is_rfc7946(path) -> None:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    assert "crs" not in doc  # RFC 7946: no crs member, coordinates are WGS84 lon/lat
    xy = np.concatenate([np.asarray(shapely.get_coordinates(shapely.geometry.shape(f["geometry"])))
                         for f in doc["features"]])
    assert (np.abs(xy[:, 0]) <= 180).all() and (np.abs(xy[:, 1]) <= 90).all()


def test_geojson_from_a_projected_raster_is_wgs84_lon_lat_with_areas_in_metres(tmp_path):
    """Symptom: a .geojson of a UTM class map held UTM metres (500080, 4599950) under a legacy ``crs`` member, which
    RFC 7946 forbids: most readers (web maps, geojson.io, GitHub) took them for degrees and misplaced every
    feature."""
    data = blobs()
    src = write_raster(tmp_path / "c.tif", data, transform=UTM)
    out = polygonize_raster(src, tmp_path / "c.geojson")
    assert_geojson_is_rfc7946(out)
    df = pyogrio.read_dataframe(out)
    assert df.crs.to_epsg() == 4326
    utm = expected_polygons(data, UTM)
    lonlat = expected_polygons(data, UTM, to="EPSG:4326")
    got = sorted(zip(df["class_id"], df.geometry, df["area"], strict=True), key=lambda r: (r[0], r[2]))
    assert len(got) == len(lonlat)
    for (value, geom, area), (v, expected), (_, metric) in zip(got, lonlat, utm, strict=True):
        assert value == v
        assert area == pytest.approx(metric.area)  # square metres of the UTM polygon, not square degrees
        assert shapely.hausdorff_distance(geom, expected) < 1e-7  # degrees: 1 cm (noded: a vertex at T-junctions)


def test_geojson_of_detections_and_of_a_projected_vector_crs_is_lon_lat(tmp_path):
    """The same through ``predict_vectors``: boxes of a detector, and ``vector_crs`` in another projected CRS
    (areas in its units, coordinates still lon/lat)."""
    import tilecast

    data = blobs()
    src = write_raster(tmp_path / "c.tif", data, transform=UTM)
    model = tilecast.Model.from_callable(lambda x: x[:, :1], layout="NCHW", input_tile_size=16,
                                         output_bands={"class": {"type": "uint8"}})
    out = model.predict_image(src).to_vector(tmp_path / "p.geojson", vector_crs="EPSG:32632")
    assert_geojson_is_rfc7946(out)
    df = pyogrio.read_dataframe(out)
    lonlat = expected_polygons(data, UTM, to="EPSG:4326")
    got = sorted(zip(df["class_id"], df.geometry, df["area"], strict=True), key=lambda r: (r[0], r[2]))
    assert len(got) == len(lonlat)
    to32 = Transformer.from_crs("EPSG:32633", "EPSG:32632", always_xy=True)
    for (value, geom, area), (v, expected), (_, metric) in zip(got, lonlat, expected_polygons(data, UTM),
                                                                   strict=True):
        assert value == v
        in32 = shapely.transform(metric, lambda xy: np.stack(to32.transform(xy[:, 0], xy[:, 1]), axis=1))
        assert area == pytest.approx(in32.area)
        assert shapely.hausdorff_distance(geom, expected) < 1e-7  # degrees: 1 cm (noded: a vertex at T-junctions)


def test_geojson_keeps_the_pixel_edges_of_a_centimetre_raster(tmp_path):
    """RFC 7946's default precision (7 decimals, about 1 cm) would move the edges of a 2 cm drone class map by a
    quarter of a pixel: the written lon/lat, moved back to UTM, lie within a millimetre of the pixel edges."""
    data = blobs()
    fine = Affine(0.02, 0.0, 500000.0, 0.0, -0.02, 4600000.0)
    src = write_raster(tmp_path / "c.tif", data, transform=fine)
    out = polygonize_raster(src, tmp_path / "c.geojson")
    df = pyogrio.read_dataframe(out)
    back = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    got = sorted(zip(df["class_id"], df.geometry, df["area"], strict=True), key=lambda r: (r[0], r[2]))
    for (value, geom, _), (v, expected) in zip(got, expected_polygons(data, fine), strict=True):
        assert value == v
        utm = shapely.transform(geom, lambda xy: np.stack(back.transform(xy[:, 0], xy[:, 1]), axis=1))
        assert shapely.hausdorff_distance(utm, expected) < 0.001
        assert shapely.area(shapely.symmetric_difference(utm, expected)) < 0.001 * shapely.length(expected)


def roads(h: int = 90, w: int = 120, seed: int = 2) -> np.ndarray:
    """Blobs crossed by long straight roads: T-junctions all along the roads' edges, and along the map's border."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(h, w)), 3)
    a = np.digitize(noise, np.quantile(noise, [0.3, 0.6])).astype(np.uint8)
    a[40:43, :] = 7
    a[:, 70:72] = 8
    a[10:20, 100:110] = 255  # nodata: junctions with "nothing" too
    return a


def test_a_reprojected_class_map_has_no_gaps_or_overlaps_at_t_junctions(tmp_path):
    """Symptom: where two regions meet on the long straight edge of a third (a road), the road had no vertex there.
    Reprojected (``vector_crs``, and every GeoJSON, which is lon/lat), its edge became a straight line between its
    reprojected ends while the junctions were reprojected onto the curve: the neighbours overlapped the road or left
    a gap (about 4 hectares along a 15 km road in UTM written as lon/lat). Now reprojected regions are noded first:
    the output is a valid coverage (``shapely.coverage_is_valid``: edges shared vertex for vertex)."""
    a = roads()
    far = Affine(100.0, 0.0, 300000.0, 0.0, -100.0, 4600000.0)  # 12 km wide, far from the central meridian
    src = write_raster(tmp_path / "r.tif", a, transform=far, nodata=255)
    for out in (polygonize_raster(src, tmp_path / "r.gpkg", vector_crs="EPSG:4326", strip_rows=7),
                polygonize_raster(src, tmp_path / "r.geojson", strip_rows=5)):
        g = pyogrio.read_dataframe(out).geometry.values
        assert shapely.coverage_is_valid(g), out
        assert shapely.area(g).sum() == pytest.approx(shapely.area(shapely.union_all(g)), rel=1e-12)
    plain = pyogrio.read_dataframe(polygonize_raster(src, tmp_path / "p.gpkg", strip_rows=7))
    assert not shapely.coverage_is_valid(plain.geometry.values)  # not reprojected: GDAL's polygons, unchanged


@pytest.mark.parametrize("strip", [1, 4, 13])
def test_streamed_noding_equals_noding_the_whole_map(strip):
    """The regions noded batch by batch as they become final (strips, or Dask chunks in any order) have exactly the
    vertices of the whole map's regions noded at once."""
    from tilecast.vectors.coverage import StreamNoder, noded
    from tilecast.vectors.polygonize import GridPolygonizer, StripPolygonizer

    a = roads(60, 80)
    ignore = (255,)
    whole = StripPolygonizer(ignore)
    everything = whole.add(0, a)
    everything = np.concatenate([everything.geoms, whole.finish().geoms])
    expected = sorted(shapely.to_wkb(shapely.normalize(noded(everything))))
    strips, noder, got = StripPolygonizer(ignore), StreamNoder(), []
    for r in range(0, a.shape[0], strip):
        got.append(noder.node(strips.add(r, a[r:r + strip]).geoms, strips.open.geoms))
    got.append(noder.node(strips.finish().geoms, np.empty(0, object)))
    assert sorted(shapely.to_wkb(shapely.normalize(np.concatenate(got)))) == expected
    grid, noder, got = GridPolygonizer(*a.shape, ignore), StreamNoder(), []
    blocks = [(r, c) for r in range(0, 60, 16) for c in range(0, 80, 24)]
    for k in np.random.default_rng(strip).permutation(len(blocks)):
        r, c = blocks[k]
        got.append(noder.node(grid.add(r, c, a[r:r + 16, c:c + 24]).geoms, grid.open.geoms))
    got.append(noder.node(grid.finish().geoms, np.empty(0, object)))
    assert sorted(shapely.to_wkb(shapely.normalize(np.concatenate(got)))) == expected


def test_vector_options_that_do_nothing_on_the_chosen_path_are_refused(tmp_path):
    """``chunk_size=`` sizes the Dask engine's chunks and was silently ignored by the local engine (which streams
    strips of ``strip_rows``); a class map still polygonizes with the options that apply."""
    import tilecast
    from tilecast.errors import SpecError
    from tilecast.vectors import predict_vectors

    a = np.zeros((10, 12), np.float32)
    a[2:5, 3:9] = 1
    src = write_raster(tmp_path / "in.tif", a, transform=Affine(10.0, 0, 500000.0, 0, -10.0, 4600000.0))
    model = tilecast.Model.from_callable(lambda x: x[:, :1], layout="NCHW", input_tile_size=8,
                                         output_bands={"c": "uint8"})
    with pytest.raises(SpecError, match=r"chunk_size.*Dask.*strip_rows"):
        predict_vectors(model.predict_image(src), tmp_path / "p.gpkg", chunk_size=512)
    assert not (tmp_path / "p.gpkg").exists()
    out = predict_vectors(model.predict_image(src), tmp_path / "p.gpkg", strip_rows=4)
    assert sorted(pyogrio.read_dataframe(out)["class_id"]) == [0, 1]  # the 0 background and the 1 block
