"""One engine value: parsing what callers pass (legacy keywords warn and still work, bad values name the fix), the
same files through Local() and Dask(workers=1), and the CLI's single engine decorator."""

from __future__ import annotations

import warnings

import click
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from conftest import coord_image, write_raster
from tilecast import Model
from tilecast.cli import main
from tilecast.cli.options import endpoint_request_options, engine_options
from tilecast.errors import SpecError
from tilecast.export import export_image, export_samples
from tilecast.remote.options import EndpointOptions
from tilecast.runners.engine import DASK_OPTIONS, Dask, Local, pop_engine_options, resolve_engine

# ---- parsing ------------------------------------------------------------------------------------------------------


def test_names_and_values_resolve_to_one_engine():
    assert resolve_engine() == Local()
    assert resolve_engine(None, "dask") == Dask()
    assert resolve_engine("local", "dask") == Local()
    assert resolve_engine("DASK") == Dask()
    engine = Dask(workers=2, chunk_rows=3)
    assert resolve_engine(engine) is engine
    assert resolve_engine(None, Local(threads=2)) == Local(threads=2)


def test_legacy_keywords_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match=r"engine=tilecast\.Dask\(workers=2, samples_per_task=5\)"):
        engine = resolve_engine("dask", legacy={"workers": 2, "samples_per_task": 5, "scheduler": None})
    assert engine == Dask(workers=2, samples_per_task=5)
    with pytest.warns(DeprecationWarning):
        assert resolve_engine(Dask(workers=1), legacy={"chunk_rows": 4}) == Dask(workers=1, chunk_rows=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_engine("dask", legacy={"workers": None}) == Dask()  # None means "not given": no warning


def test_options_taken_out_of_keywords():
    options = {"workers": 2, "compressed": False, "chunk_rows": None}
    assert pop_engine_options(options) == {"workers": 2, "chunk_rows": None}
    assert options == {"compressed": False}
    assert set(DASK_OPTIONS) >= {"client", "scheduler", "workers", "performance_report", "chunk_rows",
                                 "samples_per_task"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: resolve_engine("spark"), r"unknown engine 'spark'; pass engine=tilecast\.Local\(\)"),
    (lambda: resolve_engine(4), r"engine=tilecast\.Dask\(\.\.\.\)"),
    (lambda: resolve_engine("local", legacy={"workers": 2}), r"workers= only apply with engine='dask'; pass "
                                                               r"engine=tilecast\.Dask\(workers=2\)"),
    (lambda: resolve_engine("dask", legacy={"wrokers": 2}), r"unknown engine options \['wrokers'\]"),
    (lambda: Dask(workers=0), r"workers must be a positive integer"),
    (lambda: Dask(client=object(), scheduler="tcp://x:1"), "not both"),
    (lambda: Local(threads=0), "threads must be a whole number >= 1"),
])
def test_bad_engines_name_the_fix(call, message):
    with pytest.raises(SpecError, match=message):
        call()


def test_predictions_take_an_engine(tmp_path):
    path = write_raster(tmp_path / "in.tif", coord_image(40, 56, 2))
    model = Model.from_callable(lambda x: x * 2, layout="NCHW", input_tile_size=16, input_overlap_size=2,
                                output_bands={"a": "float32", "b": "float32"})
    default = model.predict_image(path).to_geotiff(tmp_path / "default.tif")
    threads = model.predict_image(path).to_geotiff(tmp_path / "threads.tif", engine=Local(threads=1))
    with rasterio.open(default) as a, rasterio.open(threads) as b:
        assert np.array_equal(a.read(), b.read())
        assert np.array_equal(a.read(), 2 * coord_image(40, 56, 2))
    pred = model.predict_image(path, engine="dask")
    assert pred.engine == Dask()
    with pytest.raises(SpecError, match=r"only apply with engine='dask'"):
        model.predict_image(path).to_geotiff(tmp_path / "x.tif", workers=2)


def test_exports_check_their_keywords(tmp_path):
    path = write_raster(tmp_path / "in.tif", coord_image(32, 32, 1))
    labels = write_raster(tmp_path / "labels.tif", np.ones((1, 32, 32), "uint8"))
    with pytest.raises(SpecError, match=r"engine=tilecast\.Dask\(workers=2\)"):
        export_samples(path, tmp_path / "s.csv", label_raster=labels, workers=2)
    with pytest.raises(SpecError, match=r"unknown export option\(s\) \['nn'\]"):
        export_samples(path, tmp_path / "s.csv", label_raster=labels, nn=3)
    with pytest.raises(SpecError, match=r"engine=tilecast\.Dask\(chunk_rows=2\)"):
        export_image(path, tmp_path, 8, chunk_rows=2)


# ---- Local() and Dask(workers=1) write the same files ----------------------------------------------------------


def test_local_and_dask_exports_write_identical_files(tmp_path):
    pytest.importorskip("distributed")
    img = coord_image(48, 64, 2)
    img[:, 5:9, 10:20] = -1
    path = write_raster(tmp_path / "scene.tif", img, nodata=-1)
    labels = write_raster(tmp_path / "labels.tif", (np.arange(48 * 64).reshape(1, 48, 64) % 3).astype("uint8"))
    outs = {}
    for name, engine in (("local", Local()), ("dask", Dask(workers=1, chunk_rows=100, samples_per_task=10**6))):
        out = tmp_path / name
        out.mkdir()
        image = export_image(path, out, 16, kernel=4, compressed=False, engine=engine, progress=False)
        table = export_samples(path, out / "s.csv", label_raster=labels, n=500, seed=3, engine=engine,
                               progress=False)
        outs[name] = (image, table)
    (li, lt), (di, dt) = outs["local"], outs["dask"]
    assert li.count == di.count == 12 and lt.count == dt.count > 0
    [lshard], [dshard] = li.files["all"], di.files["all"]  # one Dask task: its shard holds every patch
    assert lshard.name == "scene-00000.tfrecord" and dshard.name == "scene-00000-00000.tfrecord"
    assert lshard.read_bytes() == dshard.read_bytes()
    assert li.mixer.read_bytes() == di.mixer.read_bytes()
    assert lt.files["all"][0].read_bytes() == dt.files["all"][0].read_bytes()


# ---- the CLI ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1", "--chunk-rows", "3"]])
def test_dask_flags_without_engine_dask_are_one_clear_error(tmp_path, flags):
    path = write_raster(tmp_path / "in.tif", coord_image(32, 32, 1))
    res = CliRunner().invoke(main, ["export", "image", str(path), "--patch", "8", "-o", str(tmp_path / "o"), *flags])
    assert res.exit_code == 2
    assert "need --engine dask" in res.output and flags[0] in res.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_the_engine_decorator_builds_one_value():
    seen = {}

    @click.command()
    @engine_options("samples_per_task")
    def cmd(engine):
        seen["engine"] = engine

    runner = CliRunner()
    assert runner.invoke(cmd, []).exit_code == 0 and seen["engine"] == Local()
    res = runner.invoke(cmd, ["--engine", "dask", "--workers", "3", "--samples-per-task", "7"])
    assert res.exit_code == 0 and seen["engine"] == Dask(workers=3, samples_per_task=7)
    res = runner.invoke(cmd, ["--samples-per-task", "7"])
    assert res.exit_code == 2 and "--samples-per-task need --engine dask" in res.output
    res = runner.invoke(cmd, ["--engine", "dask", "--workers", "0"])
    assert res.exit_code == 2 and "workers must be a positive integer" in res.output


def test_the_endpoint_decorator_builds_endpoint_options(monkeypatch):
    seen = {}

    @click.command()
    @endpoint_request_options
    def cmd(endpoint_options):
        seen["options"] = endpoint_options

    monkeypatch.setenv("TC_TEST_TOKEN", "secret")
    res = CliRunner().invoke(cmd, ["--concurrency", "2", "--header", "X-A:1", "--token-env", "TC_TEST_TOKEN",
                                   "--max-payload-bytes", "1000", "--payload-format", "RAW_JSON"])
    assert res.exit_code == 0, res.output
    assert seen["options"] == EndpointOptions(payload_format="RAW_JSON", max_payload_bytes=1000, concurrency=2,
                                              headers={"X-A": "1"}, token="secret")
    res = CliRunner().invoke(cmd, ["--token-env", "TC_TEST_UNSET_VARIABLE"])
    assert res.exit_code == 2 and "TC_TEST_UNSET_VARIABLE" in res.output


def test_endpoint_options_check_their_fields():
    assert EndpointOptions.create(None, concurrency=3, output_multiplier=None) == EndpointOptions(concurrency=3)
    with pytest.raises(SpecError, match=r"unknown endpoint option\(s\) \['concurency'\]"):
        EndpointOptions.create(concurency=3)
    with pytest.raises(SpecError, match="concurrency must be at least 1"):
        EndpointOptions(concurrency=0)
    with pytest.raises(SpecError, match="output_multiplier must be >= 1"):
        EndpointOptions(output_multiplier=0.5)


def test_predict_properties_checks_its_options_and_engine():
    gpd = pytest.importorskip("geopandas")
    from tilecast.features import PropertyOptions, predict_properties
    from tilecast.runtimes.callable import CallableRuntime

    gdf = gpd.GeoDataFrame({"a": [1.0, 2.0], "b": [3.0, 5.0]}, geometry=gpd.points_from_xy([0, 1], [0, 1]),
                           crs="EPSG:32633")
    runtime = CallableRuntime(lambda x: x.sum(axis=1), inputs=["x"])
    options = PropertyOptions(input_properties=["a", "b"], output_properties={"output": "float32"}, layout="stacked")
    out = predict_properties(runtime, gdf, options=options, engine=Local())
    assert out["output"].tolist() == [4.0, 7.0]
    same = predict_properties(runtime, gdf, input_properties=["a", "b"], output_properties={"output": "float32"},
                              layout="stacked")
    assert same["output"].tolist() == [4.0, 7.0]
    with pytest.raises(SpecError, match=r"unknown option\(s\) \['input_property'\]"):
        predict_properties(runtime, gdf, input_property=["a"])
    with pytest.raises(SpecError, match=r"engine=tilecast\.Local\(\)"):
        predict_properties(runtime, gdf, options=options, engine=Dask())


def test_export_plans_are_values_an_engine_can_carry(tmp_path):
    import pickle

    from rasterio.windows import Window

    from tilecast.export.image import ImageExportOptions, image_region, plan_image
    from tilecast.sources import open_source

    path = write_raster(tmp_path / "in.tif", coord_image(40, 50, 2))
    source = open_source(str(path), None)
    try:
        opts = ImageExportOptions.create(16, kernel_size=[4, 4])
        plan = plan_image(source, tmp_path, opts, "p", image_region(source.grid, None, Window(0, 0, 50, 40)), False)
    finally:
        source.close()
    again = pickle.loads(pickle.dumps(plan))
    assert again.plan == plan.plan and again.grid == plan.grid and again.opts == opts
    assert len(plan.plan) == 6 and (plan.ph, plan.pw) == (20, 20)  # 3 x 2 whole patches, the border dropped
    assert again.mixer_path == tmp_path / "p-mixer.json"
