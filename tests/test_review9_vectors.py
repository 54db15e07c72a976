"""Review 9 of the vector outputs: class ids beyond int32, masks, areas in geographic CRSs, simplified coverages,
degenerate detections, bad options and paths.

Every output is read back (pyogrio for the GDAL formats, pyarrow for GeoParquet, which this GDAL may lack) and its
polygons are burnt back with ``rasterio.features.rasterize`` and compared with the class map, pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine

from conftest import write_raster
from tilecast.vectors import polygonize_raster

pyogrio = pytest.importorskip("pyogrio")

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)
FORMATS = ("gpkg", "fgb", "geojson", "shp", "parquet")


def read(path) -> tuple[list, list[int], list[float]]:
    """(geometries, class ids, areas) of a written output, whatever its format."""
    path = str(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        return (list(shapely.from_wkb(t["geometry"].to_pylist())), t["class_id"].to_pylist(),
                t["area"].to_pylist())
    df = pyogrio.read_dataframe(path)
    if path.endswith(".geojson"):  # lon/lat (RFC 7946): back to the UTM grid the tests burn on
        df = df.to_crs("EPSG:32633")
    return list(df.geometry.values), [int(v) for v in df["class_id"]], [float(v) for v in df["area"]]


def burn(geoms, values, shape, transform, fill) -> np.ndarray:
    """The polygons burnt back into pixels, and a check that no pixel is covered twice."""
    out = np.full(shape, fill, dtype=object)
    count = np.zeros(shape, int)
    for g, v in zip(geoms, values, strict=True):
        m = rasterio.features.rasterize([g], out_shape=shape, transform=transform, fill=0, default_value=1,
                                        dtype="uint8").astype(bool)
        out[m] = v
        count += m
    assert count.max() <= 1
    return out


@pytest.mark.parametrize("dtype, big", [("uint32", 2**32 - 2), ("int64", 2**40 + 1), ("int64", -(2**40))])
@pytest.mark.parametrize("ext", FORMATS)
def test_class_ids_beyond_int32_are_written_exactly(tmp_path, dtype, big, ext):
    """Symptom: the class_id field was int32, so class 4294967294 of a uint32 map was written as -2 and 2**40 + 1
    of an int64 map as 1 (class_name kept the value: the two disagreed)."""
    a = np.zeros((7, 9), dtype)
    a[1:3, 1:4] = big
    a[4:6, 5:8] = 3
    src = write_raster(tmp_path / "big.tif", a, transform=UTM)
    out = polygonize_raster(src, tmp_path / f"big.{ext}", strip_rows=2)
    geoms, ids, _ = read(out)
    assert sorted(ids) == sorted([0, 3, big])
    assert (burn(geoms, ids, a.shape, UTM, None) == a.astype(object)).all()


def test_small_class_maps_keep_an_int32_class_id(tmp_path):
    """The field stays int32 for the dtypes that fit in it (outputs of those maps do not change)."""
    for dtype in ("uint8", "int16", "uint16", "int32"):
        src = write_raster(tmp_path / f"{dtype}.tif", np.arange(6, dtype=dtype).reshape(2, 3), transform=UTM)
        out = polygonize_raster(src, tmp_path / f"{dtype}.gpkg")
        assert pyogrio.read_info(out)["dtypes"][0] == "int32", dtype


@pytest.mark.parametrize("dtype", ["uint32", "int64"])
def test_a_prediction_to_vectors_keeps_wide_class_ids(tmp_path, dtype):
    """The same through ``predict -o x.gpkg``: a model whose class band is uint32/int64 (classes past 2**31)."""
    import tilecast
    from tilecast.vectors import predict_vectors

    a = np.zeros((20, 23), np.float32)
    a[3:9, 2:15] = 1
    a[12:18, 10:20] = 1
    src = write_raster(tmp_path / "in.tif", a, transform=UTM)
    big = 2**31 + 5
    model = tilecast.Model.from_callable(lambda x: (x[:, :1].astype(np.int64) * big), layout="NCHW",
                                         input_tile_size=8, output_bands={"c": dtype})
    out = predict_vectors(model.predict_image(src), tmp_path / "p.gpkg", strip_rows=1)
    geoms, ids, _ = read(out)
    assert pyogrio.read_info(out)["dtypes"][0] == "int64"
    assert (burn(geoms, ids, a.shape, UTM, None) == (a.astype(np.int64) * big).astype(object)).all()


def test_appended_input_bands_do_not_widen_the_class_id(tmp_path):
    """With append_input the file's dtype is the float input's; the class band is uint8, so class_id stays int32."""
    import tilecast
    from tilecast.vectors import predict_vectors

    a = np.zeros((10, 12), np.float32)
    a[2:5, 3:9] = 1
    src = write_raster(tmp_path / "in.tif", a, transform=UTM)
    model = tilecast.Model.from_callable(lambda x: x[:, :1], layout="NCHW", input_tile_size=8,
                                         output_bands={"c": "uint8"})
    out = predict_vectors(model.predict_image(src, append_input=True), tmp_path / "p.gpkg")
    geoms, ids, _ = read(out)
    assert pyogrio.read_info(out)["dtypes"][0] == "int32"
    assert (burn(geoms, ids, a.shape, UTM, None) == a.astype(np.uint8).astype(object)).all()


def test_a_uint64_class_past_int64_is_a_clear_error(tmp_path):
    """No vector format has an unsigned 64-bit field: a class past 2**63 - 1 is refused by name, not wrapped."""
    from tilecast.errors import VectorFormatError

    a = np.zeros((3, 4), np.uint64)
    a[1, 1:3] = 2**63 + 7
    src = write_raster(tmp_path / "u64.tif", a, transform=UTM)
    with pytest.raises(VectorFormatError, match="9223372036854775815"):
        polygonize_raster(src, tmp_path / "u64.gpkg")
    assert not list(tmp_path.glob("*.gpkg")) and not list(tmp_path.glob(".u64*"))
    a[1, 1:3] = 2**63 - 1  # the largest class that fits is written as it is
    src = write_raster(tmp_path / "u64.tif", a, transform=UTM)
    assert sorted(read(polygonize_raster(src, tmp_path / "u64.gpkg"))[1]) == [0, 2**63 - 1]


@pytest.mark.parametrize("kind", ["internal mask", "alpha band"])
def test_masked_pixels_of_a_class_raster_are_no_region(tmp_path, kind):
    """Symptom: a class raster whose no-data is a mask (GDAL's internal mask, or an alpha band) and not a nodata
    value had its masked pixels polygonized as regions of whatever value was under them."""
    a = np.ones((9, 8), np.uint8)
    a[:, 4:] = 2
    m = np.full(a.shape, 255, np.uint8)
    m[:3] = 0
    m[5, 1] = m[7, 6] = 0  # holes inside regions, on a strip seam with strip_rows=2
    path = tmp_path / "m.tif"
    profile = dict(driver="GTiff", width=8, height=9, dtype="uint8", crs="EPSG:32633", transform=UTM)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        if kind == "alpha band":
            with rasterio.open(path, "w", count=2, photometric="MINISBLACK", alpha="UNSPECIFIED", **profile) as ds:
                ds.write(a, 1)
                ds.write(m, 2)
                ds.colorinterp = [rasterio.enums.ColorInterp.gray, rasterio.enums.ColorInterp.alpha]
        else:
            with rasterio.open(path, "w", count=1, **profile) as ds:
                ds.write(a, 1)
                ds.write_mask(m)
    with rasterio.open(path) as ds:
        assert (ds.read_masks(1) == m).all()
    out = polygonize_raster(path, tmp_path / "m.gpkg", strip_rows=2)
    geoms, ids, areas = read(out)
    expected = np.where(m > 0, a, 0).astype(object)
    assert (burn(geoms, ids, a.shape, UTM, 0) == expected).all()
    assert sum(areas) == 100.0 * (m > 0).sum()


def sized_regions() -> np.ndarray:
    """Class 0 background with regions of 2, 4 and 8 pixels (200, 400 and 800 m² at 10 m), across strip seams."""
    a = np.zeros((12, 14), np.uint8)
    a[1, 1:3] = 1
    a[3:5, 5:7] = 2
    a[6:10, 9:11] = 3
    return a


def equal_area(geom, crs: str = "EPSG:4326") -> float:
    """Area in m² of a lon/lat polygon, in a Lambert azimuthal equal-area projection centred on it."""
    from pyproj import Transformer

    c = geom.centroid
    laea = f"+proj=laea +lat_0={c.y} +lon_0={c.x} +ellps=WGS84"
    t = Transformer.from_crs(crs, laea, always_xy=True)
    return shapely.transform(geom, lambda xy: np.stack(t.transform(xy[:, 0], xy[:, 1]), axis=1)).area


@pytest.mark.parametrize("ext", ["gpkg", "parquet"])
def test_min_area_and_area_are_square_metres_in_a_lat_lon_output(tmp_path, ext):
    """Symptom: with --vector-crs EPSG:4326, --min-area was compared with areas in square degrees (500 dropped
    every region, a 10 m pixel is about 1e-8 square degrees) and the area field held square degrees."""
    a = sized_regions()
    src = write_raster(tmp_path / "utm.tif", a, transform=UTM)
    utm = read(polygonize_raster(src, tmp_path / f"utm.{ext}", min_area=500, strip_rows=3))
    geo = read(polygonize_raster(src, tmp_path / f"geo.{ext}", min_area=500, strip_rows=3, vector_crs="EPSG:4326"))
    assert sorted(utm[1]) == sorted(geo[1]) == [0, 3]
    for g, area in zip(geo[0], geo[2], strict=True):
        assert area == pytest.approx(equal_area(g), rel=1e-4)
    # UTM's scale factor (0.9996 at its central meridian) is all that separates the two measures
    assert sorted(geo[2]) == pytest.approx(sorted(np.asarray(utm[2]) / 0.9996**2), rel=2e-4)


def test_a_lat_lon_class_raster_measures_areas_in_square_metres(tmp_path):
    """A class map in EPSG:4326 (as ESA WorldCover): --min-area and area are square metres on the ellipsoid, also
    for polygons with holes."""
    a = sized_regions()
    a[6:10, 9:11] = 0
    a[5:11, 8:12] = 3
    a[7:9, 9:11] = 4  # a hole of 4 pixels in region 3
    transform = Affine(0.0001, 0, 12.0, 0, -0.0001, 60.0)  # about 5.6 x 11 m pixels at 60° N
    src = write_raster(tmp_path / "geo.tif", a, crs="EPSG:4326", transform=transform)
    geoms, ids, areas = read(polygonize_raster(src, tmp_path / "geo.gpkg", strip_rows=4))
    assert (burn(geoms, ids, a.shape, transform, None) == a.astype(object)).all()
    for g, area in zip(geoms, areas, strict=True):
        assert area == pytest.approx(equal_area(g), rel=1e-4)
    pixel = equal_area(shapely.box(12.0, 59.9999, 12.0001, 60.0))
    kept = read(polygonize_raster(src, tmp_path / "big.gpkg", min_area=3.5 * pixel, ignore=(0,)))
    assert sorted(kept[1]) == [2, 3, 4]  # 4, 20 (less its hole) and 4 pixels; 1 had 2


def test_the_command_keeps_regions_by_square_metres_with_a_lat_lon_output(tmp_path):
    """``tilecast polygonize --vector-crs EPSG:4326 --min-area 500`` keeps the regions of 500 m² and more."""
    from click.testing import CliRunner

    from tilecast.cli.polygonize import polygonize

    src = write_raster(tmp_path / "utm.tif", sized_regions(), transform=UTM)
    out = tmp_path / "geo.fgb"
    res = CliRunner().invoke(polygonize, [src, "-o", str(out), "--vector-crs", "EPSG:4326", "--min-area", "500",
                                          "--ignore", "0", "-q"])
    assert res.exit_code == 0, res.output
    df = pyogrio.read_dataframe(out)
    assert df["class_id"].tolist() == [3] and df["area"].tolist() == pytest.approx([800 / 0.9996**2], rel=2e-4)
    assert "square metres" in CliRunner().invoke(polygonize, ["--help"]).output


@pytest.mark.parametrize("crs", ["EPSG:99999", "not a crs"])
def test_an_unknown_vector_crs_is_named_with_its_fix(tmp_path, crs):
    """Symptom: polygonize --vector-crs EPSG:99999 said 'GDAL refused ...; check the inputs, the output folder and
    the free disk space'; it is the CRS that is wrong (predict -o x.gpkg already said so)."""
    from tilecast.errors import UnknownCRSError

    src = write_raster(tmp_path / "c.tif", sized_regions(), transform=UTM)
    with pytest.raises(UnknownCRSError, match="EPSG code like"):
        polygonize_raster(src, tmp_path / "c.gpkg", vector_crs=crs)
    assert list(tmp_path.iterdir()) == [tmp_path / "c.tif"]


def test_a_vector_crs_for_features_without_a_crs_is_refused():
    """Symptom: a raster without a CRS polygonized with --vector-crs EPSG:4326 wrote its pixel coordinates labelled
    EPSG:4326 (nothing to reproject from, so nothing was reprojected)."""
    from pyproj import CRS

    from tilecast.errors import InputError
    from tilecast.vectors.features import FeatureOutput, Features

    with pytest.raises(InputError, match=r"no CRS.*EPSG:4326.*--vector-crs"):
        FeatureOutput(Features(None), Affine.identity(), None, {}, vector_crs=CRS.from_epsg(4326))


@pytest.mark.parametrize("vector_crs", [None, "EPSG:4326"])
@pytest.mark.parametrize("kind", ["nothing", "transform only", "gcps"])
def test_a_raster_that_is_not_on_a_map_is_refused_as_predict_does(tmp_path, kind, vector_crs):
    """Symptom: polygonize wrote a raster without a CRS (or placed by GCPs only) as polygons in pixel coordinates,
    rows downwards, with no CRS, or labelled with --vector-crs; ``predict`` refuses such a raster, and so does
    polygonize now (NotGeoreferencedError, naming the fix)."""
    import warnings

    from rasterio.control import GroundControlPoint

    from tilecast.errors import NotGeoreferencedError

    path = tmp_path / "plain.tif"
    profile = dict(driver="GTiff", width=5, height=4, count=1, dtype="uint8")
    if kind == "transform only":
        profile["transform"] = UTM
    if kind == "gcps":
        corners = [(0, 0), (0, 5), (4, 0), (4, 5)]
        profile["gcps"] = [GroundControlPoint(r, c, 500000 + 10 * c, 4600000 - 10 * r) for r, c in corners]
        profile["crs"] = "EPSG:32633"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(sized_regions()[:4, :5], 1)
        with pytest.raises(NotGeoreferencedError, match="georeference it"):
            polygonize_raster(path, tmp_path / "plain.gpkg", vector_crs=vector_crs)
    assert not (tmp_path / "plain.gpkg").exists()


@pytest.mark.parametrize("option, value", [("simplify", -1.0), ("min_area", -5.0), ("min_area", float("nan")),
                                           ("simplify", float("inf"))])
def test_a_negative_or_non_finite_tolerance_or_area_is_refused(tmp_path, option, value):
    """Symptom: --min-area nan silently dropped every region, --simplify -1 and --min-area -5 were accepted and
    meant nothing; each is a SpecError naming the option."""
    from tilecast.errors import SpecError

    src = write_raster(tmp_path / "c.tif", sized_regions(), transform=UTM)
    with pytest.raises(SpecError, match=option):
        polygonize_raster(src, tmp_path / "c.gpkg", **{option: value})
    assert not (tmp_path / "c.gpkg").exists()


def test_ignore_takes_int64_classes_past_2_to_the_53_exactly(tmp_path):
    """Symptom: --ignore went through float, so --ignore 9007199254740993 (2**53 + 1) also dropped class 2**53."""
    from click.testing import CliRunner

    from tilecast.cli.polygonize import polygonize

    a = np.full((4, 6), 2**53, np.int64)
    a[:, 3:] = 2**53 + 1
    src = write_raster(tmp_path / "c.tif", a, transform=UTM)
    out = tmp_path / "c.gpkg"
    res = CliRunner().invoke(polygonize, [src, "-o", str(out), "--ignore", str(2**53 + 1), "-q"])
    assert res.exit_code == 0, res.output
    geoms, ids, _ = read(out)
    assert ids == [2**53]
    assert (burn(geoms, ids, a.shape, UTM, None) == np.where(a == 2**53, a, None)).all()
    bad = CliRunner().invoke(polygonize, [src, "-o", str(out), "--ignore", "0,x", "--overwrite", "-q"])
    assert bad.exit_code != 0 and "--ignore" in bad.output


def test_an_output_folder_that_is_a_file_is_a_clear_error(tmp_path):
    """Symptom: -o notes.txt/out.gpkg (a file where the folder should be) was a NotADirectoryError traceback."""
    from tilecast.errors import OutputError

    src = write_raster(tmp_path / "c.tif", sized_regions(), transform=UTM)
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(OutputError, match=r"notes\.txt"):
        polygonize_raster(src, tmp_path / "notes.txt" / "out.gpkg")
    assert (tmp_path / "notes.txt").read_text() == "a file"


def test_an_upper_case_shapefile_name_returns_the_files_written(tmp_path):
    """Symptom: -o OUT.SHP wrote OUT.shp (GDAL names the parts in lower case) but returned and printed OUT.SHP,
    a path that does not exist on a case-sensitive file system."""
    src = write_raster(tmp_path / "c.tif", sized_regions(), transform=UTM)
    out = polygonize_raster(src, tmp_path / "OUT.SHP")
    assert out.exists() and sorted(read(out)[1]) == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir() if p.stem == "OUT") == [
        "OUT.cpg", "OUT.dbf", "OUT.prj", "OUT.shp", "OUT.shx"]


def test_a_simplify_tolerance_of_degrees_meant_as_metres_is_warned_about(tmp_path):
    """--simplify is in the output's units: with a lat/lon output, --simplify 5 is 5 degrees (about 550 km) and
    every region collapses; a TilecastWarning says so and how to give metres. A tolerance in degrees is not warned
    about."""
    import warnings

    from tilecast.errors import TilecastWarning

    src = write_raster(tmp_path / "c.tif", sized_regions(), transform=UTM)
    with pytest.warns(TilecastWarning, match="degrees"):
        polygonize_raster(src, tmp_path / "a.gpkg", simplify=5.0, vector_crs="EPSG:4326")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TilecastWarning)
        polygonize_raster(src, tmp_path / "b.gpkg", simplify=5e-5, vector_crs="EPSG:4326")
        polygonize_raster(src, tmp_path / "c.gpkg", simplify=5.0)  # metres: UTM


def test_boxes_with_no_extent_or_nan_coordinates_are_no_objects():
    """Symptom: a box wholly outside its tile (clipped to zero width) or of zero size was written as an invalid
    zero-area polygon, and a NaN box with a mask (torchvision, YOLO-seg) was a ValueError traceback."""
    from tilecast.vectors.decode import decode_batch
    from tilecast.vectors.metadata import detector_spec

    rows = np.array([[10, 10, 4, 4], [np.nan, 5, 4, 4], [30, 5, 4, 4], [np.inf, 5, 4, 4], [8, 8, 0, 4]], np.float32)
    head = np.concatenate([rows, np.full((5, 1), 0.9, np.float32)], axis=1).T[None]  # (1, 4+1, anchors)
    got = decode_batch({"out": head}, detector_spec(det_type="yolo_v8"), 1, (20, 20))[0]
    assert got.boxes.tolist() == [[8.0, 8.0, 12.0, 12.0]]
    xyxy = np.array([[2, 2, 6, 6], [np.nan, 1, 3, 3], [25, 1, 30, 3]], np.float32)
    outputs = {"boxes": xyxy, "labels": np.ones(3, np.int64), "scores": np.full(3, 0.9, np.float32),
               "masks": np.ones((3, 1, 20, 20), np.float32)}
    got = decode_batch(outputs, detector_spec(det_type="torchvision"), 1, (20, 20))[0]
    assert got.boxes.tolist() == [[2.0, 2.0, 6.0, 6.0]] and got.masks[0][0].shape == (4, 4)


def test_oriented_boxes_past_max_candidates_are_kept_by_score():
    """Symptom: yolo_obb kept the first max_candidates candidates in anchor order, not the best-scoring ones (as
    the docs say, and the other decoders do)."""
    from tilecast.vectors.decode import decode_batch
    from tilecast.vectors.metadata import detector_spec

    # cx, cy, w, h, score, angle: three separate boxes, the best last
    rows = np.array([[3, 3, 2, 2, 0.5, 0.0], [10, 10, 2, 2, 0.6, 0.0], [16, 16, 2, 2, 0.9, 0.0]], np.float32)
    spec = detector_spec(det_type="yolo_obb", max_candidates=2)
    got = decode_batch({"out": rows.T[None]}, spec, 1, (20, 20))[0]
    assert sorted(got.scores.tolist()) == pytest.approx([0.6, 0.9])


def test_a_vector_output_over_its_own_geopackage_raster_input_is_refused(tmp_path):
    """Symptom: polygonize x.gpkg -o x.gpkg --overwrite (a GeoPackage raster) replaced the input with its polygons;
    a raster output refuses to destroy its input, and so do vector outputs now, overwrite or not."""
    import tilecast
    from tilecast.errors import OutputIsInputError
    from tilecast.vectors import predict_vectors

    path = tmp_path / "classes.gpkg"
    a = sized_regions()
    with rasterio.open(path, "w", driver="GPKG", width=a.shape[1], height=a.shape[0], count=1, dtype="uint8",
                       crs="EPSG:32633", transform=UTM) as ds:
        ds.write(a, 1)
    before = path.read_bytes()
    with pytest.raises(OutputIsInputError, match="same file"):
        polygonize_raster(path, path, overwrite=True)
    model = tilecast.Model.from_callable(lambda x: x[:, :1], layout="NCHW", input_tile_size=8,
                                         output_bands={"c": "uint8"})
    with pytest.raises(OutputIsInputError, match="same file"):
        predict_vectors(model.predict_image(str(path)), path, overwrite=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["classes.gpkg"]


@pytest.mark.parametrize("vector_crs", [None, "EPSG:4326"])
def test_simplified_regions_still_cover_the_whole_map(tmp_path, vector_crs):
    """Symptom: --simplify cut the map's corners (the outer boundary of the coverage was simplified too): the
    regions no longer covered the raster's extent (here 25.5 pixels were lost), though the docs say the total area
    stays the map's. Neighbours still share their edges, and nothing lies outside the raster."""
    from test_vectors_polygons import class_map

    a = class_map(60, 70, 3)
    src = write_raster(tmp_path / "c.tif", a, transform=UTM)
    tol = 50.0 if vector_crs is None else 50.0 / 111000
    out = polygonize_raster(src, tmp_path / "s.gpkg", simplify=tol, strip_rows=7, vector_crs=vector_crs)
    geoms = np.asarray(read(out)[0])
    # the map unsimplified: its union is the raster's extent (reprojected vertex by vertex, when it is)
    extent = shapely.union_all(read(polygonize_raster(src, tmp_path / "u.gpkg", vector_crs=vector_crs))[0])
    if vector_crs is None:
        assert shapely.equals(extent, shapely.box(*UTM * (0, 60), *UTM * (70, 0)))
    union = shapely.union_all(geoms)
    assert shapely.coverage_is_valid(geoms) and shapely.is_valid(geoms).all()
    assert shapely.area(geoms).sum() == pytest.approx(shapely.area(union), rel=1e-12)  # no overlap
    assert shapely.area(union) == pytest.approx(shapely.area(extent), rel=1e-12)  # no corner cut, nothing outside
    assert shapely.area(shapely.symmetric_difference(union, extent)) <= 1e-9 * shapely.area(extent)


@pytest.mark.parametrize("west", [179.95, 359.95, -180.05])
def test_lat_lon_areas_across_the_antimeridian(tmp_path, west):
    """A lat/lon map that crosses longitude 180 (or uses 0..360 longitudes): areas are still the polygons' own,
    not measured across a projection's wrap-around (a 1 km² region came out as thousands of km²)."""
    a = np.ones((5, 10), np.uint8)
    a[1:4, 2:8] = 2
    transform = Affine(0.01, 0, west, 0, -0.01, 10.0)
    src = write_raster(tmp_path / "am.tif", a, crs="EPSG:4326", transform=transform)
    geoms, ids, areas = read(polygonize_raster(src, tmp_path / "am.gpkg", strip_rows=2))
    assert (burn(geoms, ids, a.shape, transform, None) == a.astype(object)).all()
    for g, area in zip(geoms, areas, strict=True):
        assert area == pytest.approx(equal_area(g), rel=1e-4)
    assert sum(areas) == pytest.approx(equal_area(shapely.box(west, 9.95, west + 0.1, 10.0)), rel=1e-6)


def test_an_output_path_that_is_a_folder_is_a_clear_error(tmp_path):
    """Symptom: -o out.gpkg --overwrite, where out.gpkg is a folder, ran the whole polygonization and then failed
    with an IsADirectoryError traceback; it is refused up front, and the folder is left alone."""
    from tilecast.errors import OutputError

    src = write_raster(tmp_path / "c.tif", sized_regions(), transform=UTM)
    (tmp_path / "out.gpkg").mkdir()
    (tmp_path / "out.gpkg" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="folder"):
        polygonize_raster(src, tmp_path / "out.gpkg", overwrite=True)
    assert (tmp_path / "out.gpkg" / "keep.txt").read_text() == "mine"


def staircase_with_t_junctions() -> np.ndarray:
    """Class 0 above a staircase; below it, classes 1 and 2 meet in the middle of one step: a T-junction where the
    border of class 0 goes straight through the point where 1 and 2 meet."""
    a = np.zeros((60, 90), np.uint8)
    for c in range(90):
        a[10 + c // 3:, c] = 1 if c < 46 else 2
    return a


@pytest.mark.parametrize("ext", ["gpkg", "parquet"])
def test_simplified_regions_are_a_valid_coverage_at_t_junctions(tmp_path, ext):
    """Symptom: where two regions meet on the straight edge of a third (a T-junction), the third had no vertex
    there, so --simplify's output was no valid coverage (shapely.coverage_is_valid False: the edges were not shared
    vertex for vertex, as the docs say). The regions are noded first; the pixels they cover do not change."""
    a = staircase_with_t_junctions()
    src = write_raster(tmp_path / "t.tif", a, transform=UTM)
    geoms = np.asarray(read(polygonize_raster(src, tmp_path / f"s.{ext}", simplify=25.0, strip_rows=7))[0])
    assert shapely.coverage_is_valid(geoms) and shapely.is_valid(geoms).all()
    assert shapely.area(geoms).sum() == pytest.approx(a.size * 100.0)
    assert shapely.area(shapely.union_all(geoms)) == pytest.approx(a.size * 100.0)


def test_the_command_prints_its_warnings_as_one_line(tmp_path):
    """polygonize prints a TilecastWarning as ``warning: ...`` (as predict does), not as Python's warning with the
    path and source line of tilecast's code."""
    from click.testing import CliRunner

    from tilecast.cli.polygonize import polygonize

    src = write_raster(tmp_path / "c.tif", sized_regions(), transform=UTM)
    res = CliRunner().invoke(polygonize, [src, "-o", str(tmp_path / "c.gpkg"), "--simplify", "5", "--vector-crs",
                                          "EPSG:4326", "-q"])
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith("warning: simplify=5.0 is in the output CRS's units, degrees")
    assert ".py:" not in res.stderr
