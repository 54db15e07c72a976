"""``tilecast export samples|patches|image``: training data as TFRecord in Earth Engine's layout."""

from __future__ import annotations

import re
from typing import Any

import click

from .options import SIZE, csv_list, engine_options, finite_bounds, overwrite_option, quiet_option, reports_errors

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


class ByteSize(click.ParamType):
    """``100MB``, ``1GiB`` or a number of bytes."""

    name = "BYTES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).upper() not in _UNITS:
            self.fail(f"{value!r} is not a size; use e.g. 100MB, 1GiB or 5000000", param, ctx)
        return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


BYTES = ByteSize()


def _splits(value: str | None) -> dict[str, float] | None:
    """``train=0.8,val=0.1,test=0.1``."""
    if not value:
        return None
    out = {}
    for part in csv_list(value) or []:
        name, sep, frac = part.partition("=")
        if name.strip() in out:  # a dict would keep the last fraction only
            raise click.BadParameter(f"the split {name.strip()!r} is given twice; name each split once")
        try:
            out[name.strip()] = float(frac)
        except ValueError:
            raise click.BadParameter(f"{part!r}: use NAME=FRACTION, e.g. train=0.8,test=0.2") from None
        if not sep:
            raise click.BadParameter(f"{part!r}: use NAME=FRACTION, e.g. train=0.8,test=0.2")
    return out


def _per_class(value: str | None) -> int | dict[str, int] | None:
    """``500`` for every class, or ``1=500,2=200``."""
    if value is None:
        return None
    if value.strip().isdigit():
        return int(value)
    out: dict[Any, int] = {}
    for part in csv_list(value) or []:
        k, sep, v = part.partition("=")
        if not sep or not k.strip() or not v.strip().isdigit():
            raise click.BadParameter(f"{part!r}: use a count for every class (500) or CLASS=COUNT pairs "
                                     "(1=500,2=200)", param_hint="--per-class")
        try:
            key: Any = float(k)
        except ValueError:
            key = k
        out[key] = int(v)
    return out


def _label_options(f: Any) -> Any:
    options = [
        click.option("--labels", type=click.Path(), help="Vector file of labelled points or polygons (OGR formats)."),
        click.option("--label-field", help="Numeric attribute of --labels that holds the label."),
        click.option("--label-raster", type=click.Path(), help="Raster whose valid pixels are the labels (band 1)."),
        click.option("--label-name", help="Feature name of the label from --label-raster (default: label)."),
        click.option("--property", "properties", multiple=True, help="Extra numeric attribute to export (repeatable)."),
        click.option("--bands", help="Bands to export: 1-based indexes or descriptions, comma-separated."),
        click.option("-n", "--num", "n", type=int, help="Random subset of this many samples (after --per-class)."),
        click.option("--per-class", help="Stratified: this many samples per class, or CLASS=N,CLASS=N."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random selection/splits."),
        click.option("--splits", help="Spatially blocked splits, e.g. train=0.8,val=0.1,test=0.1 (relative weights: "
                     "normalised to sum to 1)."),
        click.option("--split-block", type=int, help="Block size in pixels for --splits (default: max(256, 4*patch))."),
        click.option("--stratify-splits", is_flag=True, help="Deal blocks out so each class follows the fractions."),
        click.option("--drop-outside", is_flag=True,
                     help="Skip label points outside the raster instead of failing (--labels only)."),
        click.option("--geometries", is_flag=True, help="Add each sample's pixel-centre x and y (image CRS)."),
        click.option("--default-value", type=float, default=0, show_default=True, help="Value of masked pixels."),
        click.option("--max-file-size", type=BYTES, help="Shard the output at this many uncompressed bytes."),
        click.option("--no-compress", is_flag=True, help="Write plain .tfrecord instead of GZIP."),
        click.option("-o", "--output", required=True, help="Output file (.tfrecord.gz, .parquet, .csv) or folder/."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


@click.group(short_help="Export training data as TFRecord (Earth Engine layout).")
def export() -> None:
    """Export samples, patches or a whole image as TFRecord, in Earth Engine's layout (plus a *.spec.json)."""


def _run_samples(image: str, patch: tuple[int, int] | None, quiet: bool, overwrite: bool, o: dict) -> None:
    from ..export import export_samples

    result = export_samples(
        image, o["output"], labels=o["labels"], label_field=o["label_field"], label_raster=o["label_raster"],
        label_name=o["label_name"], bands=csv_list(o["bands"]), properties=o["properties"], patch=patch, n=o["n"],
        per_class=_per_class(o["per_class"]), seed=o["seed"], splits=_splits(o["splits"]),
        split_block=o["split_block"], stratify_splits=o["stratify_splits"], default_value=o["default_value"],
        drop_outside=o["drop_outside"],
        geometries=o["geometries"], compressed=False if o["no_compress"] else None,
        max_file_size=o["max_file_size"], overwrite=overwrite, progress=not quiet, engine=o["engine"],
    )
    counts = ", ".join(f"{k}: {v}" for k, v in result.counts.items())
    nfiles = sum(len(v) for v in result.files.values())
    click.echo(f"wrote {result.count} examples ({counts}) to {nfiles} file(s)"
               + (f"; spec {result.spec}" if result.spec else "")
               + (f"; skipped {result.skipped} masked" if result.skipped else ""), err=True)


@export.command(short_help="Band values at labelled points/pixels (a table).")
@click.argument("image")
@_label_options
@engine_options("samples_per_task", help="Read and encode on this machine, or on Dask (same examples, same order).")
@overwrite_option
@quiet_option
@reports_errors
def samples(image: str, quiet: bool, overwrite: bool, **o: Any) -> None:
    """One Example per labelled pixel of IMAGE: each band and the label as a float_list (Earth Engine's
    sampleRegions + Export.table TFRecord). Masked pixels are skipped."""
    _run_samples(image, None, quiet, overwrite, o)


@export.command(short_help="PATCH x PATCH neighbourhoods around labelled pixels.")
@click.argument("image")
@click.option("--patch", type=SIZE, required=True, help="Patch W[,H] in pixels (neighborhoodToArray kernel).")
@_label_options
@engine_options("samples_per_task", help="Read and encode on this machine, or on Dask (same examples, same order).")
@overwrite_option
@quiet_option
@reports_errors
def patches(image: str, patch: tuple[int, int], quiet: bool, overwrite: bool, **o: Any) -> None:
    """One Example per sample: each band a PATCH x PATCH float_list, row-major (y first), masked pixels set to
    --default-value; writes shards (per split) and spec.json into the output folder."""
    _run_samples(image, patch, quiet, overwrite, o)


@export.command(short_help="The whole image as TFRecord patches plus the mixer.")
@click.argument("image")
@click.option("--patch", type=SIZE, required=True, help="patchDimensions W[,H].")
@click.option("--kernel", type=SIZE, default="1", show_default=True,
              help="kernelSize W[,H]: a TOTAL margin, half on each side (must be even, or 1 for none).")
@click.option("--max-file-size", type=BYTES, default="1GiB", show_default=True,
              help="maxFileSize: shard at this many uncompressed bytes.")
@click.option("--no-compress", is_flag=True, help="compressed=false: plain .tfrecord files.")
@click.option("--default-value", type=float, default=0, show_default=True, help="defaultValue for masked pixels.")
@click.option("--masked-threshold", type=float, default=1.0, show_default=True,
              help="maskedThreshold: drop patches more masked than this (no mixer unless 1).")
@click.option("--collapse-bands", is_flag=True, help="collapseBands: one [H,W,D] feature named after the first band.")
@click.option("--sequence-data", is_flag=True, help="sequenceData: one SequenceExample per pixel.")
@click.option("--array", "arrays", multiple=True, metavar="NAME=B1,B2,...",
              help="Make an array band NAME from these bands (repeatable); needs --tensor-depth.")
@click.option("--tensor-depth", "tensor_depths", multiple=True, metavar="NAME=D",
              help="tensorDepths: depth of array band NAME (truncated or padded with the default value).")
@click.option("--bands", help="Bands to export: 1-based indexes or descriptions, comma-separated.")
@click.option("--bounds", type=float, nargs=4, metavar="L B R T", callback=finite_bounds,
              help="Export only this region (image CRS, or --bounds-crs).")
@click.option("--bounds-crs", help="CRS of --bounds (default: the image's CRS), e.g. EPSG:4326.")
@click.option("--prefix", help="File name prefix (default: the image's name).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder.")
@engine_options("chunk_rows", help="Run on this machine, or on Dask (chunks of patch rows; same examples, same order).")
@overwrite_option
@quiet_option
@reports_errors
def image(image: str, patch: tuple[int, int], kernel: tuple[int, int], quiet: bool, overwrite: bool,
          **o: Any) -> None:
    """Cut IMAGE into patches with a kernel margin, row-major, sharded by size, with <prefix>-mixer.json (for
    `tilecast import`) and <prefix>.spec.json (for training readers)."""
    from ..export import export_image
    from ..export.image import bounds_in_crs_of

    bounds = o["bounds"]
    if o["bounds_crs"] and not bounds:
        raise click.BadParameter("it gives the CRS of --bounds; pass --bounds too", param_hint="--bounds-crs")
    if bounds and o["bounds_crs"]:
        bounds = bounds_in_crs_of(image, bounds, o["bounds_crs"], csv_list(o["bands"]))
    arrays = {}
    for item in o["arrays"]:
        name, _, members = item.partition("=")
        if not name.strip() or not csv_list(members):
            raise click.BadParameter(f"{item!r}: use NAME=B1,B2,...", param_hint="--array")
        arrays[name] = csv_list(members) or []
    depths = {}
    for item in o["tensor_depths"]:
        name, _, d = item.partition("=")
        try:
            depths[name] = int(d)
        except ValueError:
            raise click.BadParameter(f"{item!r}: use NAME=DEPTH", param_hint="--tensor-depth") from None
    result = export_image(
        image, o["output"], list(patch), engine=o["engine"], kernel=list(kernel),
        prefix=o["prefix"], bands=csv_list(o["bands"]),
        bounds=bounds, overwrite=overwrite, progress=not quiet, compressed=not o["no_compress"],
        max_file_size=o["max_file_size"], default_value=o["default_value"], masked_threshold=o["masked_threshold"],
        collapse_bands=o["collapse_bands"], sequence_data=o["sequence_data"], arrays=arrays, tensor_depths=depths,
    )
    click.echo(f"wrote {result.count} patches to {len(result.files['all'])} file(s)"
               + (f"; mixer {result.mixer}" if result.mixer else "; no mixer (masked threshold < 1)")
               + (f"; dropped {result.skipped} masked patches" if result.skipped else ""), err=True)
