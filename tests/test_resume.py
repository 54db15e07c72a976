"""Resume: an interrupted run continues where it stopped, recomputing only the chunks that were not finished.

A counting model proves it: the resumed run calls the model on exactly the tiles of the missing chunks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnx_models import mean_conv
from resume_helpers import Counter, interrupt_after, read
from tilecast import Model


def hidden(tmp_path, name, suffix):
    return tmp_path / f".{name}.{suffix}"


@pytest.fixture
def scene(raster):
    img = np.random.default_rng(0).normal(size=(1, 100, 120)).astype("float32")
    img[:, 10:40, 10:40] = -1  # nodata: masks and a skipped tile survive the resume
    return raster(img, nodata=-1), img


def plain_result(tmp_path, path) -> np.ndarray:
    model = Model.from_callable(lambda x: x * 2, layout="NCHW", input_tile_size=20, batch_size=3,
                                output_bands={"y": "float32"})
    return read(model.predict_image(path).to_geotiff(tmp_path / "plain.tif"))


def counting_model(counter: Counter) -> Model:
    return Model.from_callable(counter, layout="NCHW", input_tile_size=20, batch_size=3, output_bands={"y": "float32"})


def test_local_resume_recomputes_only_missing_chunks(tmp_path, scene):
    path, _ = scene
    expected = plain_result(tmp_path, path)
    out = tmp_path / "out.tif"
    first = Counter()
    with pytest.raises(KeyboardInterrupt):
        counting_model(first).predict_image(path).to_geotiff(out, resume=True, chunk_size=40,
                                                             progress=interrupt_after(10))
    assert not out.exists()  # the final file appears only when everything is done
    manifest = json.loads(hidden(tmp_path, "out.tif", "resume.json").read_text())
    assert hidden(tmp_path, "out.tif", "partial.tmp.tif").exists()
    done_chunks = manifest["done"]
    assert 0 < len(done_chunks) < 9  # 3 x 3 chunks of 2 x 2 tiles
    pred = counting_model(second := Counter()).predict_image(path)
    from tilecast.runners.chunks import ChunkLayout

    layout = ChunkLayout.create(pred.plan, False, 40)
    done_tiles = sum(layout.own_tiles(i) for i in done_chunks)
    skipped = 1  # the fully masked tile is never sent to the model
    result = pred.to_geotiff(out, resume=True, chunk_size=40)
    assert second.tiles == len(pred.plan) - done_tiles - (0 if 0 in done_chunks else skipped)
    assert read(result).tobytes() == expected.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in0.tif", "out.tif", "plain.tif"]


def test_resume_ignores_state_from_another_run(tmp_path, scene):
    path, _ = scene
    out = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        counting_model(Counter()).predict_image(path).to_geotiff(out, resume=True, chunk_size=40,
                                                                 progress=interrupt_after(10))
    other = Model.from_callable(lambda x: x * 3, layout="NCHW", input_tile_size=10, output_bands={"y": "float32"})
    img = read(other.predict_image(path).to_geotiff(out, resume=True, chunk_size=40))
    assert np.allclose(img[0, 50:, 50:], read(path)[0, 50:, 50:] * 3)


def test_without_resume_an_interrupted_local_run_leaves_nothing(tmp_path, scene):
    path, _ = scene
    with pytest.raises(KeyboardInterrupt):
        counting_model(Counter()).predict_image(path).to_geotiff(tmp_path / "out.tif", progress=interrupt_after(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in0.tif"]


def test_zarr_resume(tmp_path, scene):
    xr = pytest.importorskip("xarray")
    path, _ = scene
    out = tmp_path / "out.zarr"
    with pytest.raises(KeyboardInterrupt):
        counting_model(Counter()).predict_image(path).to_zarr(out, resume=True, chunk_size=40,
                                                              progress=interrupt_after(10))
    assert not out.exists()
    second = Counter()
    result = counting_model(second).predict_image(path).to_zarr(out, resume=True, chunk_size=40)
    assert 0 < second.tiles < 30
    with xr.open_zarr(result) as ds:
        assert ds["prediction"].values.tobytes() == plain_result(tmp_path, path).tobytes()


def test_dask_resume_recomputes_only_missing_chunks(tmp_path, scene):
    distributed = pytest.importorskip("distributed")
    path, _ = scene
    out = tmp_path / "out.tif"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        first = Counter()
        with pytest.raises(KeyboardInterrupt):
            counting_model(first).predict_image(path).to_geotiff(out, engine="dask", client=client, chunk_size=40,
                                                                 progress=interrupt_after(10))
        assert not out.exists()
        done_chunks = json.loads(hidden(tmp_path, "out.tif", "resume.json").read_text())["done"]
        assert done_chunks
        pred = counting_model(second := Counter()).predict_image(path)
        from tilecast.runners.chunks import ChunkLayout

        layout = ChunkLayout.create(pred.plan, False, 40)
        result = pred.to_geotiff(out, engine="dask", client=client, chunk_size=40, resume=True)
    missing = [i for i in range(len(layout)) if i not in done_chunks]
    expected_calls = sum(layout.own_tiles(i) for i in missing) - (1 if 0 in missing else 0)
    assert second.tiles == expected_calls
    assert read(result).tobytes() == plain_result(tmp_path, path).tobytes()


def test_cli_resume_finishes_an_interrupted_run(tmp_path, raster):
    from tilecast.cli import main

    img = np.random.default_rng(1).random((2, 64, 80)).astype("float32")
    path = raster(img)
    onnx = mean_conv(tmp_path / "m.onnx", 2, 3)
    out = tmp_path / "out.tif"
    model = Model.from_onnx(onnx, input_tile_size=16, input_overlap_size=1, output_bands={"mean": "float32"})
    with pytest.raises(KeyboardInterrupt):
        model.predict_image(path).to_geotiff(out, resume=True, progress=interrupt_after(4), chunk_size=16)
    args = [path, "--model", onnx, "--tile", "16", "--overlap", "1", "--output-band", "mean:float32",
            "-o", str(out), "-q"]
    # The CLI's default chunking differs from the interrupted run: it starts over, and still ends complete.
    res = CliRunner().invoke(main, ["predict", *args, "--resume"])
    assert res.exit_code == 0, res.output
    assert read(out).tobytes() == read(model.predict_image(path).to_geotiff(tmp_path / "ref.tif")).tobytes()
