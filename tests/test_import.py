"""Import of TFRecord predictions: export -> identity prediction -> import reproduces the source exactly, with the
mixer's georeferencing; cropped and margin-carrying patches, int64 and float features; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from conftest import coord_image, write_raster
from tilecast.cli import main
from tilecast.errors import InputError, OutputExistsError
from tilecast.export import export_image, import_predictions, read_mixer
from tilecast.export.tfrecord import ShardedWriter, example_bytes
from tilecast.training import TFRecordDataset


def predict_identity(spec_path, out_dir, crop: int | tuple[int, int], as_int: bool = False, max_file_size=None):
    """The batch route outside tilecast: read each exported patch, 'predict' it, write one Example per patch.
    ``crop``: the margin cut from each side, or ``(x, y)``."""
    cx, cy = crop if isinstance(crop, tuple) else (crop, crop)
    ds = TFRecordDataset(spec_path)
    with ShardedWriter(out_dir, "pred", max_file_size=max_file_size) as w:
        for ex in ds:
            feats = {}
            for k, v in ex.items():
                v = v[cy : v.shape[0] - cy, cx : v.shape[1] - cx]
                feats[k] = v.astype(np.int64) if as_int else v
            w.write(example_bytes(feats))
        return w.close()


@pytest.mark.parametrize("kernel", [8, [8, 4]], ids=["kernel-8", "kernel-8x4"])
@pytest.mark.parametrize("crop", [True, False], ids=["cropped", "with-margin"])
def test_export_identity_import_roundtrip(tmp_path, crop, kernel):
    kx, ky = (kernel, kernel) if isinstance(kernel, int) else kernel
    img = coord_image(64, 96, 3).astype(np.float32)
    src = write_raster(tmp_path / "src.tif", img, crs="EPSG:32618")
    (tmp_path / "tiles").mkdir()
    (tmp_path / "pred").mkdir()
    res = export_image(src, tmp_path / "tiles", 16, kernel=kernel, max_file_size=20_000)
    assert next(iter(TFRecordDataset(res.spec)))["b1"].shape == (16 + ky, 16 + kx)
    preds = predict_identity(res.spec, tmp_path / "pred", (kx // 2, ky // 2) if crop else 0, max_file_size=30_000)
    assert len(preds) > 1
    # A margin the patches still carry (unequal ones too) is read from the export's spec beside the mixer.
    out = import_predictions([str(p) for p in reversed(preds)], res.mixer, tmp_path / "back.tif")
    with rasterio.open(out) as back, rasterio.open(src) as orig:
        assert back.crs == orig.crs and back.transform == orig.transform and back.shape == orig.shape
        assert back.descriptions == ("b1", "b2", "b3") and back.dtypes[0] == "float32"
        np.testing.assert_array_equal(back.read(), orig.read())


def test_unequal_margins_without_the_export_spec_need_the_kernel(tmp_path):
    img = coord_image(32, 48, 1).astype(np.float32)
    src = write_raster(tmp_path / "src.tif", img)
    (tmp_path / "tiles").mkdir()
    (tmp_path / "pred").mkdir()
    res = export_image(src, tmp_path / "tiles", 16, kernel=[8, 4])
    preds = predict_identity(res.spec, tmp_path / "pred", 0)
    mixer = tmp_path / "elsewhere-mixer.json"  # a mixer alone, as from Earth Engine: 24 x 20 = 20 x 24 = 30 x 16
    mixer.write_bytes(res.mixer.read_bytes())
    with pytest.raises(InputError, match=r"margins \[\[0, 14\], \[4, 8\], \[8, 4\], \[14, 0\]\]; pass the export"):
        import_predictions(preds, mixer, tmp_path / "o.tif")
    with pytest.raises(InputError, match=r"480 values .* nor the patch plus the kernel margin \[2, 2\] \(324\)"):
        import_predictions(preds, mixer, tmp_path / "o.tif", kernel=2)
    assert not (tmp_path / "o.tif").exists()
    r = CliRunner().invoke(main, ["import", *map(str, preds), "--mixer", str(mixer), "--kernel", "8,4",
                                  "-o", str(tmp_path / "back.tif"), "-q"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "back.tif") as back:
        np.testing.assert_array_equal(back.read(), img)


def test_int64_features_and_region_georeferencing(tmp_path):
    img = (coord_image(50, 50, 1) % 7).astype(np.uint8)
    src = write_raster(tmp_path / "src.tif", img)
    with rasterio.open(src) as ds:
        t = ds.transform
    left, top = t * (5, 3)
    right, bottom = t * (45, 43)
    res = export_image(src, tmp_path, 20, bounds=(left, bottom, right, top))
    mixer = read_mixer(res.mixer)
    assert mixer.transform == t * t.translation(5, 3) and mixer.grid.shape == (40, 40)
    (tmp_path / "p").mkdir()
    preds = predict_identity(res.spec, tmp_path / "p", 0, as_int=True)
    out = import_predictions(preds, res.mixer, tmp_path / "cls.tif")
    with rasterio.open(out) as back:
        assert back.dtypes[0] == "int32" and back.transform == mixer.transform
        np.testing.assert_array_equal(back.read(1), img[0, 3:43, 5:45])
        left2, bottom2, right2, top2 = back.bounds
        assert (left2, top2) == pytest.approx((left, top)) and (right2, bottom2) == pytest.approx((right, bottom))


def test_bad_predictions_give_clear_errors(tmp_path):
    src = write_raster(tmp_path / "src.tif", coord_image(40, 40, 1))
    res = export_image(src, tmp_path, 20)
    (tmp_path / "p").mkdir()

    def shards(name: str, examples: int, values: int = 400):
        with ShardedWriter(tmp_path / "p", name) as w:
            for _ in range(examples):
                w.write(example_bytes({"x": np.zeros(values, np.float32)}))
            return w.close()

    few, bad, many = shards("few", 3), shards("bad", 4, values=401), shards("many", 5)
    with pytest.raises(InputError, match="hold 3 examples but the mixer describes 4"):
        import_predictions(few, res.mixer, tmp_path / "o.tif")
    with pytest.raises(InputError, match="401 values in feature 'x'"):
        import_predictions(bad, res.mixer, tmp_path / "o.tif")
    with pytest.raises(InputError, match="more examples than the mixer's 4"):
        import_predictions(many, res.mixer, tmp_path / "o.tif")
    with pytest.raises(InputError, match="no feature 'y'"):
        import_predictions(many, res.mixer, tmp_path / "o.tif", bands=["y"])
    with pytest.raises(InputError, match="mixer file not found"):
        import_predictions(many, tmp_path / "nope.json", tmp_path / "o.tif")
    (tmp_path / "junk.json").write_text('{"projection": {}}')
    with pytest.raises(InputError, match="not an Earth Engine mixer"):
        import_predictions(many, tmp_path / "junk.json", tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()
    (tmp_path / "o.tif").write_bytes(b"")
    with pytest.raises(OutputExistsError):
        import_predictions(many, res.mixer, tmp_path / "o.tif")


def test_cli_export_image_and_import(tmp_path):
    img = coord_image(30, 40, 2)
    src = write_raster(tmp_path / "src.tif", img)
    r = CliRunner().invoke(main, ["export", "image", src, "--patch", "10", "--kernel", "4", "--max-file-size", "2KB",
                                  "-o", str(tmp_path / "tiles"), "-q"])
    assert r.exit_code == 0, r.output
    files = sorted(str(p) for p in (tmp_path / "tiles").glob("*.tfrecord.gz"))
    assert len(files) > 1
    r = CliRunner().invoke(main, ["import", *files, "--mixer", str(tmp_path / "tiles" / "src-mixer.json"),
                                  "-o", str(tmp_path / "back.tif"), "-q"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "back.tif") as back:
        np.testing.assert_array_equal(back.read(), img)
    r = CliRunner().invoke(main, ["import", *files[:1], "--mixer", str(tmp_path / "tiles" / "src-mixer.json"),
                                  "-o", str(tmp_path / "x.tif")])
    assert r.exit_code == 1 and "mixer describes 12 patches" in r.output
