"""Detectors to vectors: analytic ONNX detectors over bright squares placed across tile seams give exactly one box per
square, at the right place in the raster's CRS, with the local and the Dask engine, in every vector format."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import shapely

import tilecast
from test_vectors_models import scattered_corners, square_detector, squares_image, torchvision_detector
from tilecast.vectors import detector_of, predict_vectors, to_geodataframe
from tilecast.vectors.merge import SeamMerger, TileGrid
from tilecast.vectors.metadata import detector_spec
from tilecast.vectors.run import detector_job
from tilecast.vectors.tiles import detect_tiles, tile_objects

SIDE, TILE, OV = 8, 64, 12
H, W = 250, 300
X0, Y0, RES = 500000.0, 4600000.0, 10.0


def expected_bounds(corners, side=SIDE) -> np.ndarray:
    """Map bounds of each square, computed from its pixel corner alone."""
    return np.array([[X0 + c * RES, Y0 - (r + side) * RES, X0 + (c + side) * RES, Y0 - r * RES] for r, c in corners])


def sort_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from conftest import write_raster

    d = tmp_path_factory.mktemp("squares")
    corners = scattered_corners(H, W, SIDE, TILE, 70)
    path = write_raster(d / "squares.tif", squares_image(H, W, corners, SIDE))
    return path, corners


def square_model(tmp_path, layout="yolo_v8", metadata=None, **params):
    path = square_detector(tmp_path / f"sq_{layout}.onnx", SIDE, TILE + 2 * OV, layout=layout, metadata=metadata)
    return tilecast.Model.from_onnx(path, input_tile_size=TILE, input_overlap_size=OV, layout="NCHW", **params)


def test_squares_across_seams_give_one_box_each(tmp_path, scene):
    path, corners = scene
    pred = square_model(tmp_path).predict_image(path)
    gdf = to_geodataframe(pred, detector="yolo_v8")
    assert len(gdf) == len(corners)
    assert np.array_equal(sort_rows(gdf.geometry.bounds.values), sort_rows(expected_bounds(corners)))
    assert gdf.crs.to_epsg() == 32633
    assert set(gdf.columns) >= {"class_id", "class_name", "score", "tile_row", "tile_col"}
    assert (gdf.score == 1.0).all() and (gdf.class_id == 0).all()


def test_the_merger_is_what_removes_the_duplicates(tmp_path, scene):
    """Without merging, tiles report squares in the overlap twice or four times: the test above can fail."""
    path, corners = scene
    pred = square_model(tmp_path).predict_image(path)
    spec = detector_spec(det_type="yolo_v8")
    job = detector_job(pred)
    grid = TileGrid(pred.plan)
    merger = SeamMerger(pred.plan, spec)
    raw = final_now = 0
    for tile, dets in detect_tiles(job, spec):
        objs = tile_objects(tile, dets, grid, "box")
        raw += len(objs)
        final_now += len(merger.add_tile(tile.row, tile.col, objs))
    rest = len(merger.finish())
    assert raw > len(corners) + 20  # many duplicates to merge
    assert final_now + rest == len(corners)
    assert final_now > 0  # objects away from the seams are written at once
    assert merger.peak_pending < raw


def test_tile_attributes_name_the_tile_that_saw_the_object(tmp_path, scene):
    path, _ = scene
    gdf = to_geodataframe(square_model(tmp_path).predict_image(path), detector="yolo_v8")
    b = gdf.geometry.bounds.values
    col = ((b[:, 0] - X0) / RES).astype(int)
    row = ((Y0 - b[:, 3]) / RES).astype(int)
    # the tile's view (core plus overlap) holds the whole square
    assert (gdf.tile_col * TILE - OV <= col).all() and (col + SIDE <= (gdf.tile_col + 1) * TILE + OV).all()
    assert (gdf.tile_row * TILE - OV <= row).all() and (row + SIDE <= (gdf.tile_row + 1) * TILE + OV).all()


@pytest.mark.parametrize("ext", [".parquet", ".gpkg", ".fgb", ".geojson", ".shp"])
def test_every_format_reads_back_with_gdal(tmp_path, scene, ext):
    """GDAL (pyogrio) reads every format; its wheels have no Parquet driver, so GeoParquet is read by geopandas."""
    import geopandas as gpd

    path, corners = scene
    pred = square_model(tmp_path).predict_image(path)
    out = predict_vectors(pred, tmp_path / f"boxes{ext}", detector="yolo_v8", class_names=["square"])
    df = gpd.read_parquet(out) if ext == ".parquet" else pyogrio.read_dataframe(out)
    assert len(df) == len(corners)
    assert df.crs.to_epsg() == (4326 if ext == ".geojson" else 32633)  # GeoJSON is lon/lat (RFC 7946)
    if ext == ".geojson":
        df = df.to_crs(32633)
    assert np.allclose(sort_rows(df.geometry.bounds.values.round(3)), sort_rows(expected_bounds(corners)), rtol=0,
                       atol=1e-3)
    assert set(df.class_name) == {"square"}
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folder is gone


def test_geoparquet_metadata(tmp_path, scene):
    import pyarrow.parquet as pq

    path, _ = scene
    out = predict_vectors(square_model(tmp_path).predict_image(path), tmp_path / "b.parquet", detector="yolo_v8")
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["id"]["code"] == 32633


def test_refuses_to_overwrite(tmp_path, scene):
    path, _ = scene
    pred = square_model(tmp_path).predict_image(path)
    out = predict_vectors(pred, tmp_path / "b.gpkg", detector="yolo_v8")
    with pytest.raises(FileExistsError, match="overwrite"):
        predict_vectors(pred, out, detector="yolo_v8")
    predict_vectors(pred, out, detector="yolo_v8", overwrite=True)


def test_vector_crs_reprojects(tmp_path, scene):
    from pyproj import Transformer

    path, corners = scene
    pred = square_model(tmp_path).predict_image(path)
    gdf = to_geodataframe(pred, detector="yolo_v8", vector_crs="EPSG:4326")
    assert gdf.crs.to_epsg() == 4326
    t = Transformer.from_crs(32633, 4326, always_xy=True)
    e = expected_bounds(corners)
    lon, lat = t.transform(e[:, 0], e[:, 1])
    got = gdf.geometry.bounds.values
    assert np.allclose(sort_rows(got)[:, :2], sort_rows(np.stack([lon, lat, lon, lat], 1))[:, :2], atol=1e-4)


@pytest.mark.parametrize("layout,det_type", [("yolo_v5", "YOLO_v5_or_v7_default"), ("yolo_v8", "YOLO_Ultralytics")])
def test_deepness_metadata_makes_a_detector(tmp_path, scene, layout, det_type):
    path, corners = scene
    meta = {"model_type": "Detector", "det_type": det_type, "class_names": json.dumps({"0": "roof"}),
            "det_conf": "0.5", "det_iou_thresh": "0.3", "tiles_size": str(TILE + 2 * OV), "tiles_overlap": "25"}
    model = square_model(tmp_path, layout=layout, metadata=meta)
    pred = model.predict_image(path)
    spec = detector_of(pred)
    assert spec is not None and spec.confidence == 0.5 and spec.iou == 0.3 and spec.class_names == {0: "roof"}
    gdf = to_geodataframe(pred)
    assert len(gdf) == len(corners) and set(gdf.class_name) == {"roof"}
    assert len(to_geodataframe(pred, confidence=1.0)) == len(corners)  # flags override the metadata
    assert detector_of(pred, confidence=0.9).confidence == 0.9


def test_generic_layout_declared_in_the_card(tmp_path, scene):
    path, corners = scene
    model = square_model(tmp_path, layout="generic_xyxy")
    gdf = to_geodataframe(model.predict_image(path),
                          detector=detector_spec(det_type="generic", box_format="xyxy", objectness=True))
    assert np.array_equal(sort_rows(gdf.geometry.bounds.values), sort_rows(expected_bounds(corners)))


def test_oriented_boxes_across_seams(tmp_path, scene):
    path, corners = scene
    gdf = to_geodataframe(square_model(tmp_path, layout="yolo_obb").predict_image(path), detector="yolo_obb")
    assert np.array_equal(sort_rows(gdf.geometry.bounds.values), sort_rows(expected_bounds(corners)))
    assert np.allclose(gdf.area.values, SIDE * SIDE * RES * RES)  # oriented boxes carry their area


def test_torchvision_style_outputs(tmp_path, scene):
    path, corners = scene
    onnx_path = torchvision_detector(tmp_path / "tv.onnx", SIDE, TILE + 2 * OV)
    model = tilecast.Model.from_onnx(onnx_path, input_tile_size=TILE, input_overlap_size=OV, layout="NCHW")
    pred = model.predict_image(path)
    gdf = to_geodataframe(pred, detector="torchvision", class_names={1: "square"})
    assert len(gdf) == len(corners)
    assert np.array_equal(sort_rows(gdf.geometry.bounds.values), sort_rows(expected_bounds(corners)))
    assert set(gdf.class_name) == {"square"} and (gdf.class_id == 1).all()


def test_region_keeps_objects_centred_inside_it(tmp_path, scene):
    path, corners = scene
    pred = square_model(tmp_path).predict_image(path, window=((40, 200), (30, 260)))
    gdf = to_geodataframe(pred, detector="yolo_v8")
    inside = [(r, c) for r, c in corners if 40 <= r + SIDE / 2 < 200 and 30 <= c + SIDE / 2 < 260]
    assert np.array_equal(sort_rows(gdf.geometry.bounds.values), sort_rows(expected_bounds(inside)))


def test_dask_engine_gives_identical_features(tmp_path, scene):
    distributed = pytest.importorskip("distributed")
    path, corners = scene
    pred = square_model(tmp_path).predict_image(path)
    local = to_geodataframe(pred, detector="yolo_v8")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        remote = to_geodataframe(pred, detector="yolo_v8", engine="dask", client=client)
    assert len(remote) == len(corners)
    assert list(local.class_id) == list(remote.class_id)
    assert all(shapely.equals(a, b) for a, b in zip(local.geometry, remote.geometry, strict=True))
    assert list(local.tile_row) == list(remote.tile_row) and list(local.tile_col) == list(remote.tile_col)


def test_deepness_model_zoo_card_runs_unchanged(tmp_path):
    """Model.load converts Deepness keys into a card (x / 255 scaling, tile and overlap from tiles_size and
    tiles_overlap); the detector's parameters come through the card's source metadata."""
    import warnings

    from conftest import write_raster
    from tilecast.errors import TilecastWarning

    corners = scattered_corners(H, W, SIDE, TILE, 40, seed=3)
    path = write_raster(tmp_path / "rgb.tif", squares_image(H, W, corners, SIDE, value=255, dtype="uint8"),
                        descriptions=["red"])
    meta = {"model_type": "Detector", "det_type": "YOLO_Ultralytics", "class_names": json.dumps({"0": "roof"}),
            "det_conf": "0.5", "tiles_size": str(TILE + 2 * OV), "tiles_overlap": f"{100 * 2 * OV / (TILE + 2 * OV)}"}
    onnx_path = square_detector(tmp_path / "deepness.onnx", SIDE, TILE + 2 * OV, metadata=meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TilecastWarning)  # today's card warns that detections are not decoded
        model = tilecast.Model.load(onnx_path)
    assert tuple(model.spec.geometry.overlap) == (OV, OV)
    pred = model.predict_image(path)
    assert detector_of(pred).confidence == 0.5
    gdf = to_geodataframe(pred)
    assert np.array_equal(sort_rows(gdf.geometry.bounds.values), sort_rows(expected_bounds(corners)))
    assert set(gdf.class_name) == {"roof"}


def test_objects_centred_on_masked_input_are_dropped(tmp_path):
    """The rule for nodata: an object whose centre pixel is masked is dropped, by every tile that sees it (the
    analytic detector still finds such a square from its corners, so only the rule removes it)."""
    from conftest import write_raster

    corners = scattered_corners(H, W, SIDE, TILE, 70)
    img = squares_image(H, W, corners, SIDE)
    masked = corners[::2]
    for r, c in masked:
        img[r + SIDE // 2, c + SIDE // 2] = -9999.0
    path = write_raster(tmp_path / "masked.tif", img, nodata=-9999.0)
    gdf = to_geodataframe(square_model(tmp_path).predict_image(path), detector="yolo_v8")
    kept = corners[1::2]
    assert any(r % TILE > TILE - SIDE or c % TILE > TILE - SIDE for r, c in masked)  # some lie across seams
    assert np.array_equal(sort_rows(gdf.geometry.bounds.values), sort_rows(expected_bounds(kept)))


def test_boxes_are_written_as_the_same_wkb_as_through_shapely():
    """Boxes go to WKB straight from their bounds; the bytes are shapely's, in the grid's CRS and reprojected."""
    from affine import Affine
    from pyproj import CRS

    from tilecast.vectors.features import FeatureOutput
    from tilecast.vectors.merge import Objects

    class Capture:
        def __init__(self):
            self.wkb = []

        def write(self, geoms, columns):
            self.wkb += list(shapely.to_wkb(geoms))

        def write_wkb(self, wkb, columns):
            self.wkb += list(wkb.to_numpy(zero_copy_only=False))

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 5000, (500, 2))
    boxes = shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + rng.uniform(0, 30, 500), xy[:, 1] + rng.uniform(0, 30, 500))
    objs = Objects(boxes, rng.random(500).astype(np.float32), rng.integers(0, 3, 500).astype(np.int32),
                   np.zeros(500, np.int32), np.zeros(500, np.int32), np.zeros(500, bool))
    utm = CRS.from_epsg(32633)
    for crs in (utm, CRS.from_epsg(4326)):
        got = []
        for fast in (True, False):
            cap = Capture()
            FeatureOutput(cap, Affine(0.5, 0, X0, 0, -0.5, Y0), utm, {}, vector_crs=crs, with_area=False,
                          boxes=fast).objects(objs)
            got.append(cap.wkb)
        assert got[0] == got[1] and len(got[0]) == 500
