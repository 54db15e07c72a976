"""``tilecast info``: describe a raster (grid, bands) or a model (inputs, outputs)."""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import click

from .options import reports_errors


@click.command(short_help="Describe a raster or a model.")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@reports_errors
def info(path: str, as_json: bool) -> None:
    """Describe PATH: a raster (bands, CRS, grid, nodata, class names) or a model (inputs, outputs, metadata)."""
    from ..card import MODEL_SUFFIXES

    is_model = path.lower().endswith(MODEL_SUFFIXES) or (os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "saved_model.pb")) or os.path.exists(os.path.join(path, "saved_model.pbtxt"))
        or os.path.exists(os.path.join(path, "MAR-INF", "MANIFEST.json"))))
    if is_model and path.lower().endswith(".h5"):
        is_model = keras_h5(path)
    if not is_model:
        refuse_pattern(path)
    data = describe_model(path) if is_model else describe_raster(path)
    if as_json:
        click.echo(json.dumps(strict_json(data), indent=2, default=str, allow_nan=False))
        return
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            click.echo(f"{key}:")
            cols = list(value[0])
            widths = [max(len(c), *(len(str(row.get(c, ""))) for row in value)) for c in cols]
            click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
            for row in value:
                click.echo("  " + "  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)))
        else:
            click.echo(f"{key}: {value}")


def refuse_pattern(path: str) -> None:
    """``info 'scenes/*.tif'``: a glob predict would mosaic is not one raster; "not found" would mislead."""
    from ..errors import InputError
    from ..sources.mosaic import glob_files, is_pattern

    if is_pattern(path):
        matches = glob_files(path)
        which = f"give one of them, e.g. {matches[0]}" if matches else "none exists: check the pattern and the folder"
        raise InputError(f"info describes one raster, and {path!r} is a pattern ({len(matches)} file(s) match it); "
                         f"{which}")


def keras_h5(path: str) -> bool:
    """Whether a ``.h5`` file is a Keras model rather than an HDF5 raster (NASA granules use the suffix too): Keras
    writes its ``model_config`` on the file's root. Without h5py (the tf extra) it is taken for a model, whose error
    names the extra."""
    try:
        import h5py
    except ImportError:
        return True
    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError:  # missing, or not HDF5: the model loader's error says which
        return True


NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
"""How gdalinfo -json writes the floats JSON has no literal for (a NaN nodata, mostly)."""


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as strings: Python's ``NaN`` literal is not JSON (jq, JavaScript refuse it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return NON_FINITE[str(value)]
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def describe_raster(path: str) -> dict[str, Any]:
    """What the file holds, read from GDAL directly: a raster that predict would refuse (no CRS, or a container of
    subdatasets with no bands of its own) is still described, since ``info`` is how one finds that out."""
    from rasterio.errors import NotGeoreferencedWarning

    from ..sources.categories import read_classes
    from ..sources.rasterio_source import open_dataset, parse_tags

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the crs and transform lines say it
        ds = open_dataset(path)
    with ds:
        # The band names RasterioSource gives (and --bands selects by): the description, else b1, b2...
        bands = [
            {"band": i + 1, "name": d or f"b{i + 1}", "dtype": ds.dtypes[i], "nodata": ds.nodatavals[i]}
            for i, d in enumerate(ds.descriptions)
        ]
        out = {
            "path": path,
            "driver": ds.driver,
            "size": f"{ds.width} x {ds.height}",
            "crs": ds.crs.to_string() if ds.crs else None,
            "resolution": ds.res,
            "bounds": tuple(ds.bounds),
            "transform": tuple(ds.transform)[:6],
            "block": ds.block_shapes[0] if ds.count else None,
            "overviews": ds.overviews(1) if ds.count else [],
            "bands": bands,
        }
        classes = read_classes(ds)  # GDAL's category names or a RAT: what a class map's values mean
        if classes:
            out["classes"] = [{"band": b, "value": v, "name": n}
                              for b, names in classes.items() for v, n in sorted(names.items())]
        if ds.subdatasets:  # what to give predict instead, e.g. HDF5:"granule.h5"://temperature
            out["subdatasets"] = list(ds.subdatasets)
        properties = parse_tags(ds.tags())
    if properties:
        out["properties"] = properties
    return out


def describe_model(path: str) -> dict[str, Any]:
    """The runtime signature and the model card (sidecar, embedded or converted from Deepness/GeoDeep keys)."""
    from ..card import describe_card, detect_format, open_runtime, read_card, runtime_metadata, validate_card

    fmt = detect_format(path)
    rt = open_runtime(path, fmt)
    try:
        sig = rt.signature

        def rows(specs):
            return [
                {"name": t.name,
                 "shape": "?" if t.shape is None else "x".join("?" if d is None else str(d) for d in t.shape),
                 "dtype": str(t.dtype) if t.dtype is not None else "any"}
                for t in specs
            ]

        out: dict[str, Any] = {"path": path, "format": fmt, "runtime": repr(rt), "inputs": rows(sig.inputs),
                               "outputs": rows(sig.outputs)}
        metadata = runtime_metadata(rt)
        card = read_card(path, metadata, sig)
        if card is None:
            out["card"] = "none (write one with `tilecast card`)"
        else:
            out.update(describe_card(card))
            problems = validate_card(card)
            out["valid"] = "yes (STAC item + MLM)" if not problems else "; ".join(problems[:3])
        from ..vectors.metadata import detector_spec, format_detector

        detector = detector_spec(metadata, card.properties if card is not None else None)
        if detector is not None:  # how its outputs are decoded into objects (-o objects.gpkg)
            out["detector"] = format_detector(detector)
        other = {k: v for k, v in metadata.items() if k != "mlm:item"}
        if other:
            out["metadata"] = other
        return out
    finally:
        rt.close()
