"""``tilecast predict``: run a model over a raster and write a Cloud-Optimized GeoTIFF."""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import click
import rasterio
from click.core import ParameterSource

from ..errors import SpecError, TilecastWarning
from ..plan import is_auto
from ..runstats import RunStats
from ..runtimes.devices import describe_placement
from ..spec import parse_colors, parse_output_bands
from .options import (
    SIZE,
    TILE_SIZE,
    KeyValueType,
    SectionedCommand,
    compress_option,
    csv_list,
    endpoint_request_options,
    engine_options,
    finite_bounds,
    gdal_config_option,
    overwrite_option,
    quiet_option,
    reports_errors,
    verbose_option,
)
from .polygonize import VECTOR_HELP, check_output_options, detector_options, polygon_options, write_vectors

SECTIONS = {
    "Input": ("bands", "bounds", "bounds_crs", "crs", "resolution", "fix_input_proj", "resampling", "fill_value",
              "mask_halo", "input_type_override", "input_shape", "input_property", "gdal_config"),
    "Model and tiling": ("model_path", "tile", "memory_budget", "overlap", "overlap_mode", "output_tile", "layout",
                         "blend", "padding", "batch_size", "providers", "device", "precision"),
    "Output": ("output", "output_bands", "classes", "colors", "nodata", "append_input", "compress", "no_overviews",
               "overwrite", "resume", "quiet", "verbose"),
    "Vector output (-o .gpkg, .parquet, .fgb, .geojson, .shp)": (
        "vector_crs", "simplify", "min_area", "confidence", "iou", "det_type"),
    "Engine": ("engine", "scheduler", "workers", "performance_report"),
    "Endpoint (a hosted model instead of --model)": (
        "endpoint", "protocol", "payload_format", "request_timeout", "max_payload_bytes", "output_multiplier",
        "concurrency", "headers", "token_env"),
}
"""The sections of ``tilecast predict --help``."""


@click.command(cls=SectionedCommand, sections=SECTIONS, short_help="Predict a raster with a model.")
@click.argument("image", nargs=-1, required=True)
@click.option("-m", "--model", "model_path",
              help="Model file: .onnx, TorchScript .pt, torch.export .pt2, Keras .keras or a SavedModel folder. Its "
              "model card (sidecar or embedded) supplies the parameters you leave out.")
@click.option("--endpoint", help="URL of a hosted model instead of --model (KServe v2, TF Serving, Vertex AI).")
@endpoint_request_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help=f"Output: a GeoTIFF (COG), or a vector file ({VECTOR_HELP}) for detectors and class maps.")
@click.option("--tile", type=TILE_SIZE,
              help="Core tile W[,H] in input pixels (Earth Engine's inputTileSize), or auto: the largest tile the "
              "model accepts within --memory-budget (a fixed-size model's own size).")
@click.option("--memory-budget", metavar="SIZE", callback=lambda ctx, param, value: _memory_budget(value),
              help="Memory --tile auto may plan for, e.g. 2GiB or 1500MiB. [default: half the memory available]")
@click.option("--overlap", type=SIZE,
              help="Overlap W[,H] added on each edge (inputOverlapSize; see --overlap-mode). [default: 0]")
@click.option("--overlap-mode", type=click.Choice(["per_edge", "total"]),
              help="per_edge: model sees tile+2*overlap; total: tile+overlap (half per side). [default: per_edge]")
@click.option("--output-tile", type=SIZE, help="Output tile W[,H] (outputTileSize); rescales the output pixels.")
@click.option("--output-band", "output_bands", multiple=True, metavar="NAME:DTYPE[:DIMS]",
              help="Declare an output band (repeatable), e.g. landcover:uint8 or probs:float32:1.")
@click.option("--layout", type=click.Choice(["bands", "NHWC", "NCHW", "pixels"]),
              help="How bands feed the model: one input per band (Earth Engine) or stacked. Default: inferred.")
@click.option("--bands", help="Bands to use, in model order: 1-based indexes or descriptions, comma-separated.")
@click.option("--crs", help="Model grid CRS (Earth Engine's proj), e.g. EPSG:32633.")
@click.option("--resolution", type=float, nargs=2, metavar="X Y", help="Model grid pixel size in CRS units.")
@click.option("--fix-input-proj", is_flag=True, help="Warp the input to --crs/--resolution, window by window.")
@click.option("--resampling", callback=lambda ctx, param, value: _resampling(value),
              help="Resampling used when warping: nearest, bilinear, cubic, lanczos, average, mode... "
              "[default: bilinear]")
@click.option("--blend", type=click.Choice(["crop", "cosine", "hann"]),
              help="crop keeps each tile's core (Earth Engine); cosine/hann blend float outputs over the overlap. "
              "[default: crop]")
@click.option("--padding", type=click.Choice(["zero", "reflect"]),
              help="How tiles are padded beyond the raster edge. [default: zero]")
@click.option("--batch-size", type=int, help="Tiles per model call. [default: 8]")
@click.option("--bounds", type=float, nargs=4, metavar="L B R T", callback=finite_bounds,
              help="Predict only this region.")
@click.option("--bounds-crs", help="CRS of --bounds (default: the image's CRS).")
@click.option("--nodata", type=float, help="Output nodata (default: NaN for floats, the dtype's max for unsigned "
              "and min for signed integers; -2**53 for int64, the smallest GDAL records exactly).")
@click.option("--fill-value", type=float, help="Value sent for masked pixels. [default: 0]")
@click.option("--mask-halo", is_flag=True, help="Also mask output pixels whose overlap neighbourhood touches masked "
              "input (no rim of guesses along nodata edges; Earth Engine masks only the pixel's own footprint).")
@click.option("--append-input", is_flag=True, help="Write the input bands followed by the outputs.")
@click.option("--classes", help="Class names of the first output band: 1=water,2=forest (or water,forest for 0, 1).")
@click.option("--colors", help="Class colours of the first output band: 0:#1f77b4,1:#ff7f0e (or #1f77b4,#ff7f0e in "
              "class order, or a palette: tab10, set1, paired). [default: tab10 for bands with --classes]")
@click.option("--input-type-override", multiple=True, type=KeyValueType(":"), metavar="NAME:DTYPE",
              help="Cast an input to a dtype (repeatable).")
@click.option("--input-shape", multiple=True, type=KeyValueType(":"), metavar="NAME:DEPTH",
              callback=lambda ctx, param, value: _input_depths(value),
              help="Make NAME an array input of DEPTH consecutive bands (repeatable).")
@click.option("--input-property", multiple=True, metavar="NAME",
              help="Send an image property (tag) with every tile (repeatable).")
@click.option("--providers", help="ONNX Runtime execution providers, e.g. cuda,cpu or tensorrt,cuda,cpu.")
@click.option("--device", help="Where the model runs: cpu, cuda (the first GPU), cuda:1, cuda:0,1 or cuda:all (one "
              "stream of tiles per GPU). [default: the first GPU if the runtime has one, else cpu]")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]),
              help="Float precision inside the model (fp16/bf16 for GPUs; bf16 with PyTorch only). Outputs keep "
              "their dtypes. [default: fp32]")
@compress_option
@click.option("--no-overviews", is_flag=True, help="Do not build overviews.")
@engine_options(help="local: threads on this machine; dask: chunk tasks on a Dask cluster.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run into the same output (and make this "
              "run resumable); finished chunks are not recomputed.")
@polygon_options
@detector_options
@overwrite_option
@quiet_option
@verbose_option
@gdal_config_option
@reports_errors
def predict(
    image: tuple[str, ...], model_path: str | None, output: str, quiet: bool, verbose: bool, gdal_config: tuple,
    **opts: Any
) -> None:
    """Predict IMAGE (a path or URL GDAL opens) with a model and write a Cloud-Optimized GeoTIFF.

    Several IMAGEs, a quoted glob ('scenes/*.tif'), or STAC items (an ItemCollection .json, or item .json files)
    are mosaicked onto one grid.

    \b
    Example:
      tilecast predict scene.tif --model unet.onnx --tile 256 --overlap 16 \\
          --output-band landcover:uint8 -o landcover.tif
    """
    vector = check_output_options(output, opts)  # raster-only flags with .gpkg (and the reverse) are an error
    if not vector:
        refuse_other_raster_format(output)
    if vector and opts["colors"]:
        raise click.UsageError(f"--colors only apply to raster outputs (a colour table), not {output}; drop it, or "
                               "write a .tif")
    names = None
    if vector and opts["classes"] and not opts["output_bands"]:  # a detector's class names, not a band's
        names = parse_classes(opts["classes"])
        opts = {**opts, "classes": None}
    params = build_params(opts)
    with rasterio.Env(**gdal_env(gdal_config)), warnings.catch_warnings():
        warnings.simplefilter("always", TilecastWarning)
        warnings.showwarning = _show_warning
        model = load_model(model_path, opts, params)
        result = model.predict_image(
            image[0] if len(image) == 1 else list(image), bounds=opts["bounds"], bounds_crs=opts["bounds_crs"],
            append_input=opts["append_input"],
        )
        if verbose and result.model.tile_choice is not None:
            click.echo(result.model.tile_choice.describe(), err=True)
        if vector:
            write_vectors(result, output, opts, quiet, class_names=names)
            return
        stats = RunStats() if verbose else None
        path = result.to_geotiff(
            output, overwrite=opts["overwrite"], progress=not quiet, compress=opts["compress"],
            overviews=not opts["no_overviews"], engine=opts["engine"], resume=opts["resume"], stats=stats,
        )
    if not quiet:
        h, w = result.plan.output_shape
        click.echo(f"wrote {path} ({w} x {h} px, {len(result.profile.band_names)} band(s))", err=True)
    if verbose:
        placement = describe_placement(result.model.runtime, result.model.spec.batch_size)
        if placement:
            click.echo(placement, err=True)
    if stats is not None:
        click.echo(stats.summary(), err=True)


# Defaults that keep remote reads lean; --config and the environment take precedence. No GDAL_CACHEMAX: the library
# sizes GDAL's block cache to each run (tilecast.prediction.gdal_cache_bytes), and a value here would count as the
# user's and replace that. rasterio.Env passes an integer GDAL_CACHEMAX to GDALSetCacheMax64, i.e. in BYTES.
GDAL_DEFAULTS: dict[str, Any] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def gdal_env(config: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """GDAL options for a run: our defaults, unless the environment or ``--config`` says otherwise."""
    env = {k: v for k, v in GDAL_DEFAULTS.items() if k not in os.environ}
    env.update({k: int(v) if v.isdigit() else v for k, v in config})
    if isinstance(env.get("GDAL_CACHEMAX"), int) and env["GDAL_CACHEMAX"] < 100_000:
        env["GDAL_CACHEMAX"] *= 2**20  # GDAL's convention: small values are megabytes
    return env


ENDPOINT_FLAGS = {"protocol": "--protocol", "payload_format": "--payload-format", "request_timeout": "--timeout",
                  "max_payload_bytes": "--max-payload-bytes", "output_multiplier": "--output-multiplier",
                  "concurrency": "--concurrency", "headers": "--header", "token_env": "--token-env"}
"""The options that shape requests to a hosted model (``endpoint_request_options``), by parameter name."""


def given_flags(names: dict[str, str]) -> list[str]:
    """The flags among ``names`` (parameter -> flag) given on the command line or in the environment."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    unset = (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    return [flag for name, flag in names.items() if ctx.get_parameter_source(name) not in unset]


def refuse_unused_model_options(model_path: str | None) -> None:
    """Request options with a local --model, or ONNX Runtime providers with --endpoint, would do nothing."""
    if model_path:
        unused = given_flags(ENDPOINT_FLAGS)
        if unused:
            raise click.UsageError(f"{', '.join(unused)} shape requests to a hosted model (--endpoint); a local "
                                   "--model does not use them: leave them out")
    elif given_flags({"providers": "--providers"}):
        raise click.UsageError("--providers chooses ONNX Runtime's providers for a local --model; a hosted model "
                               "(--endpoint) runs where it is served: leave --providers out")


def load_model(model_path: str | None, opts: dict[str, Any], params: dict[str, Any]):
    """The model from --model or --endpoint (exactly one)."""
    from ..model import Model

    if bool(model_path) == bool(opts.get("endpoint")):
        raise SpecError("give exactly one of --model FILE or --endpoint URL")
    refuse_unused_model_options(model_path)
    if model_path:  # any format tilecast loads; its model card fills in what the flags leave out
        from ..loading import explicit
        from ..loading import load_model as load_with_card

        placement = explicit({"device": opts.get("device"), "precision": opts.get("precision")})
        model = load_with_card(model_path, providers=csv_list(opts.get("providers")), **placement,
                               **explicit(params))
    else:
        if opts.get("device") or opts.get("precision"):
            raise SpecError("--device and --precision choose where a local --model runs; a hosted model "
                            "(--endpoint) runs where it is served, so leave them out")
        from ..runtimes.http import endpoint_runtime

        model = Model(endpoint_runtime(opts["endpoint"], opts["endpoint_options"]),
                      **{k: v for k, v in params.items() if v is not None})
    spec = model.spec
    problem = None
    if params.get("resampling") and not spec.fix_input_proj:
        problem = ("--resampling chooses how --fix-input-proj warps the input to --crs/--resolution; without "
                   "--fix-input-proj (here or in the model card) nothing is warped: add it, or leave --resampling out")
    elif spec.fix_input_proj and spec.crs is None and spec.resolution is None:
        problem = ("--fix-input-proj warps the input to the model's grid, but neither --crs nor --resolution (nor "
                   "the model card) gives one: add them, or leave --fix-input-proj out")
    if problem:
        model.close()
        raise click.UsageError(problem)
    return model


def build_params(opts: dict[str, Any]) -> dict[str, Any]:
    """Model parameters from CLI options (shared with other commands that build models)."""
    output_bands: Any = list(opts["output_bands"]) or None
    if opts.get("classes") or opts.get("colors"):
        flag = "--classes" if opts.get("classes") else "--colors"
        if not output_bands:
            raise SpecError(f"{flag} needs an --output-band to attach to (the first one gets the classes)")
        parsed = parse_output_bands(output_bands)  # every band checked as without --classes
        bands = {b.name: {"type": b.dtype.name, "dimensions": b.dimensions} for b in parsed}
        first: dict[str, Any] = bands[parsed[0].name]
        classes = parse_classes(opts["classes"]) if opts.get("classes") else None
        if classes:
            first["classes"] = classes
        if opts.get("colors"):
            values = None
            if classes:
                values = list(classes) if isinstance(classes, dict) else list(range(len(classes)))
            first["colors"] = parse_colors(opts["colors"], values)
        output_bands = bands
    if opts.get("memory_budget") is not None and not is_auto(opts["tile"]):
        raise click.UsageError("--memory-budget sizes --tile auto; without --tile auto (a fixed --tile W[,H], or the "
                               "card's tile) it is not used: give --tile auto, or leave --memory-budget out")
    params: dict[str, Any] = {
        "input_tile_size": opts["tile"],
        "memory_budget": opts.get("memory_budget"),
        "input_overlap_size": opts["overlap"],
        "overlap_mode": opts["overlap_mode"],
        "output_tile_size": opts["output_tile"],
        "output_bands": output_bands,
        "layout": opts["layout"],
        "bands": csv_list(opts["bands"]),
        "crs": opts["crs"],
        "resolution": opts["resolution"] or None,
        "fix_input_proj": opts["fix_input_proj"],
        "resampling": opts["resampling"],
        "blend": opts["blend"],
        "padding": opts["padding"],
        "batch_size": opts["batch_size"],
        "nodata": opts["nodata"],
        "fill_value": opts["fill_value"],
        "mask_receptive_field": opts.get("mask_halo") or None,
        "input_type_override": dict(opts["input_type_override"]),
        "input_shapes": {k: [int(v)] for k, v in opts["input_shape"]},
        "input_properties": list(opts["input_property"]),
    }
    return params


OTHER_FORMATS = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".jp2", ".j2k"), "an image"),
    **dict.fromkeys((".zarr", ".nc", ".nc4", ".h5", ".hdf", ".hdf5", ".npy", ".npz"), "an array store"),
    **dict.fromkeys((".vrt", ".img", ".asc", ".grd", ".kea", ".csv", ".json", ".kml", ".kmz", ".gml"),
                    "another GIS format"),
}
"""Suffixes of formats ``predict -o`` does not write, by kind: the output would be a GeoTIFF under that name."""


def refuse_other_raster_format(output: str) -> None:
    """``-o x.png`` (or ``.zarr``, ``.nc``) would silently get a GeoTIFF under that name: say what is written."""
    suffix = os.path.splitext(output)[1].lower()
    kind = OTHER_FORMATS.get(suffix)
    if kind:
        zarr = "; for Zarr, use Model.predict_image(...).to_zarr() in Python" if suffix == ".zarr" else ""
        raise click.UsageError(f"-o {output}: {suffix} is {kind}, but predict writes a Cloud-Optimized GeoTIFF "
                               f"(-o NAME.tif) or a vector file ({VECTOR_HELP}); name the output .tif{zarr}")


def parse_classes(text: str) -> dict[int, str] | list[str]:
    """``1=water,2=forest`` keys names by pixel value; ``water,forest`` means values 0, 1."""
    items = csv_list(text) or []
    if not any("=" in item for item in items):
        return items
    out = {}
    for item in items:
        value, sep, name = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise SpecError(f"--classes: {item!r} is not VALUE=NAME; use e.g. 1=water,2=forest")
        out[int(value)] = name.strip()
    return out


def _memory_budget(value: str | None) -> str | None:
    """``--memory-budget``, checked before any work: with a fixed --tile the library never reads it."""
    from ..autotile import parse_bytes

    if value is not None:
        try:
            parse_bytes(value, "--memory-budget")
        except SpecError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _resampling(value: str | None) -> str | None:
    """``--resampling``, checked as a usage error before the model loads (ModelSpec checks the same names later;
    a typo with an input already on the model's grid was once silently ignored)."""
    from ..spec import RESAMPLINGS

    if value is not None and value not in RESAMPLINGS:
        raise click.BadParameter(f"{value!r} is not a resampling; use one of {', '.join(RESAMPLINGS)}")
    return value


def _input_depths(value: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``--input-shape NAME:DEPTH``: DEPTH a positive integer (``int()`` in build_params would be a traceback)."""
    for name, depth in value:
        try:
            ok = int(depth) >= 1
        except ValueError:
            ok = False
        if not ok:
            raise click.BadParameter(f"{name}:{depth}: DEPTH must be a positive integer, e.g. {name}:4")
    return value


rio_predict = copy.copy(predict)
rio_predict.name = "tilecast-predict"
"""``rio tilecast-predict``: the same command as a rasterio plugin (click-plugins registers it under this name)."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)
