"""Where a web-mercator tile falls on a raster's grid, and which zoom levels a layer offers.

morecantile holds the tile-matrix math and rasterio the reprojection; this module only combines them. The zoom-out
guard lives here: a layer's ``minzoom`` is the lowest level at which one map tile needs at most ``budget`` blocks of
the model's grid, so no single request can fan out into more model calls than that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import morecantile
from rasterio.crs import CRS as RioCRS
from rasterio.errors import RasterioError
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.warp import transform as transform_points
from rasterio.windows import Window, from_bounds

from ..errors import NotGeoreferencedError, RegionError
from ..sources.base import Grid

__all__ = ["TMS", "Zooms", "block_zooms", "check_georeferenced", "lonlat_extent", "native_zoom", "tile_window",
           "tilejson", "wgs84_bounds"]

TMS = morecantile.tms.get("WebMercatorQuad")
ABOVE_NATIVE = 4
"""Levels served above the native zoom (the client overzooms beyond ``maxzoom``)."""
LATITUDE_LIMIT = 85.0511287798
"""Web mercator's edge: the latitude of the top of tile 0/0/0."""
MARGIN = 2
"""Output pixels read around a tile's footprint, so that warping at its edges has every pixel it needs."""


@dataclass(frozen=True)
class Zooms:
    minzoom: int
    native: int
    maxzoom: int


def check_georeferenced(grid: Grid, what: str) -> None:
    """Fail unless ``grid`` can be placed on a web map: georeferenced, and not wholly beyond the latitudes web
    mercator shows (a raster around a pole, all past 85.05 degrees, would be an empty map without a word)."""
    if grid.crs is None or grid.transform.is_identity:
        raise NotGeoreferencedError(
            f"{what} has no CRS or geotransform, so it cannot be placed on a map; georeference it first "
            "(e.g. gdal_translate -a_srs EPSG:XXXX -a_ullr ...)"
        )
    _, south, _, north = lonlat_extent(grid)
    if not south < north:
        raise RegionError(
            f"{what} lies wholly beyond {LATITUDE_LIMIT:.2f} degrees of latitude, where web-mercator maps (this "
            "viewer, Leaflet, ipyleaflet) show nothing; look at it in a GIS in its own projection (tilecast predict "
            "writes it)"
        )


def lonlat_extent(grid: Grid) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` in degrees, latitudes clamped to what web mercator shows; ``east`` goes past
    180 for a raster across the antimeridian (``west < east`` always, as Leaflet's ``fitBounds`` wants)."""
    w, s, e, n = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21)
    if w > e:  # rasterio's way of saying the raster crosses the antimeridian
        e += 360.0
    return max(w, -180.0), max(s, -LATITUDE_LIMIT), min(e, 540.0), min(n, LATITUDE_LIMIT)


def wgs84_bounds(grid: Grid) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` in degrees, clamped to what web mercator shows. Across the antimeridian
    every longitude: clients read ``west > east`` as an empty box (and ask for no tile), and tiles beside the raster
    are empty anyway."""
    w, s, e, n = lonlat_extent(grid)
    return (-180.0, s, 180.0, n) if e > 180.0 else (w, s, e, n)


def _centre(grid: Grid) -> tuple[float, float]:
    """The raster's centre in degrees (longitude in -180..180)."""
    w, s, e, n = lonlat_extent(grid)
    lon = (w + e) / 2
    return (lon - 360.0 if lon > 180.0 else lon), (s + n) / 2


def _mercator(lon: float) -> RioCRS:
    """Web mercator centred on ``lon``: the same scale everywhere, without a wrap near the raster."""
    return RioCRS.from_proj4(f"+proj=merc +a=6378137 +b=6378137 +lon_0={lon!r} +x_0=0 +y_0=0 +k=1 +units=m "
                             "+nadgrids=@null +no_defs")


def _pixel_size_at_centre(grid: Grid) -> float | None:
    """The size in web-mercator metres of the grid's pixel at its centre (the centre of what web mercator shows of
    it, for a raster around a pole): the square root of the pixel's area there. None where it has no place."""
    h, w = grid.shape
    col, row = w / 2, h / 2
    try:
        (lon,), (lat,) = transform_points(grid.crs, "EPSG:4326", *([v] for v in grid.transform * (col, row)))
        if not abs(lat) < LATITUDE_LIMIT:
            lon, lat = _centre(grid)
            (x,), (y,) = transform_points("EPSG:4326", grid.crs, [lon], [lat])
            col, row = ~grid.transform * (x, y)
        corners = [grid.transform * p for p in ((col, row), (col + 1, row), (col, row + 1))]
        xs, ys = transform_points(grid.crs, _mercator(lon), [p[0] for p in corners], [p[1] for p in corners])
    except (RasterioError, ValueError):
        return None
    area = abs((xs[1] - xs[0]) * (ys[2] - ys[0]) - (ys[1] - ys[0]) * (xs[2] - xs[0]))
    return math.sqrt(area) if math.isfinite(area) and area > 0 else None


def native_zoom(grid: Grid) -> int:
    """The zoom whose pixel size is closest to the grid's at its centre, where the map opens.

    Not the zoom of GDAL's suggested warp of the whole raster (rio-tiler's ``maxzoom``): that keeps the pixel count
    along the warped raster's diagonal, which web mercator's stretching towards the poles lengthens, so a raster
    spanning many latitudes (a lat/lon or polar one) came out a level or more too low at its centre."""
    res = _pixel_size_at_centre(grid)
    if res is None:
        h, w = grid.shape
        dst = _mercator(_centre(grid)[0]) if lonlat_extent(grid)[2] > 180.0 else TMS.rasterio_crs
        transform, _, _ = calculate_default_transform(grid.crs, dst, w, h, *grid.bounds)
        res = abs(transform.a)
    return TMS.zoom_for_res(res, max_z=TMS.maxzoom)


def tile_window(grid: Grid, z: int, x: int, y: int, margin: int = MARGIN) -> Window | None:
    """The grid's pixels under tile ``z/x/y`` (plus ``margin``), clipped to the grid; None outside it (or where
    the tile has no place in the grid's CRS)."""
    try:
        bounds = transform_bounds(TMS.rasterio_crs, grid.crs, *TMS.xy_bounds(x, y, z), densify_pts=21)
    except (RasterioError, ValueError):
        return None
    if not all(math.isfinite(v) for v in bounds):
        return None
    win = from_bounds(*bounds, grid.transform)
    h, w = grid.shape
    r0 = max(0, math.floor(win.row_off) - margin)
    c0 = max(0, math.floor(win.col_off) - margin)
    r1 = min(h, math.ceil(win.row_off + win.height) + margin)
    c1 = min(w, math.ceil(win.col_off + win.width) + margin)
    if r1 <= r0 or c1 <= c0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _blocks_per_tile(grid: Grid, z: int, block: tuple[int, int], blocks: tuple[int, int]) -> int:
    """Blocks one tile needs at zoom ``z`` in the worst alignment, at the grid's centre and at its latitude nearest
    the equator: a web-mercator tile covers the most ground there (a raster from 40 to 80 degrees north, or around
    a pole, needs more blocks per tile at its southern edge than at its centre)."""
    lon, lat = _centre(grid)
    _, south, _, north = lonlat_extent(grid)
    worst = 0
    for at in {lat, min(max(0.0, south), north)}:
        t = TMS.tile(lon, at, z)
        left, bottom, right, top = transform_bounds(TMS.rasterio_crs, grid.crs, *TMS.xy_bounds(t), densify_pts=21)
        rx, ry = grid.resolution
        rows = min(blocks[0], math.ceil((top - bottom) / ry / block[0]) + 1)
        cols = min(blocks[1], math.ceil((right - left) / rx / block[1]) + 1)
        worst = max(worst, rows * cols)
    return worst


def block_zooms(grid: Grid, block: tuple[int, int], blocks: tuple[int, int], budget: int) -> Zooms:
    """Zoom levels of a layer computed in blocks of ``block`` output pixels (``blocks``: how many, rows x cols):
    ``minzoom`` is the lowest level whose tiles need at most ``budget`` blocks each, and never above the native
    zoom (where a tile needs the few blocks under it, whatever the budget)."""
    native = native_zoom(grid)
    minzoom = native
    while minzoom > 0 and _blocks_per_tile(grid, minzoom - 1, block, blocks) <= budget:
        minzoom -= 1
    return Zooms(minzoom, native, min(TMS.maxzoom, native + ABOVE_NATIVE))


def tilejson(name: str, url: str, grid: Grid, zooms: Zooms, **extra: Any) -> dict[str, Any]:
    """A TileJSON 3.0.0 document for a layer whose tiles are at ``url`` (with ``{z}/{x}/{y}``)."""
    w, s, e, n = wgs84_bounds(grid)
    center = [*_centre(grid), max(zooms.minzoom, min(zooms.native, zooms.maxzoom) - 2)]
    doc = {"tilejson": "3.0.0", "name": name, "tiles": [url], "minzoom": zooms.minzoom, "maxzoom": zooms.maxzoom,
           "bounds": [w, s, e, n], "center": center, "scheme": "xyz"}
    doc.update(extra)
    return doc
