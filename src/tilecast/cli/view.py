"""``tilecast view``: see a model's predictions (or any raster) on a map in the browser, computed as you pan."""

from __future__ import annotations

import copy
import warnings
import webbrowser
from typing import Any

import click
import rasterio

from ..errors import SpecError, TilecastWarning
from .options import SIZE, csv_list, gdal_config_option, quiet_option, reports_errors
from .predict import build_params, gdal_env, load_model, parse_classes
from .predict import predict as predict_command

BATCH_ONLY = {"image", "output", "compress", "no_overviews", "engine", "scheduler", "workers", "resume",
              "performance_report", "overwrite", "quiet", "gdal_config"}
"""Options of ``tilecast predict`` that only concern writing a file; ``view`` takes every other one."""


def _predict_options() -> list[click.Parameter]:
    """The model and tiling options of ``tilecast predict``, shared rather than repeated."""
    return [copy.copy(p) for p in predict_command.params if p.name not in BATCH_ONLY]


class RangeType(click.ParamType):
    """``MIN,MAX``."""

    name = "MIN,MAX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        parts = [p for p in str(value).replace(" ", ",").split(",") if p]
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not a range; use MIN,MAX, e.g. 0,1", param, ctx)
        if not hi > lo:
            self.fail(f"{value!r}: MAX must be greater than MIN", param, ctx)
        return lo, hi


@click.command(short_help="See predictions (or a raster) on a map, computed as you pan.")
@click.argument("image", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. The default accepts this machine only.")
@click.option("--port", type=click.IntRange(0, 65535), default=8750, show_default=True,
              help="Port (0: any free one).")
@click.option("--no-browser", is_flag=True, help="Print the URL without opening a browser.")
@click.option("--band", "view_band", help="Band to show (name or 1-based index). [default: the first output]")
@click.option("--colormap", help="Named colormap (rio-tiler's: viridis, magma, rdylgn...) for continuous values; "
              "given for a class map, its values are shown with it.")
@click.option("--rescale", type=RangeType(), help="Value range MIN,MAX mapped onto the colormap (a class map given "
              "one is shown as values too). [default: data]")
@click.option("--rgb", help="Input bands shown as red,green,blue (names or 1-based indexes), or one grey band.")
@click.option("--basemap", metavar="URL", help="XYZ tile URL drawn under the layers (none by default: offline).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Where computed blocks are kept across runs. [default: ~/.cache/tilecast/view]")
@click.option("--no-cache", is_flag=True, help="Keep computed blocks in memory only.")
@click.option("--cache-size", metavar="SIZE", default="4GiB", show_default=True,
              help="Most disk the block cache takes, every model and input together (e.g. 500MiB, 20GiB); the "
                   "least recently used blocks are deleted beyond it. 0: no limit.")
@click.option("--block-size", type=SIZE, help="Block W[,H] in output pixels (rounded to whole tiles). [default: 512]")
@click.option("--budget", type=int, default=4, show_default=True,
              help="Blocks one map tile may compute; sets the layer's minzoom (the zoom-out guard).")
@quiet_option
@gdal_config_option
@reports_errors
def view(image: tuple[str, ...], model_path: str | None, quiet: bool, gdal_config: tuple, **opts: Any) -> None:
    """Serve a map of IMAGE predicted with a model, or of IMAGE itself when no --model or --endpoint is given.

    Predictions are computed in blocks of the same tiles, overlap and blending as `tilecast predict`, only where
    the map looks, so the map's pixels equal the batch output; blocks are cached in memory and on disk. Every
    predict option works here. Stop with Ctrl-C.

    \b
    Examples:
      tilecast view scene.tif --model landcover.onnx
      tilecast view out/landcover.tif
    """
    from ..view import require_extra

    require_extra()
    from ..view.app import ViewServer
    from ..view.session import from_prediction, from_raster

    options = _view_options(opts)
    if options.classes is not None:  # names for a card's output band: the style takes them, not the model
        opts = {**opts, "classes": None}
    with rasterio.Env(**gdal_env(gdal_config)), warnings.catch_warnings():
        warnings.simplefilter("always", TilecastWarning)
        if model_path or opts.get("endpoint"):
            params = build_params(opts)
            model = load_model(model_path, opts, params)
            prediction = model.predict_image(image[0] if len(image) == 1 else list(image), bounds=opts["bounds"],
                                             bounds_crs=opts["bounds_crs"], append_input=opts["append_input"])
            mapview = from_prediction(prediction, options, title=" + ".join(image))
        else:
            if len(image) > 1:
                raise SpecError("without --model, give one raster to show (tilecast view out/landcover.tif)")
            if any(opts.get(k) for k in ("tile", "output_bands", "crs", "fix_input_proj")):
                raise SpecError("--tile, --output-band, --crs and --fix-input-proj need --model or --endpoint")
            mapview = from_raster(image[0], options)
        server = ViewServer(mapview, host=opts["host"], port=opts["port"], log_level="error" if quiet else "warning")
    if opts["host"] not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {opts['host']}: anyone who can reach the port sees the map and can make "
                   "the model run", err=True)
    click.echo(server.url)
    if not quiet:
        click.echo("serving the map; stop with Ctrl-C", err=True)
    if not opts["no_browser"]:
        webbrowser.open(server.url)
    try:
        server.run()
    except KeyboardInterrupt:
        if server.view.busy():  # its thread would hold the exit until the block ends: exit without it (130)
            raise


view.params[1:1] = _predict_options()


def _view_options(opts: dict[str, Any]) -> Any:
    from ..view.session import ViewOptions
    from ..view.style import check_colormap

    if opts["budget"] < 1:
        raise SpecError("--budget must be at least 1 block per tile")
    if opts["no_cache"] and opts["cache_dir"]:
        raise SpecError("--no-cache keeps blocks in memory only, so --cache-dir would be ignored; give one of them")
    cache: Any = False if opts["no_cache"] else opts["cache_dir"]
    classes = parse_classes(opts["classes"]) if opts.get("classes") and not opts.get("output_bands") else None
    if isinstance(classes, list):
        classes = dict(enumerate(classes))
    return ViewOptions(
        band=opts["view_band"], colormap=check_colormap(opts["colormap"]) if opts["colormap"] else None,
        rescale=opts["rescale"], classes=classes, rgb=csv_list(opts["rgb"]), basemap=opts["basemap"],
        block_size=opts["block_size"], budget=opts["budget"], cache_dir=cache,
        cache_size=None if str(opts["cache_size"]).strip() == "0" else opts["cache_size"],
    )
