"""A damaged partial output, stale temporary files and interrupts (issue 17, items 4 and 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import rasterio

from resume_helpers import Counter, interrupt_after, read
from tilecast import Model
from tilecast.sinks.geotiff import remove_stale_temps, temp_prefix

pytestmark = pytest.mark.adversarial


def _model(counter) -> Model:
    return Model.from_callable(counter, layout="NCHW", input_tile_size=20, batch_size=3,
                               output_bands={"y": "float32"})


@pytest.fixture
def scene(raster, tmp_path):
    img = np.random.default_rng(0).normal(size=(1, 100, 120)).astype("float32") + 5
    path = raster(img)
    expected = read(_model(lambda x: x * 2).predict_image(path).to_geotiff(tmp_path / "plain.tif"))
    return path, expected


def _interrupted(tmp_path, path, out):
    with pytest.raises(KeyboardInterrupt):
        _model(Counter()).predict_image(path).to_geotiff(out, resume=True, chunk_size=40,
                                                         progress=interrupt_after(16))
    partial = tmp_path / f".{out.name}.partial.tmp.tif"
    manifest = json.loads((tmp_path / f".{out.name}.resume.json").read_text())
    assert partial.exists() and len(manifest["done"]) >= 2 and set(manifest["sums"]) == set(map(str, manifest["done"]))
    return partial, manifest


def _resume(path, out, counter=None):
    return _model(counter or Counter()).predict_image(path).to_geotiff(out, resume=True, chunk_size=40)


def _left(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("damage", ["third", "zero", "one-chunk"])
def test_resume_never_trusts_a_damaged_partial(tmp_path, scene, damage):
    path, expected = scene
    out = tmp_path / "out.tif"
    partial, _ = _interrupted(tmp_path, path, out)
    if damage == "third":
        os.truncate(partial, partial.stat().st_size // 3)
    elif damage == "zero":
        os.truncate(partial, 0)
    else:  # flip bytes inside the first block of the first finished chunk
        with rasterio.open(partial) as ds:
            offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        with open(partial, "r+b") as fh:
            fh.seek(offset + 100)
            chunk = bytearray(fh.read(64))
            fh.seek(offset + 100)
            fh.write(bytes(b ^ 0xFF for b in chunk))
    counter = Counter()
    result = _resume(path, out, counter)
    got = read(result)
    assert got.tobytes() == expected.tobytes()
    assert counter.tiles > 0  # the damaged chunk at least was recomputed
    assert _left(tmp_path) == []


def test_resume_recomputes_only_the_damaged_chunk(tmp_path, scene):
    path, expected = scene
    out = tmp_path / "out.tif"
    partial, manifest = _interrupted(tmp_path, path, out)
    from tilecast.runners.chunks import ChunkLayout

    pred = _model(Counter()).predict_image(path)
    layout = ChunkLayout.create(pred.plan, False, 40)
    with rasterio.open(partial, "r+") as ds:  # change pixels of chunk 0 only
        ds.write(np.full((1, 5, 5), 123, "float32"), window=rasterio.windows.Window(0, 0, 5, 5))
    counter = Counter()
    result = _resume(path, out, counter)
    missing = [i for i in range(len(layout)) if i not in manifest["done"]] + [0]
    assert counter.tiles == sum(layout.own_tiles(i) for i in missing)
    assert read(result).tobytes() == expected.tobytes()


def test_a_manifest_without_checksums_is_not_trusted(tmp_path, scene):
    path, expected = scene
    out = tmp_path / "out.tif"
    partial, manifest = _interrupted(tmp_path, path, out)
    with rasterio.open(partial, "r+") as ds:
        ds.write(np.zeros((1, 100, 120), "float32"))
    manifest.pop("sums")
    (tmp_path / ".out.tif.resume.json").write_text(json.dumps(manifest))
    assert read(_resume(path, out)).tobytes() == expected.tobytes()


def test_zarr_resume_recomputes_a_deleted_chunk(tmp_path, scene):
    xr = pytest.importorskip("xarray")
    path, expected = scene
    out = tmp_path / "out.zarr"
    with pytest.raises(KeyboardInterrupt):
        _model(Counter()).predict_image(path).to_zarr(out, resume=True, chunk_size=40, progress=interrupt_after(16))
    store = tmp_path / ".out.zarr.partial.zarr" / "prediction"
    (store / "0.0.0").unlink()
    (store / "0.1.0").write_bytes(b"garbage")
    result = _model(Counter()).predict_image(path).to_zarr(out, resume=True, chunk_size=40)
    with xr.open_zarr(result) as ds:
        assert ds["prediction"].values.tobytes() == expected.tobytes()


def test_overwrite_without_resume_clears_stale_partial_state(tmp_path, scene):
    path, expected = scene
    out = tmp_path / "out.tif"
    partial, _ = _interrupted(tmp_path, path, out)
    os.truncate(partial, 0)
    out.write_bytes(b"old")
    result = _model(Counter()).predict_image(path).to_geotiff(out, overwrite=True)
    assert read(result).tobytes() == expected.tobytes()
    assert _left(tmp_path) == []  # the plain run that replaced the output cleared the stale partial state
    out.unlink()
    partial, _ = _interrupted(tmp_path, path, out)
    os.truncate(partial, 0)
    out.write_bytes(b"old")
    result = _model(Counter()).predict_image(path).to_geotiff(out, overwrite=True, resume=True, chunk_size=40)
    assert read(result).tobytes() == expected.tobytes()
    assert _left(tmp_path) == []


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path, scene):
    path, expected = scene
    out = tmp_path / "out.tif"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = temp_prefix(out).replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    stale = [tmp_path / f"{name}abc.tmp.tif", tmp_path / f"{name}abc.tmp.tif.ovr"]
    alive = tmp_path / f"{temp_prefix(out).replace(f'-{os.getpid()}-', '-1-')}x.tmp.tif"  # pid 1 is alive
    other = tmp_path / ".other.tif.tilecast-h-1-x.tmp.tif"
    for p in [*stale, alive, other]:
        p.write_bytes(b"x" * 10)
    assert read(_model(Counter()).predict_image(path).to_geotiff(out)).tobytes() == expected.tobytes()
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other.exists()
    assert remove_stale_temps(out) == []


_SCRIPT = textwrap.dedent("""
    import contextlib, signal, sys
    # Ctrl-C raises KeyboardInterrupt even when the suite runs as a background job (which ignores SIGINT, and a
    # child inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from tilecast import Model
    from tilecast.runners.local import interrupt_on_sigterm
    from tilecast.sinks.geotiff import GeoTIFFSink

    inp, out, size, sig, phase = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    # A sparse input: GDAL reads its unwritten blocks as zeros, so a huge raster costs nothing to make.
    with rasterio.open(inp, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", tiled=True,
                       sparse_ok=True, crs="EPSG:32633", transform=from_origin(0, 0, 10, 10)):
        pass
    rng = np.random.default_rng(0)
    if phase == "tiles":
        fn = lambda x: x.astype("float32") + 1
    else:  # noise that DEFLATE level 9 compresses slowly: the COG conversion takes a while
        fn = lambda x: rng.random(x.shape, dtype="float32")
    model = Model.from_callable(fn, layout="NCHW", input_tile_size=256, batch_size=16, output_bands={"y": "float32"})
    said = set()

    def progress(done, total, pixels):
        word = "finishing" if done == total else "started"
        if word == ("started" if phase == "tiles" else "finishing") and word not in said:
            said.add(word)
            print(word, flush=True)

    ctx = interrupt_on_sigterm() if sig == "term" else contextlib.nullcontext()
    try:
        with ctx:
            sink = GeoTIFFSink(out, creation_options={"level": "9"} if phase == "finish" else None)
            model.predict_image(inp).run(sink, progress=progress)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
""")


@pytest.mark.parametrize(("sig", "phase", "size"), [("int", "tiles", 30000), ("term", "tiles", 30000),
                                                    ("int", "finish", 5000)])
def test_an_interrupt_exits_within_two_seconds_and_leaves_nothing(tmp_path, sig, phase, size):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script), str(work / "in.tif"), str(work / "out.tif"), str(size), sig,
                             phase], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == ("started" if phase == "tiles" else "finishing")
        time.sleep(1.0 if phase == "tiles" else 0.3)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT if sig == "int" else signal.SIGTERM)
        proc.wait(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = proc.communicate()
    assert "interrupted" in out, (proc.returncode, err)  # the exit status tells a crash from a kill
    assert elapsed < 2.0
    assert sorted(p.name for p in work.iterdir()) == ["in.tif"]
