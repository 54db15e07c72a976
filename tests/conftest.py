from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin


def write_raster(
    path, data, *, crs="EPSG:32633", transform=None, nodata=None, descriptions=None, tags=None, tiled=True
) -> str:
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, h, w = data.shape
    transform = transform or from_origin(500000.0, 4600000.0, 10.0, 10.0)
    profile = dict(
        driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, crs=crs, transform=transform, nodata=nodata
    )
    if tiled and h >= 16 and w >= 16:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
    return str(path)


def coord_image(h: int, w: int, bands: int = 2, dtype="float32") -> np.ndarray:
    """Pixel values encode their own coordinates: band 0 = row, band 1 = col, band k = row*1000+col+k."""
    r, c = np.mgrid[0:h, 0:w]
    layers = [r, c] + [r * 1000 + c + k for k in range(2, bands)]
    return np.stack(layers[:bands]).astype(dtype)


@pytest.fixture(scope="session", autouse=True)
def dask_worker_settings():
    """Every Dask cluster a test starts gets the settings of the clusters tilecast starts: on CPython 3.11, no task
    profiler, which can deadlock a worker (see :mod:`tilecast.runners.dask_tasks`)."""
    try:
        import dask

        from tilecast.runners.dask_tasks import worker_config
    except ImportError:
        return
    # For the whole session, not undone: Distributed, once imported, adds its defaults around what is set here.
    dask.config.set(worker_config())


@pytest.fixture
def raster(tmp_path):
    """Factory: ``raster(data, **profile)`` writes a GeoTIFF in tmp_path and returns its path."""
    counter = iter(range(10_000))

    def make(data, name=None, **kw):
        return write_raster(tmp_path / (name or f"in{next(counter)}.tif"), data, **kw)

    return make


# --- markers -----------------------------------------------------------------------------------------------------
# ``pytest -m unit`` (``make test-fast``) runs the tests that need no model runs on rasters and no servers, in under a
# minute on 2 cores; ``pytest`` (``make test``) runs everything. Markers follow the file name: ``test_NAME.py`` gets
# the markers that list NAME below (``test_adversarial*.py`` are all adversarial), so a new file joins a lane by name.

MARKERS = {
    "unit": "fast tests of pure logic: plan, tensors, pixels, payloads, card schema, errors, sizes, architecture",
    "slow": "acceptance runs on real data or whole workflows (demo, training workflow, benchmark smoke)",
    "server": "starts a server on 127.0.0.1 (tilecast serve, KServe, a scripted endpoint, an HTTP file server)",
    "dask": "starts a Dask LocalCluster",
    "adversarial": "hostile inputs and misbehaving peers (issue 17)",
}

BY_FILE = {
    "unit": {
        "plan",
        "tensors",
        "pixels",
        "payloads",
        "card",
        "card_schema",
        "errors",
        "sizes",
        "size",
        "layout",
        "architecture",
        "public_api",
        "parallel_spans",
    },
    "slow": {"demo", "workflow", "card_thirdparty", "features_landsat", "bench_smoke"},
    "server": {"server", "endpoint", "faults", "features_endpoint", "remote", "prepare", "fix10_serve"},
    "dask": {"dask", "dask_errors", "export_dask", "export_dask_samples"},
}


def markers_for(stem: str) -> list[str]:
    name = stem.removeprefix("test_")
    found = [marker for marker, names in BY_FILE.items() if name in names]
    if name.startswith("adversarial"):
        found.append("adversarial")
    return found


def pytest_configure(config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """With ``-m unit`` alone, skip importing the other test files: their imports (TensorFlow, torch, Dask...) would
    take longer than the unit tests themselves. (So ``unit`` is given by the file name only.)"""
    if (config.getoption("markexpr", "") or "").strip() != "unit":
        return None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return "unit" not in markers_for(collection_path.stem) or None
    return None


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        for marker in markers_for(Path(str(item.path)).stem):
            item.add_marker(marker)
