from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin


def write_raster(path, data, *, crs="EPSG:32633", transform=None, nodata=None, descriptions=None, tags=None,
                 tiled=True) -> str:
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, h, w = data.shape
    transform = transform or from_origin(500000.0, 4600000.0, 10.0, 10.0)
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, crs=crs, transform=transform,
                   nodata=nodata)
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


@pytest.fixture
def raster(tmp_path):
    """Factory: ``raster(data, **profile)`` writes a GeoTIFF in tmp_path and returns its path."""
    counter = iter(range(10_000))

    def make(data, name=None, **kw):
        return write_raster(tmp_path / (name or f"in{next(counter)}.tif"), data, **kw)

    return make
