"""In-memory output, returned as a georeferenced xarray DataArray (for regions that fit in RAM)."""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from .._extras import require
from .base import BaseSink, OutputProfile

__all__ = ["ArraySink", "to_dataarray"]


class ArraySink(BaseSink):
    """Collects the output in one array; ``close`` returns it as a georeferenced DataArray."""

    def open(self, profile: OutputProfile) -> None:
        self.profile = profile
        h, w = profile.grid.shape
        self.array = np.empty((len(profile.band_names), h, w), dtype=profile.dtype)

    def write(self, window: Window, data: np.ndarray) -> None:
        r, c = int(window.row_off), int(window.col_off)
        self.array[:, r : r + data.shape[1], c : c + data.shape[2]] = data

    def close(self):
        return to_dataarray(self.array, self.profile)

    def abort(self) -> None:
        self.array = None


def to_dataarray(array: np.ndarray, profile: OutputProfile):
    """A ``(band, y, x)`` DataArray with a CF ``spatial_ref`` coordinate that rioxarray and odc-geo both read."""
    xr = require("xarray", "xarray")
    require("rioxarray", "xarray")
    g = profile.grid
    h, w = g.shape
    t = g.transform
    xs = t.c + t.a * (np.arange(w) + 0.5)
    ys = t.f + t.e * (np.arange(h) + 0.5)
    da = xr.DataArray(
        array, dims=("band", "y", "x"),
        coords={"band": list(profile.band_names), "y": ys, "x": xs},
        name="prediction",
    )
    da = da.rio.write_crs(g.crs).rio.write_transform(t)
    if profile.nodata is not None:
        da = da.rio.write_nodata(profile.nodata, encoded=False)
    da.attrs["long_name"] = list(profile.band_names)
    classes = {b.name: {int(v): n for v, n in b.classes} for b in profile.bands if b.classes}
    colors = {b.name: {int(v): "#" + "".join(f"{x:02x}" for x in c[:3]) for v, c in b.colors}
              for b in profile.bands if b.colors}
    if classes:  # what the GeoTIFF carries as category names and colour table, kept for plotting and writing back
        da.attrs["class_names"] = classes
    if colors:
        da.attrs["class_colors"] = colors
    return da
