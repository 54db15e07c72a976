"""Polygons across seams equal a whole-raster polygonization: class maps (streamed strip by strip, seams dissolved)
and instance masks (Mask R-CNN-style outputs, instances cut by tile edges merged into one polygon)."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage

import tilecast
from conftest import write_raster
from tilecast.vectors import polygonize_raster, to_geodataframe
from tilecast.vectors.metadata import detector_spec
from tilecast.vectors.polygonize import StripPolygonizer

TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)


def class_map(h: int, w: int, seed: int = 1) -> np.ndarray:
    """Four classes in smooth blobs: regions that cross many tiles, with holes and islands."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6)
    edges = np.quantile(noise, [0.25, 0.5, 0.75])
    return np.digitize(noise, edges).astype(np.uint8)


def whole_raster_polygons(data: np.ndarray, mask: np.ndarray | None = None) -> list[tuple[int, shapely.Geometry]]:
    return [(int(v), shapely.transform(shapely.geometry.shape(g), lambda xy: np.c_[
        TRANSFORM.c + xy[:, 0] * TRANSFORM.a, TRANSFORM.f + xy[:, 1] * TRANSFORM.e]))
        for g, v in rasterio.features.shapes(data, mask=mask, connectivity=4)]


def assert_same_polygons(got_geoms, got_values, expected) -> None:
    """Each expected polygon has exactly one equal polygon of the same class, and nothing else is there."""
    assert all(shapely.is_valid(g) for g in got_geoms)
    assert len(got_geoms) == len(expected)
    tree = shapely.STRtree(np.asarray(list(got_geoms)))
    used = set()
    for value, poly in expected:
        hits = [i for i in tree.query(poly.representative_point(), predicate="intersects")
                if int(got_values[i]) == value and shapely.equals(got_geoms[i], poly)]
        assert len(hits) == 1, f"class {value} polygon at {poly.representative_point()} matched {len(hits)} times"
        used.add(hits[0])
    assert len(used) == len(expected)


def test_strip_polygonizer_dissolves_seams():
    data = class_map(120, 90)
    poly = StripPolygonizer()
    got = [poly.add(r, data[r: r + 7]) for r in range(0, 120, 7)] + [poly.finish()]
    geoms = np.concatenate([g.geoms for g in got])
    values = np.concatenate([g.values for g in got])
    expected = [(int(v), shapely.geometry.shape(g)) for g, v in rasterio.features.shapes(data, connectivity=4)]
    assert_same_polygons(geoms, values, expected)
    assert poly.peak_open < len(expected)


def test_class_map_prediction_polygons_equal_whole_raster(tmp_path):
    data = class_map(150, 170)
    path = write_raster(tmp_path / "classes.tif", data, transform=TRANSFORM)
    model = tilecast.Model.from_callable(
        lambda x: x[:, :1], layout="NCHW", input_tile_size=32, input_overlap_size=4,
        output_bands={"class": {"type": "uint8", "classes": ["water", "grass", "forest", "urban"]}},
    )
    gdf = to_geodataframe(model.predict_image(path), strip_rows=1)  # a seam every tile row
    expected = whole_raster_polygons(data)
    assert_same_polygons(list(gdf.geometry), gdf.class_id.values, expected)
    assert set(gdf.class_name) == {"water", "grass", "forest", "urban"}
    assert np.allclose(gdf.area.values, gdf.geometry.area.values)
    assert gdf.area.sum() == pytest.approx(150 * 170 * 100.0)


def test_polygonize_raster_skips_nodata_and_filters(tmp_path):
    data = class_map(130, 110, seed=3)
    data[40:60, 20:90] = 255
    path = write_raster(tmp_path / "classes.tif", data, transform=TRANSFORM, nodata=255)
    out = polygonize_raster(path, tmp_path / "classes.gpkg", strip_rows=9)
    df = pyogrio.read_dataframe(out)
    expected = whole_raster_polygons(data, mask=data != 255)
    assert_same_polygons(list(df.geometry), df.class_id.values, expected)
    assert 255 not in set(df.class_id)
    big = polygonize_raster(path, tmp_path / "big.fgb", strip_rows=9, min_area=5000.0, simplify=10.0)
    dfb = pyogrio.read_dataframe(big)
    assert 0 < len(dfb) < len(df) and (dfb.area >= 5000.0).all() and dfb.geometry.is_valid.all()


def blobs_image(h: int, w: int) -> np.ndarray:
    """Separate blobs: ellipses from a few pixels to three tiles across, and a U that one tile sees as two pieces."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), bool)
    rng = np.random.default_rng(7)
    for _ in range(40):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(3, 40), rng.integers(3, 40)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if not (ndimage.binary_dilation(blob, iterations=2) & img).any():
            img |= blob
    u = np.zeros((h, w), bool)
    u[150:190, 10:20] = u[150:190, 60:70] = u[180:190, 10:70] = True
    if not (ndimage.binary_dilation(u, iterations=2) & img).any():
        img |= u
    return img.astype(np.uint8)


def mask_rcnn_like(x: np.ndarray) -> dict[str, np.ndarray]:
    """One image in, torchvision's Mask R-CNN outputs out: a box, label, score and full-size mask per blob."""
    labels, n = ndimage.label(x[0, 0] > 0.5)
    h, w = labels.shape
    boxes = np.zeros((n, 4), np.float32)
    masks = np.zeros((n, 1, h, w), np.float32)
    for i, sl in enumerate(ndimage.find_objects(labels)):
        boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        masks[i, 0] = labels == i + 1
    return {"boxes": boxes, "labels": np.ones(n, np.int64), "scores": np.full(n, 0.9, np.float32), "masks": masks}


@pytest.mark.parametrize("overlap", [8, 0])
def test_instance_polygons_across_seams_equal_whole_raster(tmp_path, overlap):
    """With an overlap, pieces match inside the pixels both tiles saw; without, along the seam they share."""
    img = blobs_image(200, 230)
    path = write_raster(tmp_path / "blobs.tif", img, transform=TRANSFORM)
    model = tilecast.Model.from_callable(
        mask_rcnn_like, outputs=("boxes", "labels", "scores", "masks"), layout="NCHW", input_tile_size=48,
        input_overlap_size=overlap, batch_size=1,
    )
    pred = model.predict_image(path)
    gdf = to_geodataframe(pred, detector=detector_spec(det_type="torchvision", class_names={1: "blob"}))
    labels, _ = ndimage.label(img)
    expected = [(1, g) for _, g in whole_raster_polygons(labels.astype(np.int32), mask=labels > 0)]
    assert len({int(v) for v in np.unique(labels)}) - 1 == len(expected)  # one polygon per blob
    assert_same_polygons(list(gdf.geometry), gdf.class_id.values, expected)
    assert gdf.geometry.area.sum() == pytest.approx(img.sum() * 100.0)
    assert np.allclose(gdf.area.values, gdf.geometry.area.values)


def polygon_keys(geoms, values) -> list[tuple[int, bytes]]:
    return sorted((int(v), shapely.to_wkb(g)) for g, v in zip(geoms, values, strict=True))


def test_grid_polygonizer_in_any_order_equals_strips_vertex_for_vertex():
    """Blocks of a grid, in any order, give the strips' polygons, vertex for vertex, whatever the block sizes."""
    from tilecast.vectors.polygonize import ClassPolygons, GridPolygonizer

    data = class_map(150, 170)
    strips = StripPolygonizer()
    whole = ClassPolygons.concat([strips.add(0, data), strips.finish()])
    reference = polygon_keys(whole.geoms, whole.values)
    rng = np.random.default_rng(0)
    for ch, cw in ((32, 32), (20, 50), (7, 170), (150, 170)):
        blocks = [(r, c) for r in range(0, 150, ch) for c in range(0, 170, cw)]
        grid = GridPolygonizer(150, 170)
        got = [grid.add(r, c, data[r: r + ch, c: c + cw]) for r, c in (blocks[i] for i in rng.permutation(len(blocks)))]
        got = ClassPolygons.concat([*got, grid.finish()])
        assert polygon_keys(got.geoms, got.values) == reference, (ch, cw)
        assert all(shapely.is_valid(got.geoms))
        assert (grid.peak_open > 0) == (len(blocks) > 1)  # pieces were held across chunk borders
    rows = StripPolygonizer()
    by_row = ClassPolygons.concat([*(rows.add(r, data[r: r + 1]) for r in range(150)), rows.finish()])
    assert polygon_keys(by_row.geoms, by_row.values) == reference  # strips of one row: the same vertices


def test_class_map_on_the_dask_engine_gives_identical_features(tmp_path):
    distributed = pytest.importorskip("distributed")
    data = class_map(150, 170)
    data[60:75, 30:120] = 255
    path = write_raster(tmp_path / "classes.tif", data, transform=TRANSFORM, nodata=255)
    model = tilecast.Model.from_callable(
        lambda x: x[:, :1], layout="NCHW", input_tile_size=32, input_overlap_size=4,
        output_bands={"class": {"type": "uint8", "classes": ["water", "grass", "forest", "urban"]}},
    )
    pred = model.predict_image(path)
    local = to_geodataframe(pred, strip_rows=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        remote = to_geodataframe(pred, engine=tilecast.Dask(client=client), chunk_size=64)
    assert polygon_keys(remote.geometry, remote.class_id) == polygon_keys(local.geometry, local.class_id)
    assert_same_polygons(list(remote.geometry), remote.class_id.values,
                         whole_raster_polygons(data, mask=data != 255))
    assert sorted(remote.class_name) == sorted(local.class_name)


def test_simplified_regions_keep_sharing_their_edges(tmp_path):
    """--simplify simplifies the map's regions together (coverage_simplify): no gap or overlap opens between
    neighbours, the total area stays the map's, and strip size does not change a vertex. One by one, it would."""
    data = class_map(200, 230, seed=5)
    path = write_raster(tmp_path / "classes.tif", data, transform=TRANSFORM)
    runs = [pyogrio.read_dataframe(polygonize_raster(path, tmp_path / f"s{rows}.gpkg", strip_rows=rows,
                                                     simplify=25.0)) for rows in (7, 200)]
    for df in runs:
        assert shapely.coverage_is_valid(df.geometry.values) and df.geometry.is_valid.all()
        assert df.geometry.area.sum() == pytest.approx(200 * 230 * 100.0)
    assert polygon_keys(runs[0].geometry, runs[0].class_id) == polygon_keys(runs[1].geometry, runs[1].class_id)
    full = pyogrio.read_dataframe(polygonize_raster(path, tmp_path / "full.gpkg"))
    assert shapely.get_num_coordinates(runs[0].geometry.values).sum() < 0.7 * shapely.get_num_coordinates(
        full.geometry.values).sum()
    one_by_one = shapely.simplify(full.geometry.values, 25.0, preserve_topology=True)
    assert not shapely.coverage_is_valid(one_by_one)
