"""xarray DataArrays and Datasets that carry a CRS and a transform (rioxarray or odc-geo conventions)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from rasterio.windows import Window

from .._extras import require
from ..errors import InputError, NotGeoreferencedError, TilecastWarning
from .base import BaseSource, Grid, select_bands
from .rasterio_source import parse_crs

__all__ = ["XarraySource"]


def _nodata_of(da: Any) -> Any:
    return da.rio.nodata if da.rio.nodata is not None else da.rio.encoded_nodata


def _long_names(long_names: list[Any], coord: Any, count: int, fallback: list[str]) -> list[str]:
    """Band names from a ``long_name`` list. After ``isel(band=...)`` rioxarray keeps the list of every band of the
    file while the ``band`` coordinate keeps the selected bands' 1-based numbers: pick the names by those. A list
    that fits neither way is ignored, with a warning, for the coordinate's names."""
    if len(long_names) == count:
        return [str(n) for n in long_names]
    values = list(np.asarray(coord.values)) if coord is not None else []
    if len(values) == count and all(isinstance(v, (int, np.integer)) and 1 <= v <= len(long_names) for v in values):
        return [str(long_names[int(v) - 1]) for v in values]
    warnings.warn(
        f"the long_name attribute lists {len(long_names)} band names for {count} band(s) and the band coordinate "
        f"does not say which apply; using {fallback}. Set da.attrs['long_name'] to one name per band",
        TilecastWarning, stacklevel=4,
    )
    return fallback


_ALIASES = {"y": ("lat", "Lat", "LAT"), "x": ("lon", "Lon", "LON")}


def _spatial_dims(da: Any) -> tuple[Any, str, str]:
    """The y and x dims, renamed to ``y``/``x`` (rioxarray does not recognise ``lat``/``lon``)."""
    renames = {a: axis for axis, names in _ALIASES.items() for a in names if a in da.dims and axis not in da.dims}
    if renames:
        da = da.rename(renames)
    try:
        ydim, xdim = da.rio.y_dim, da.rio.x_dim
    except Exception:
        raise NotGeoreferencedError(
            f"cannot tell the y and x dimensions among {tuple(da.dims)}; name them y/x (or lat/lon), or call "
            "da.rio.set_spatial_dims(x_dim=..., y_dim=...)"
        ) from None
    # rioxarray forgets set_spatial_dims() on the next new object (transpose, isel): rename them to what it finds.
    if (ydim, xdim) != ("y", "x") and not {"y", "x"} & set(da.coords) - {ydim, xdim}:
        da = da.rename({ydim: "y", xdim: "x"})
        ydim, xdim = "y", "x"
    return da, ydim, xdim


def _north_up(da: Any, ydim: str, xdim: str) -> Any:
    """Rows top (largest y) first and columns west first, as in a GeoTIFF: a DataArray whose y increases (netCDF,
    many climate grids) would otherwise give a south-up transform that the bounds and outputs get upside down."""
    for dim, descending in ((ydim, True), (xdim, False)):
        if dim in da.coords and da.sizes[dim] > 1:
            values = np.asarray(da.coords[dim].values)
            if (values[1] < values[0]) != descending:
                da = da.isel({dim: slice(None, None, -1)})
    return da


class XarraySource(BaseSource):
    """Bands are the ``band`` dimension of a DataArray or the data variables of a Dataset (dims ``y, x``)."""

    def __init__(self, obj: Any, bands: Sequence[str | int] | None = None) -> None:
        xr = require("xarray", "xarray")
        require("rioxarray", "xarray")  # registers the .rio accessor
        nodatas: list[Any] | None = None
        if isinstance(obj, xr.Dataset):
            names = [str(k) for k, v in obj.data_vars.items() if v.ndim >= 2]
            if not names:
                raise InputError("the Dataset has no 2-D data variables to use as bands")
            # Each variable keeps its own nodata (open_rasterio(..., band_as_variable=True)); stacking drops it.
            nodatas = [_nodata_of(obj[n]) for n in names]
            da = obj[names].to_dataarray("band") if hasattr(obj, "to_dataarray") else obj[names].to_array("band")
            da = da.assign_coords(band=names)
            if obj.rio.crs is not None:  # else the missing CRS is reported below
                da.rio.write_crs(obj.rio.crs, inplace=True)
        elif isinstance(obj, xr.DataArray):
            da = obj
        else:
            raise InputError(f"expected an xarray DataArray or Dataset, got {type(obj).__name__}")
        da, ydim, xdim = _spatial_dims(da)
        if da.ndim == 2:
            da = da.expand_dims("band")
        extra = [d for d in da.dims if d not in (ydim, xdim)]
        if len(extra) != 1:
            raise InputError(f"expected dims (band, {ydim}, {xdim}), got {da.dims}")
        da = _north_up(da.transpose(extra[0], ydim, xdim), ydim, xdim)
        crs = da.rio.crs
        if crs is None:
            raise NotGeoreferencedError(
                "the xarray object has no CRS; set one with da.rio.write_crs('EPSG:XXXX') or odc-geo's assign_crs"
            )
        try:
            transform = da.rio.transform(recalc=True)
        except Exception as exc:
            raise NotGeoreferencedError(f"cannot derive a transform from the x/y coordinates: {exc}") from None
        if extra[0] in da.coords and da.coords[extra[0]].dtype.kind in "OUS":
            names = [str(v) for v in da.coords[extra[0]].values]
        else:
            names = [str(v.item()) if hasattr(v, "item") else str(v) for v in da.coords.get(extra[0], [])] or [
                f"b{i + 1}" for i in range(da.shape[0])
            ]
            names = [n if not n.isdigit() else f"b{n}" for n in names]
        if hasattr(da, "attrs") and isinstance(da.attrs.get("long_name"), (list, tuple)):
            names = _long_names(list(da.attrs["long_name"]), da.coords.get(extra[0]), da.shape[0], names)
        idx = select_bands(names, bands)
        self.da = da.isel({extra[0]: idx})
        self.band_names = [names[i] for i in idx]
        self.grid = Grid(parse_crs(crs), transform, (da.shape[1], da.shape[2]))
        self.dtype = np.dtype(da.dtype)
        self.nodata = _nodata_of(da)
        self.nodatas = [nodatas[i] for i in idx] if nodatas is not None else [self.nodata] * len(idx)
        """Each selected band's nodata value (a Dataset's variables each have their own)."""
        self.properties = {k: v for k, v in da.attrs.items() if isinstance(v, (int, float, str, bool, np.number))}

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        data, masks = self.read_masked(window)
        return data, (None if masks is None else masks.all(axis=0))

    def read_masked(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """Each band's own mask: its nodata value, and NaN or infinite values in float bands."""
        r0, c0 = int(window.row_off), int(window.col_off)
        data = np.asarray(self.da[:, r0 : r0 + int(window.height), c0 : c0 + int(window.width)].values)
        valid = None
        for i, nodata in enumerate(self.nodatas):
            band_valid = None
            if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
                band_valid = data[i] != nodata
            if data.dtype.kind == "f":
                finite = np.isfinite(data[i])
                band_valid = finite if band_valid is None else band_valid & finite
            if band_valid is not None and not band_valid.all():
                if valid is None:
                    valid = np.ones(data.shape, dtype=bool)
                valid[i] = band_valid
        return data, valid

    def close(self) -> None:
        pass
