"""``tilecast polygonize``: one polygon per region of a class raster; and the vector side of ``tilecast predict``
(its flags, the check that raster and vector options are not mixed, and the call that writes the vectors)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import click
import rasterio

from ..errors import SpecError, TilecastWarning
from .options import csv_list, gdal_config_option, overwrite_option, quiet_option, reports_errors

VECTOR_HELP = ".gpkg, .parquet (GeoParquet), .fgb, .geojson or .shp"


def polygon_options(f: Callable) -> Callable:
    """``--vector-crs``, ``--simplify`` and ``--min-area``: shared by ``polygonize`` and ``predict -o x.gpkg``."""
    for option in reversed((
        click.option("--vector-crs", help="CRS of the vector output (default: the raster's), e.g. EPSG:4326. "
                     "GeoJSON is always written in WGS84 lon/lat (RFC 7946); areas are measured in this CRS."),
        click.option("--simplify", type=float, metavar="TOLERANCE",
                     help="Simplify polygons to this tolerance, in the output's map units (degrees for a lat/lon "
                     "output such as EPSG:4326); a class map's regions are simplified together, so neighbours keep "
                     "sharing their edges."),
        click.option("--min-area", type=float, metavar="AREA",
                     help="Drop polygons smaller than this: square metres on the ellipsoid when the output CRS is "
                     "lat/lon (e.g. --vector-crs EPSG:4326), else square map units (m² for UTM). The area field is "
                     "measured the same way."),
    )):
        f = option(f)
    return f


def detector_options(f: Callable) -> Callable:
    """``--confidence`` and ``--iou`` for ``predict`` with a vector output (``--classes`` names the classes)."""
    for option in reversed((
        click.option("--confidence", type=float, help="Drop objects scoring under this (default: the model's "
                     "det_conf, else 0.25)."),
        click.option("--iou", type=float, help="Non-maximum suppression IoU inside a tile (default: the model's "
                     "det_iou_thresh, else 0.45)."),
        click.option("--det-type", help="Decode the outputs as this detector (yolo_v5, yolo_v8, yolo_obb, yolo_seg, "
                     "torchvision, generic); default: the model's metadata or card."),
    )):
        f = option(f)
    return f


RASTER_ONLY = {"compress": "DEFLATE", "no_overviews": False, "resume": False, "append_input": False}
VECTOR_ONLY = ("vector_crs", "simplify", "min_area", "confidence", "iou", "det_type")


def check_output_options(output: str, opts: dict[str, Any]) -> bool:
    """Whether ``output`` is a vector file; refuses raster-only options with one, and vector ones without."""
    from ..vectors.errors import VectorFormatError
    from ..vectors.write import is_vector_path

    vector = is_vector_path(output)
    flag = {k: "--" + k.replace("_", "-") for k in (*RASTER_ONLY, *VECTOR_ONLY)}
    if vector:
        bad = [flag[k] for k, default in RASTER_ONLY.items() if opts.get(k, default) != default]
        if bad:
            raise VectorFormatError(f"{', '.join(bad)} only apply to raster outputs, not {output}; drop them, or "
                                    "write a .tif")
    else:
        bad = [flag[k] for k in VECTOR_ONLY if opts.get(k) is not None]
        if bad:
            raise VectorFormatError(f"{', '.join(bad)} only apply to vector outputs ({VECTOR_HELP}), not {output}")
    return vector


def write_vectors(result: Any, output: str, opts: dict[str, Any], quiet: bool, class_names: Any = None) -> None:
    """``predict -o x.gpkg``: the prediction's objects or regions, streamed to ``output``. ``class_names``: what
    ``--classes`` parsed to (the detector's class names)."""
    from ..vectors import predict_vectors

    names = class_names
    dask = {k: opts[k] for k in ("scheduler", "workers") if opts.get(k) is not None}
    path = predict_vectors(
        result, output, overwrite=opts["overwrite"], vector_crs=opts.get("vector_crs"), detector=opts.get("det_type"),
        confidence=opts.get("confidence"), iou=opts.get("iou"), class_names=names, simplify=opts.get("simplify"),
        min_area=opts.get("min_area"), progress=not quiet, engine=opts.get("engine"), **dask,
    )
    if not quiet:
        click.echo(f"wrote {path}", err=True)


@click.command(short_help="Polygonize a class raster.")
@click.argument("raster")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help=f"Output: {VECTOR_HELP}.")
@click.option("-b", "--band", type=int, default=1, show_default=True, help="Band to polygonize (1-based).")
@click.option("--ignore", help="Values that are no region, comma-separated (nodata is never one), e.g. 0.")
@click.option("--strip-rows", type=int, default=1024, show_default=True,
              help="Rows read at a time; seams between strips are dissolved.")
@polygon_options
@overwrite_option
@quiet_option
@gdal_config_option
@reports_errors
def polygonize(raster: str, output: str, band: int, ignore: str | None, strip_rows: int, vector_crs: str | None,
               simplify: float | None, min_area: float | None, overwrite: bool, quiet: bool,
               gdal_config: tuple) -> None:
    """Polygonize a class RASTER: one polygon per connected region of equal value, with its class and area.

    Regions cross any number of strips and come out whole; nodata and masked pixels (a mask or alpha band)
    are no region.

    \b
    Example:
      tilecast polygonize landcover.tif -o landcover.gpkg --min-area 500 --simplify 5
    """
    from ..vectors import polygonize_raster

    if strip_rows < 1:
        raise SpecError(f"--strip-rows must be at least 1, got {strip_rows}")
    try:  # whole numbers stay ints: a float would fold int64 classes past 2**53 into their neighbours
        values = tuple(_number(v) for v in csv_list(ignore) or [])
    except ValueError:
        raise SpecError(f"--ignore {ignore!r}: give numbers, comma-separated") from None
    env = {k: int(v) if v.isdigit() else v for k, v in gdal_config}
    with rasterio.Env(**env), warnings.catch_warnings():
        warnings.simplefilter("always", TilecastWarning)
        warnings.showwarning = _one_line  # as predict prints them: no path and source line of tilecast's code
        path = polygonize_raster(raster, output, band=band, overwrite=overwrite, vector_crs=vector_crs, ignore=values,
                                 simplify=simplify, min_area=min_area, strip_rows=strip_rows, progress=not quiet)
    if not quiet:
        click.echo(f"wrote {path}", err=True)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _one_line(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    click.echo(f"warning: {message}", err=True)
