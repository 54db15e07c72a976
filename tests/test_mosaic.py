"""Many files, globs and STAC items as one mosaic: aligned pieces reassemble exactly, other CRSs are warped per
window, the last member is on top, and predictions over a mosaic equal predictions over the whole raster."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window

from conftest import coord_image
from tilecast import Model
from tilecast.errors import BandMismatchError, InputError, SourceNotFoundError, SourceReadError
from tilecast.sources import open_source
from tilecast.sources.mosaic import MosaicSource

ORIGIN = (500000.0, 4600000.0)


def split(raster, img, pieces, nodata=None):
    """Write ``img`` as pieces ``(row, col, h, w)`` on the same 10 m grid."""
    paths = []
    for i, (r, c, h, w) in enumerate(pieces):
        t = from_origin(ORIGIN[0] + c * 10, ORIGIN[1] - r * 10, 10, 10)
        paths.append(raster(img[:, r : r + h, c : c + w], name=f"p{i}.tif", transform=t, nodata=nodata,
                            descriptions=["red", "nir", "swir"][: img.shape[0]]))
    return paths


QUAD = [(0, 0, 50, 60), (0, 60, 50, 60), (50, 0, 50, 60), (50, 60, 50, 60)]


def test_aligned_pieces_reassemble_exactly(raster, tmp_path):
    img = coord_image(100, 120, 3)
    split(raster, img, QUAD)
    src = open_source(str(tmp_path / "p*.tif"))
    assert isinstance(src, MosaicSource) and src.grid.shape == (100, 120)
    assert src.band_names == ["red", "nir", "swir"]
    assert src.grid.transform == from_origin(*ORIGIN, 10, 10)
    data, valid = src.read(Window(0, 0, 120, 100))
    assert valid is None and np.array_equal(data, img)
    data, _ = src.read(Window(45, 40, 30, 25))  # a window across all four files
    assert np.array_equal(data, img[:, 40:65, 45:75])
    sel = open_source([str(tmp_path / f"p{i}.tif") for i in range(4)], bands=["swir", 1])
    assert sel.band_names == ["swir", "red"]
    assert np.array_equal(sel.read(Window(0, 0, 120, 100))[0], img[[2, 0]])


def test_gaps_are_masked_and_the_last_member_is_on_top(raster, tmp_path):
    img = coord_image(60, 60, 1)
    a = raster(img[:, :30, :30], name="a.tif", transform=from_origin(*ORIGIN, 10, 10))
    b = raster(img[:, 20:60, 20:60] + 5000, name="b.tif", transform=from_origin(ORIGIN[0] + 200, ORIGIN[1] - 200,
                                                                                  10, 10))
    src = open_source([a, b])
    data, valid = src.read(Window(0, 0, 60, 60))
    assert not valid[0, 40] and not valid[40, 0]  # covered by neither file
    assert data[0, 25, 25] == img[0, 25, 25] + 5000  # overlap: b (last) wins
    assert data[0, 5, 5] == img[0, 5, 5]


def test_members_in_another_crs_are_warped_per_window(raster, tmp_path):
    img = coord_image(80, 80, 1)
    utm = raster(img[:, :, :40], name="utm.tif")
    other = tmp_path / "merc.tif"
    right = img[:, :, 40:]
    transform = from_origin(ORIGIN[0] + 400, ORIGIN[1], 10, 10)
    from rasterio.warp import calculate_default_transform

    west, south, east, north = rasterio.transform.array_bounds(80, 40, transform)
    mt, mw, mh = calculate_default_transform("EPSG:32633", "EPSG:3857", 40, 80, west, south, east, north)
    dst = np.zeros((1, mh, mw), np.float32)
    reproject(right, dst, src_transform=transform, src_crs="EPSG:32633", dst_transform=mt, dst_crs="EPSG:3857")
    with rasterio.open(other, "w", driver="GTiff", width=mw, height=mh, count=1, dtype="float32", crs="EPSG:3857",
                       transform=mt) as ds:
        ds.write(dst)
    src = open_source([utm, str(other)])
    assert src.grid.crs.to_epsg() == 32633 and src.grid.transform.a == 10
    col, row = ~src.grid.transform * ORIGIN  # the Mercator footprint may widen the grid; it stays aligned
    assert (col, row) == (int(col), int(row))
    data, valid = src.read(Window(int(col), int(row), 80, 80))
    assert np.array_equal(data[0, :, :40], img[0, :, :40])  # the UTM member is copied exactly
    inner = data[0, 10:70, 45:75]
    assert np.abs(inner - img[0, 10:70, 45:75]).max() <= 1  # band 0 is the row: warped twice, within a pixel
    assert valid is None or valid[10:70, 45:75].all()


def test_stac_items_with_assets_as_bands(raster, tmp_path):
    img = coord_image(100, 120, 3)
    items = []
    for i, (r, c, h, w) in enumerate(QUAD):
        t = from_origin(ORIGIN[0] + c * 10, ORIGIN[1] - r * 10, 10, 10)
        assets = {}
        for b, name in enumerate(["B04", "B08", "B11"]):
            raster(img[b : b + 1, r : r + h, c : c + w], name=f"item{i}_{name}.tif", transform=t)
            assets[name] = {"href": f"item{i}_{name}.tif", "type": "image/tiff; application=geotiff",
                            "roles": ["data"]}
        assets["thumbnail"] = {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"item{i}", "assets": assets, "links": [],
                      "geometry": None, "properties": {"datetime": "2026-01-01T00:00:00Z"}})
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    src = open_source(str(path), bands=["B08", "B04"])
    assert src.band_names == ["B08", "B04"]
    assert np.array_equal(src.read(Window(0, 0, 120, 100))[0], img[[1, 0]])
    allbands = open_source(str(path))
    assert allbands.band_names == ["B04", "B08", "B11"]
    pystac = pytest.importorskip("pystac")
    absolute = json.loads(path.read_text())
    for item in absolute["features"]:
        for asset in item["assets"].values():
            asset["href"] = str(tmp_path / asset["href"])
    coll = pystac.ItemCollection.from_dict(absolute)
    assert np.array_equal(open_source(coll, bands=["B11"]).read(Window(0, 0, 120, 100))[0], img[[2]])


def test_prediction_over_a_mosaic_equals_the_whole_raster(raster, tmp_path):
    from onnx_models import mean_conv

    img = np.random.default_rng(0).random((2, 100, 120)).astype("float32")
    whole = raster(img, name="whole.tif")
    pieces = split(raster, img, QUAD)
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 2, 3), input_tile_size=32, input_overlap_size=1,
                            blend="cosine", output_bands={"mean": "float32"})
    a = model.predict_image(pieces).to_numpy()
    b = model.predict_image(whole).to_numpy()
    assert a.tobytes() == b.tobytes()


def test_a_truncated_member_gives_a_source_read_error_naming_it(raster, tmp_path):
    from onnx_models import mean_conv

    img = np.random.default_rng(0).random((2, 64, 96)).astype("float32")
    # Without band descriptions GDAL leaves the header at the start of the file, so it survives the truncation.
    pieces = [raster(img[:, :, c : c + 48], name=f"p{c}.tif", transform=from_origin(ORIGIN[0] + c * 10, ORIGIN[1],
                                                                                     10, 10)) for c in (0, 48)]
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 2, 3), input_tile_size=16, input_overlap_size=1,
                            output_bands={"mean": "float32"})
    pred = model.predict_image(pieces)
    with open(pieces[1], "r+b") as f:  # most tiles are gone
        f.truncate(os.path.getsize(pieces[1]) // 2)
    with pytest.raises(SourceReadError, match=r"cannot read rows \d+:\d+, cols \d+:\d+ of the mosaic from member "
                                              r".*p48\.tif: .*TIFFReadEncodedTile.*gdalinfo -checksum .*p48\.tif"):
        pred.to_geotiff(tmp_path / "out.tif", progress=None)
    assert not list(tmp_path.glob("out*"))


def test_mosaic_pickles_as_its_recipe(raster, tmp_path):
    split(raster, coord_image(100, 120, 2), QUAD)
    src = open_source(str(tmp_path / "p*.tif"))
    src.read(Window(0, 0, 10, 10))  # opens handles, which must not travel
    copy = pickle.loads(pickle.dumps(src))
    assert copy.grid == src.grid and copy.band_names == src.band_names
    assert np.array_equal(copy.read(Window(5, 5, 50, 50))[0], src.read(Window(5, 5, 50, 50))[0])


def test_mosaic_errors(raster, tmp_path):
    with pytest.raises(SourceNotFoundError, match="no raster matches"):
        open_source(str(tmp_path / "nothing*.tif"))
    a = raster(np.zeros((2, 10, 10), np.float32), name="a.tif")
    b = raster(np.zeros((3, 10, 10), np.float32), name="b.tif")
    with pytest.raises(BandMismatchError, match="same bands"):
        open_source([a, b])


def test_fix_input_proj_over_a_mosaic_matches_the_whole_raster(raster, tmp_path):
    img = coord_image(100, 120, 2)
    whole = raster(img, name="whole.tif", descriptions=["red", "nir"])
    pieces = split(raster, img, QUAD)
    model = Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=32, input_overlap_size=2,
                                crs="EPSG:3035", resolution=15, fix_input_proj=True, resampling="nearest",
                                output_bands={"row": "float32", "col": "float32"})
    a, b = model.predict_image(pieces), model.predict_image(whole)
    assert a.grid.crs.to_epsg() == 3035 and a.grid.resolution == (15, 15)
    assert a.grid == b.grid
    out = b.to_numpy()
    assert np.isnan(out[0]).any()  # the warped grid's corners lie outside the source: masked, not zeros
    np.testing.assert_array_equal(a.to_numpy(), out)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open file descriptors in /proc")
def test_runs_over_one_mosaic_do_not_accumulate_file_handles(raster, tmp_path, monkeypatch):
    """Each run reads on threads of its own, which open their own handles on every member: those of ended threads
    are closed, or a prediction over a mosaic written again and again runs out of file descriptors."""
    import tilecast.resources

    monkeypatch.setattr(tilecast.resources, "available_cpus", lambda: 4)
    split(raster, coord_image(100, 120, 3), QUAD)
    model = Model.from_callable(lambda x: x[:, :1], layout="NCHW", input_tile_size=32,
                                output_bands={"v": "float32"})
    pred = model.predict_image(str(tmp_path / "p*.tif"))
    open_fds = []
    for _ in range(5):
        pred.to_geotiff(tmp_path / "out.tif", overwrite=True)
        open_fds.append(len(os.listdir("/proc/self/fd")))
    assert open_fds[-1] <= open_fds[1], open_fds


def test_band_names_must_name_every_band(raster):
    """Fewer names than bands put the next member's names on the wrong bands (wrong pixels under a name)."""
    a = raster(coord_image(8, 8, 2), name="a.tif")
    with pytest.raises(InputError, match=r"1 band names \['x'\] given for .* which has 2 band\(s\)"):
        MosaicSource([[a]], band_names=["x"])
    assert MosaicSource([[a]], band_names=["x", "y"]).band_names == ["x", "y"]
