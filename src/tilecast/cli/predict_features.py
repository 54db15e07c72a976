"""``tilecast predict-features``: Earth Engine's ``predictProperties`` on a vector file, streamed batch by batch."""

from __future__ import annotations

import os
from typing import Any

import click

from ..errors import SpecError
from .options import (
    SIZE,
    KeyValueType,
    csv_list,
    endpoint_request_options,
    overwrite_option,
    quiet_option,
    reports_errors,
)


def _names(values: tuple[str, ...]) -> list[str] | None:
    out = [n for v in values for n in csv_list(v) or []]
    return out or None


def _samples(values: tuple[str, ...]) -> Any:
    """``--sample scene.tif`` (repeatable); ``--sample ndvi=ndvi.tif`` names a raster's properties."""
    if not values:
        return None
    named = {}
    plain = []
    for v in values:
        key, sep, path = v.partition("=")
        if sep and key and "/" not in key and "\\" not in key and not os.path.exists(v):  # a file may hold '='
            named[key] = path
        else:
            plain.append(v)
    if named and plain:
        raise SpecError("--sample: name every raster (NAME=PATH) or none of them")
    if named:
        return named
    return plain[0] if len(plain) == 1 else plain


@click.command("predict-features", short_help="Predict properties of vector features with a model.")
@click.argument("features")
@click.option("-m", "--model", "model_path", help="Model file (.onnx).")
@click.option("--endpoint", help="URL of a hosted model instead of --model (KServe v2, TF Serving, Vertex AI).")
@endpoint_request_options
@click.option("--providers", help="ONNX Runtime execution providers, e.g. cuda,cpu.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file: .gpkg, .parquet, .geojson, .fgb or .shp.")
@click.option("--input-property", "input_properties", multiple=True, metavar="NAMES",
              help="Properties sent to the model, in order (comma-separated or repeated). Default: the raster "
                   "statistics with --sample, else the model's input names, else every column.")
@click.option("--output-property", "output_properties", multiple=True, required=True,
              metavar="NAME[=OUTPUT]:DTYPE[:DIMS]",
              help="A predicted property (repeatable): crop:int32, crop=label:int32, p=probabilities:float32:1.")
@click.option("--input-type-override", multiple=True, type=KeyValueType(":"), metavar="NAME:DTYPE",
              help="Cast a property before sending it (repeatable), e.g. area:float32 or code:str.")
@click.option("--input-shape", multiple=True, type=KeyValueType(":"), metavar="NAME:D[xD]",
              help="Shape of an array-valued property (repeatable), e.g. hist:16.")
@click.option("--sample", "samples", multiple=True, metavar="[NAME=]RASTER",
              help="Raster to read inputs from at each feature (repeatable).")
@click.option("--bands", help="Raster bands to use: 1-based indexes or descriptions, comma-separated.")
@click.option("--stats", help="Zonal statistics over polygons: mean,std,min,max,median,count (default mean). "
                              "Points without --stats get the pixel value.")
@click.option("--all-touched", is_flag=True, help="Zonal statistics over every pixel a polygon touches "
                                                  "(default: pixels whose centre is inside).")
@click.option("--patch", type=SIZE, help="Send a W[,H] pixel patch centred on each feature (property 'patch').")
@click.option("--nulls", type=click.Choice(["error", "skip", "fill"]), default="error", show_default=True,
              help="Null inputs: fail, leave the feature's predictions empty, or replace with --fill-value.")
@click.option("--fill-value", type=float, default=0, show_default=True,
              help="Replacement for null inputs (with --nulls fill); also pads --patch windows beyond the raster.")
@click.option("--array-columns", type=click.Choice(["list", "split"]),
              help="Array outputs as list columns or NAME_0, NAME_1... (default: list where the format allows).")
@click.option("--layout", type=click.Choice(["auto", "named", "stacked"]), default="auto", show_default=True,
              help="named: one model input per property (Earth Engine); stacked: one (N, features) input.")
@click.option("--batch-size", type=click.IntRange(min=1), default=65_536, show_default=True, help="Features per batch.")
@click.option("--layer", help="Input layer (GeoPackage and other multi-layer formats).")
@click.option("--output-layer", help="Output layer name.")
@click.option("--driver", help="Output OGR driver, when the extension does not tell (e.g. GPKG).")
@click.option("--features-crs", help="CRS of features that have none, e.g. EPSG:4326 (never reprojects).")
@overwrite_option
@quiet_option
@reports_errors
def predict_features(features: str, model_path: str | None, output: str, quiet: bool, **opts: Any) -> None:
    """Predict properties of each feature in FEATURES (any vector file GDAL reads, or GeoParquet) and write them,
    merged into the features, to --output.

    \b
    Examples:
      tilecast predict-features parcels.gpkg --model crop.onnx --input-property ndvi_mean,area \\
          --output-property crop:int32 -o parcels_pred.gpkg
      tilecast predict-features fields.parquet --model classifier.onnx --sample scene.tif --stats mean,std \\
          --output-property class=label:uint8 -o out.parquet
    """
    source = click.get_current_context().get_parameter_source("fill_value")
    if source is not click.core.ParameterSource.DEFAULT and opts["nulls"] != "fill" and opts["patch"] is None:
        raise click.UsageError("--fill-value replaces null inputs only with --nulls fill (and pads --patch windows); "
                               "add --nulls fill, or leave --fill-value out")
    from ..features import FeatureProgress, predict_features_file
    from ..runtimes.onnx import OnnxRuntime
    from .predict import load_model, refuse_unused_model_options

    if model_path and not opts.get("endpoint"):
        refuse_unused_model_options(model_path)
        model: Any = OnnxRuntime(model_path, providers=csv_list(opts.get("providers")))
    else:
        model = load_model(model_path, opts, {"input_tile_size": 1})
    shapes = {}
    for name, dims in opts["input_shape"]:
        try:
            shapes[name] = [int(d) for d in dims.replace(",", "x").split("x") if d]
        except ValueError:
            raise SpecError(f"--input-shape {name}:{dims}: use NAME:DEPTH or NAME:HxW, e.g. hist:16") from None
    progress = None if quiet else FeatureProgress()
    try:
        path = predict_features_file(
            model, features, output, overwrite=opts["overwrite"], driver=opts["driver"],
            output_layer=opts["output_layer"], array_columns=opts["array_columns"], batch_size=opts["batch_size"],
            layer=opts["layer"], features_crs=opts["features_crs"], progress=progress,
            output_properties=list(opts["output_properties"]), input_properties=_names(opts["input_properties"]),
            input_type_override=dict(opts["input_type_override"]) or None, input_shapes=shapes or None,
            sample=_samples(opts["samples"]), bands=csv_list(opts["bands"]), stats=csv_list(opts["stats"]),
            all_touched=opts["all_touched"], patch_size=opts["patch"], nulls=opts["nulls"],
            fill_value=opts["fill_value"], layout=opts["layout"],
        )
    finally:
        model.close()
    if not quiet:
        click.echo(f"wrote {path}", err=True)
