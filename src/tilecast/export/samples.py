"""Table and patch exports: band values (or ``neighborhoodToArray`` patches) at labelled sample pixels.

One ``tf.train.Example`` per sample, each band and property a float_list (Earth Engine coerces numbers to float),
GZIP-compressed; a patch band is its ``patch_h x patch_w`` neighbourhood flattened row-major, y first. Samples are
written chunk by chunk of the raster (that is how they are read), so memory stays bounded.

The export is planned first: :func:`select_samples` decides *which* samples (on the caller's machine, so the draw
cannot depend on the engine) and :class:`SamplePlan` says how each becomes a record. An engine then writes them:
:func:`write_samples_local` here, :func:`tilecast.export.dask_samples.write_samples_dask` on Dask.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, TilecastWarning
from ..plan import XY
from ..sources.base import Source
from ..spec import replace_options
from .common import ExportResult
from .reading import patch_offset, read_at
from .sampling import Samples, assign_splits, label_raster_samples, select, vector_samples
from .specfile import make_spec, write_spec
from .writers import SampleOutput, Writers

__all__ = [
    "SampleLabels", "SampleOptions", "SamplePlan", "check_table_output", "finish_samples", "select_samples",
    "write_samples",
    "write_samples_local",
]


@dataclass(frozen=True)
class SampleOptions:
    """How samples are drawn and written, beside the image, labels and output (see
    :func:`tilecast.export.export_samples`): keywords of ``export_samples`` that are checked against these fields."""

    label_name: str | None = None
    properties: Sequence[str] = ()
    n: int | None = None
    per_class: int | Mapping[Any, int] | None = None
    seed: int = 0
    splits: Mapping[str, float] | None = None
    split_block: int | None = None
    stratify_splits: bool = False
    default_value: float = 0.0
    drop_masked: bool = True
    drop_outside: bool = False
    geometries: bool = False
    file_format: str | None = None
    compressed: bool | None = None
    max_file_size: int | None = None
    chunk: int = 512

    @classmethod
    def create(cls, base: SampleOptions | None = None, **options: Any) -> SampleOptions:
        """``base`` (or the defaults) with ``options`` replaced; an unknown keyword is a clear error."""
        return replace_options(base or cls(), options, "unknown export option(s) {unknown}; the options are {known}, "
                               "and where the export runs is engine=tilecast.Local() or engine=tilecast.Dask(...)")


@dataclass(frozen=True)
class SampleLabels:
    """Where the labels come from: a vector file/GeoDataFrame with ``field``, or a label ``raster``."""

    vector: Any = None
    field: str | None = None
    raster: Any = None

    def check(self, opts: SampleOptions) -> None:
        if self.vector is None and self.raster is None:
            raise InputError("no labels given; pass labels (points/polygons, --labels) or a label raster "
                             "(--label-raster)")
        if self.vector is not None and self.raster is not None:
            raise InputError("pass either labels (vector) or a label raster, not both")
        if self.vector is not None and self.field is None and opts.per_class is not None:
            raise InputError("per_class sampling needs the label field (--label-field)")
        if self.raster is not None and opts.drop_outside:
            raise InputError("drop_outside (--drop-outside) skips label points outside the image; a label raster is "
                             "warped to the image's grid, so its pixels outside the image are never sampled: leave "
                             "out drop_outside (--drop-outside)")
        if self.vector is not None and opts.label_name is not None:
            raise InputError("label_name (--label-name) names the feature of a label raster; vector labels keep "
                             "the name of their label field (--label-field)")
        unused = [name for name, given in (("split_block (--split-block)", opts.split_block is not None),
                                           ("stratify_splits (--stratify-splits)", opts.stratify_splits)) if given]
        if unused and not opts.splits:
            raise InputError(f"{' and '.join(unused)} apply to splits; pass splits (--splits train=0.8,test=0.2) "
                             "or leave them out")


def check_table_output(opts: SampleOptions, fmt: str) -> None:
    """A Parquet or CSV table is one uncompressed file: sharding and GZIP options would be silently ignored."""
    unused = [name for name, given in (("max_file_size (--max-file-size)", opts.max_file_size is not None),
                                       ("compressed (--no-compress)", opts.compressed is not None)) if given]
    if unused and fmt != "tfrecord":
        raise InputError(f"{' and '.join(unused)} apply to TFRecord outputs, not {fmt}; leave them out or write "
                         ".tfrecord.gz")


@dataclass(frozen=True)
class SamplePlan:
    """How every selected sample becomes a record: small and picklable, shared by every Dask task."""

    patch: XY
    label: str | None
    """The label's feature name, or None."""
    properties: tuple[str, ...]
    default_value: float
    drop_masked: bool
    chunk: int
    output: SampleOutput


def warn_empty_splits(samples: Samples, fractions: Mapping[str, float], block: int, shape: tuple[int, int],
                      default_block: bool) -> None:
    """A split asked for (fraction > 0) that got no sample is a silent surprise: whole blocks go to one split, so a
    raster of few blocks, or labels inside few of them, can leave a split empty."""
    got = set(samples.split.tolist()) if samples.split is not None else set()
    empty = [name for name, f in fractions.items() if float(f) > 0 and name not in got]
    if not empty:
        return
    h, w = shape
    blocks = -(-h // block) * -(-w // block)
    why = " (the default, max(256, 4 x patch))" if default_block else ""
    warnings.warn(
        f"the split(s) {', '.join(map(repr, empty))} got no samples: splits assign whole {block} x {block}-pixel "
        f"blocks{why}, and this {w} x {h} raster has {blocks} block(s) with the labels in fewer; pass a smaller "
        "split_block (--split-block), e.g. a few times the patch size, or more labels spread over the raster",
        TilecastWarning, stacklevel=3,
    )


def check_feature_names(label: str | None, properties: Sequence[str], geometries: bool) -> None:
    """Each record holds one feature per name: a property repeating the label (or ``x``/``y`` with
    ``geometries``) would give a two-value feature under a one-value spec, or silently replace the property."""
    names = ([label] if label else []) + list(properties) + (["x", "y"] if geometries else [])
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"the feature name(s) {twice} are given more than once (label field, properties and, with "
                         "geometries=True, x/y); list each property once and rename the column(s) that repeat")


def select_samples(source: Source, labels: SampleLabels, patch: XY, opts: SampleOptions,
                   output: SampleOutput) -> tuple[Samples, SamplePlan]:
    """The samples to export (candidates, the seeded ``n``/``per_class`` draw, blocked splits, ``geometries``) and
    the plan that writes them."""
    grid = source.grid
    h, w = grid.shape
    if patch.x > w or patch.y > h:
        raise InputError(
            f"the patch of {patch.x} x {patch.y} pixels is larger than the raster ({w} x {h}); use a smaller patch"
        )
    properties = list(opts.properties)
    lname = labels.field if labels.vector is not None else opts.label_name or "label"
    check_feature_names(lname, properties, opts.geometries)
    if labels.vector is not None:
        candidates = vector_samples(labels.vector, grid, labels.field, properties, opts.drop_outside)
    else:
        if properties:
            raise InputError("properties come from vector labels; a label raster only gives the label")
        candidates = label_raster_samples(labels.raster, grid)
    samples = select(candidates, opts.n, opts.per_class, opts.seed)
    if not len(samples):
        raise InputError("the selection is empty: no labelled pixel falls on the raster; check the labels, "
                         "the label field and the sample counts")
    if opts.splits:
        block = opts.split_block or max(256, 4 * max(patch))
        samples = assign_splits(samples, opts.splits, block, opts.seed, patch, opts.stratify_splits, (h, w))
        if not len(samples):
            raise InputError("every sample straddles blocks of different splits; use a larger split_block")
        warn_empty_splits(samples, opts.splits, block, (h, w), opts.split_block is None)
    # Numbers are float32 in a record (Earth Engine coerces them to float; the record writers cast them); a table
    # keeps properties and coordinates as float64: float32 would round an id past 2**24 (123456789 to 123456792),
    # and move UTM centres by centimetres and lat/lon ones by a metre.
    if opts.geometries:
        xs, ys = grid.transform * (samples.cols + 0.5, samples.rows + 0.5)
        samples.properties.update(x=np.asarray(xs, np.float64), y=np.asarray(ys, np.float64))
        properties += ["x", "y"]
    bands = list(source.band_names)
    twice = sorted({b for b in bands if bands.count(b) > 1})
    if twice:  # one feature per name: the second band would silently replace the first
        raise InputError(f"the band(s) {twice} are selected more than once; list each band once in bands (--bands)")
    clash = set(bands) & ({lname} | set(properties))
    if clash:
        raise InputError(f"the label/property names {sorted(clash)} clash with band names; rename them")
    plan = SamplePlan(patch, lname, tuple(properties), opts.default_value, opts.drop_masked, opts.chunk, output)
    return samples, plan


def write_samples(source: Source, plan: SamplePlan, samples: Samples, writer: Writers,
                  progress: Callable | None) -> int:
    """Read ``samples`` chunk by chunk and hand their records to ``writer``; returns the samples left out."""
    names = list(source.band_names)
    p = plan.patch
    off = patch_offset(p)
    total, done, skipped = len(samples), 0, 0
    for batch in read_at(source, samples.rows, samples.cols, p, plan.default_value, plan.chunk):
        idx = batch.index
        vals = batch.values.astype(np.float32, copy=False)
        # Earth Engine's sample() drops samples whose pixel is masked; a patch keeps masked neighbours (as the
        # default value) but not a masked centre.
        ok = batch.valid[:, off.y, off.x] if plan.drop_masked else np.ones(len(idx), bool)
        skipped += int((~ok).sum())
        label = None if samples.label is None else samples.label[idx]
        split = None if samples.split is None else samples.split[idx]
        props = {k: samples.properties[k][idx] for k in plan.properties}
        writer.write_batch(names, vals, ok, plan.label, label, props, split)
        done += len(idx)
        if progress:
            progress(done, total, done * p.x * p.y)
    return skipped


def write_samples_local(source: Source, plan: SamplePlan, samples: Samples, overwrite: bool,
                        progress: Callable | None) -> tuple[dict[str, list[Path]], dict[str, int], int]:
    """Run the export on this machine: ``(files per split, counts per split, samples left out)``."""
    writer = Writers(plan.output, overwrite)
    try:
        skipped = write_samples(source, plan, samples, writer, progress)
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    return files, dict(writer.counts), skipped


def finish_samples(source: Source, plan: SamplePlan, seed: int, written: tuple[dict, dict, int]) -> ExportResult:
    """The spec beside TFRecord outputs, once every file is in place; ``written`` is what the engine returned."""
    files, counts, skipped = written
    out = plan.output
    shape = [1] if out.table else [plan.patch.y, plan.patch.x]
    feats = {b: shape for b in source.band_names}
    if plan.label:
        feats[plan.label] = [1]
    feats.update({k: [1] for k in plan.properties})
    spec_path = None
    if out.fmt == "tfrecord":
        grid = source.grid
        spec_path = out.spec_path
        rel = {k: [os.path.relpath(f, spec_path.parent) for f in v] for k, v in files.items()}
        write_spec(spec_path, make_spec(
            feats, rel, compressed=out.compressed, bands=source.band_names, label=plan.label,
            properties=list(plan.properties), patch=[plan.patch.x, plan.patch.y], counts=counts, seed=seed,
            default_value=plan.default_value, crs=grid.crs.to_string(), transform=list(grid.transform)[:6],
        ))
    return ExportResult(files, sum(counts.values()), dict(counts), spec_path, None, skipped)
