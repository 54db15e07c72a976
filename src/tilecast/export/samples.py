"""Table and patch exports: band values (or ``neighborhoodToArray`` patches) at labelled sample pixels.

One ``tf.train.Example`` per sample, each band and property a float_list (Earth Engine coerces numbers to float),
GZIP-compressed; a patch band is its ``patch_h x patch_w`` neighbourhood flattened row-major, y first. Samples are
written chunk by chunk of the raster (that is how they are read), so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputError, OutputExistsError, SpecError
from ..plan import XY, xy
from ..progress import Progress
from ..sources import open_source
from ..training import make_spec, write_spec
from .reading import bounded_cache, patch_offset, read_at
from .sampling import Samples, assign_splits, label_raster_samples, select, vector_samples
from .tfrecord import ShardedWriter, example_bytes, float_row_examples

__all__ = ["ExportResult", "export_patches", "export_samples"]

_SUFFIXES = {".tfrecord.gz": "tfrecord", ".tfrecord": "tfrecord", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class ExportResult:
    """What an export wrote."""

    files: dict[str, list[Path]]
    """Output files per split (``"all"`` when there are no splits), in record order."""
    count: int
    counts: dict[str, int] = field(default_factory=dict)
    spec: Path | None = None
    mixer: Path | None = None
    skipped: int = 0
    """Samples (masked pixels) or patches (over ``masked_threshold``) left out."""


def _progress(progress: bool | Callable | None, label: str) -> Callable | None:
    if progress is True:
        return Progress(label)
    return progress or None


def _layout(output: str | os.PathLike, file_format: str | None) -> tuple[Path, str, str | None, str]:
    """``(folder, stem, single file suffix or None for a folder of shards, format)``."""
    out = Path(output)
    text = str(output)
    if text.endswith(os.sep) or out.is_dir():
        return out, "", None, file_format or "tfrecord"
    for suffix, fmt in _SUFFIXES.items():
        if out.name.lower().endswith(suffix):
            if file_format and file_format != fmt:
                raise OutputError(f"the output {out.name} ends in {suffix} but the format is {file_format!r}")
            return out.parent, out.name[: -len(suffix)], suffix, fmt
    raise OutputError(
        f"cannot tell the format of {out}; end it in .tfrecord.gz, .tfrecord, .parquet or .csv, "
        "or give an existing folder (or a path ending in /) for sharded TFRecord files"
    )


def export_samples(
    image: Any,
    output: str | os.PathLike,
    *,
    labels: Any = None,
    label_field: str | None = None,
    label_raster: Any = None,
    label_name: str | None = None,
    bands: Sequence[str | int] | None = None,
    properties: Sequence[str] = (),
    patch: int | Sequence[int] | None = None,
    n: int | None = None,
    per_class: int | Mapping[Any, int] | None = None,
    seed: int = 0,
    splits: Mapping[str, float] | None = None,
    split_block: int | None = None,
    stratify_splits: bool = False,
    default_value: float = 0.0,
    drop_masked: bool = True,
    drop_outside: bool = False,
    geometries: bool = False,
    file_format: str | None = None,
    compressed: bool | None = None,
    max_file_size: int | None = None,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
    chunk: int = 512,
    engine: str = "local",
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    samples_per_task: int | None = None,
) -> ExportResult:
    """Export band values at labelled pixels (``patch=None``) or ``patch``-sized neighbourhoods around them.

    Labels are a vector file/GeoDataFrame (points, or polygons whose every pixel is a candidate) with
    ``label_field``, or a ``label_raster`` (every valid pixel). ``n``/``per_class``/``seed`` pick a reproducible
    random or stratified subset; ``splits={"train": .8, "test": .2}`` assigns whole ``split_block``-pixel blocks to
    each split (``stratify_splits=True`` deals the blocks out so every class is split in proportion too).
    ``geometries=True`` adds each sample pixel centre's ``x``/``y`` in the image's CRS (Earth Engine's
    ``geometries``), e.g. to score predictions at held-out samples. ``output`` is a file (``.tfrecord.gz``,
    ``.parquet``, ``.csv``) or a folder of shards.

    ``engine="dask"`` writes on Dask (``client``, ``scheduler``, ``workers``, ``samples_per_task``; see
    :mod:`tilecast.export.dask_samples`): the same examples in the same order.
    """
    from ..runners.dask import check_engine

    dask = {"client": client, "scheduler": scheduler, "workers": workers, "samples_per_task": samples_per_task}
    if check_engine(engine) == "local":
        for key, value in dask.items():
            if value is not None:
                raise SpecError(f"{key}= is an option of engine='dask'; pass engine='dask' or leave it out")
    p = XY(1, 1) if patch is None else xy(patch, "patch")
    if min(p) <= 0:
        raise InputError(f"the patch size must be > 0, got {tuple(p)}")
    is_table = p == (1, 1)
    folder, stem, suffix, fmt = _layout(output, file_format)
    if fmt != "tfrecord" and not is_table:
        raise OutputError(f"patches can only be exported as TFRecord, not {fmt}; use a .tfrecord.gz file or a folder")
    if not folder.is_dir():
        raise OutputError(f"the output folder {folder} does not exist; create it first")
    if labels is None and label_raster is None:
        raise InputError("no labels given; pass labels (points/polygons, --labels) or a label raster (--label-raster)")
    if labels is not None and label_raster is not None:
        raise InputError("pass either labels (vector) or a label raster, not both")
    if labels is not None and label_field is None and per_class is not None:
        raise InputError("per_class sampling needs the label field (--label-field)")
    with bounded_cache():
        return _export_samples(
            image, folder, stem, suffix, fmt, p, is_table, labels, label_field, label_raster, label_name, bands,
            properties, n, per_class, seed, splits, split_block, stratify_splits, default_value, drop_masked,
            drop_outside, geometries, compressed, max_file_size, overwrite, progress, chunk,
            dask if engine == "dask" else None,
        )


def _export_samples(
    image: Any, folder: Path, stem: str, suffix: str | None, fmt: str, p: XY, is_table: bool, labels: Any,
    label_field: str | None, label_raster: Any, label_name: str | None, bands: Sequence[str | int] | None,
    properties: Sequence[str], n: int | None, per_class: Any, seed: int, splits: Mapping[str, float] | None,
    split_block: int | None, stratify_splits: bool, default_value: float, drop_masked: bool, drop_outside: bool,
    geometries: bool, compressed: bool | None, max_file_size: int | None, overwrite: bool, progress: Any, chunk: int,
    dask: dict[str, Any] | None = None,
) -> ExportResult:
    source = open_source(image, bands)
    try:
        grid = source.grid
        h, w = grid.shape
        if p.x > w or p.y > h:
            raise InputError(
                f"the patch of {p.x} x {p.y} pixels is larger than the raster ({w} x {h}); use a smaller patch"
            )
        if labels is not None:
            candidates = vector_samples(labels, grid, label_field, properties, drop_outside)
            lname = label_field
        else:
            if properties:
                raise InputError("properties come from vector labels; a label raster only gives the label")
            candidates = label_raster_samples(label_raster, grid)
            lname = label_name or "label"
        samples = select(candidates, n, per_class, seed)
        if not len(samples):
            raise InputError("the selection is empty: no labelled pixel falls on the raster; check the labels, "
                             "the label field and the sample counts")
        if splits:
            samples = assign_splits(samples, splits, split_block or max(256, 4 * max(p)), seed, p, stratify_splits)
            if not len(samples):
                raise InputError("every sample straddles blocks of different splits; use a larger split_block")
        properties = list(properties)
        if geometries:
            xs, ys = grid.transform * (samples.cols + 0.5, samples.rows + 0.5)
            samples.properties.update(x=np.asarray(xs, np.float64), y=np.asarray(ys, np.float64))
            properties += ["x", "y"]
        clash = set(source.band_names) & ({lname} | set(properties))
        if clash:
            raise InputError(f"the label/property names {sorted(clash)} clash with band names; rename them")
        drop = drop_masked
        report = _progress(progress, "export patches" if not is_table else "export samples")
        writer = _Writers(folder, stem, suffix, fmt, splits, compressed, max_file_size, overwrite, is_table)
        if dask is not None:  # the writer above only checked the names: tasks write, the client publishes
            writer.abort()
            from .dask_samples import write_dask

            args = (stem, suffix, fmt, dict(splits) if splits else None, writer.compressed, max_file_size, is_table)
            files, writer.counts, skipped = write_dask(source, samples, p, default_value, drop, chunk, lname,
                                                       list(properties), writer, args, report, **dask)
        else:
            try:
                skipped = _write(source, samples, p, default_value, drop, chunk, lname, list(properties), writer,
                                 report)
                files = writer.close()
            except BaseException:
                writer.abort()
                raise
        shape = [1] if is_table else [p.y, p.x]
        feats = {b: shape for b in source.band_names}
        if lname:
            feats[lname] = [1]
        feats.update({k: [1] for k in properties})
        spec_path = None
        count = sum(writer.counts.values())
        if fmt == "tfrecord":
            spec_path = folder / (f"{stem}.spec.json" if stem else "spec.json")
            rel = {k: [os.path.relpath(f, spec_path.parent) for f in v] for k, v in files.items()}
            write_spec(spec_path, make_spec(
                feats, rel, compressed=writer.compressed, bands=source.band_names, label=lname,
                properties=list(properties), patch=[p.x, p.y], counts=writer.counts, seed=seed,
                default_value=default_value, crs=grid.crs.to_string(), transform=list(grid.transform)[:6],
            ))
        return ExportResult(files, count, dict(writer.counts), spec_path, None, skipped)
    finally:
        source.close()


def export_patches(image: Any, output: str | os.PathLike, patch: int | Sequence[int], **kwargs: Any) -> ExportResult:
    """``neighborhoodToArray`` patches around labelled pixels, as TFRecord; see :func:`export_samples`."""
    return export_samples(image, output, patch=patch, **kwargs)


def _write(
    source: Any, samples: Samples, p: XY, default_value: float, drop: bool, chunk: int, lname: str | None,
    properties: list[str], writer: _Writers, progress: Callable | None,
) -> int:
    names = list(source.band_names)
    off = patch_offset(p)
    total, done, skipped = len(samples), 0, 0
    for batch in read_at(source, samples.rows, samples.cols, p, default_value, chunk):
        idx = batch.index
        vals = batch.values.astype(np.float32, copy=False)
        # Earth Engine's sample() drops samples whose pixel is masked; a patch keeps masked neighbours (as the
        # default value) but not a masked centre.
        ok = batch.valid[:, off.y, off.x] if drop else np.ones(len(idx), bool)
        skipped += int((~ok).sum())
        label = None if samples.label is None else samples.label[idx]
        split = None if samples.split is None else samples.split[idx]
        props = {k: samples.properties[k][idx] for k in properties}
        writer.write_batch(names, vals, ok, lname, label, props, split)
        done += len(idx)
        if progress:
            progress(done, total, done * p.x * p.y)
    return skipped


class _Writers:
    """One output per split, in the chosen format."""

    def __init__(self, folder: Path, stem: str, suffix: str | None, fmt: str, splits: Mapping | None,
                 compressed: bool | None, max_file_size: int | None, overwrite: bool, table: bool) -> None:
        self.fmt = fmt
        self.compressed = (suffix != ".tfrecord") if compressed is None else compressed
        if suffix == ".tfrecord.gz" and compressed is False:
            raise OutputError("the output ends in .gz but compressed=False; name it .tfrecord")
        self.counts: dict[str, int] = {}
        self.names = list(splits) if splits else ["all"]
        self.writers: dict[str, Any] = {}
        self.stale: set[Path] = set()
        """Shards of an earlier export to remove once this one is published (``overwrite=True``)."""
        for split in self.names:
            if split == "all":
                prefix = stem or ("samples" if table else "patches")
            else:
                prefix = f"{stem}-{split}" if stem else split
            if fmt == "tfrecord":
                single = None
                if suffix is not None:
                    single = prefix + (".tfrecord.gz" if self.compressed else ".tfrecord")
                self.writers[split] = w = ShardedWriter(folder, prefix, self.compressed, max_file_size, single,
                                                        overwrite)
                if w.single_name is None:  # shards, maybe of an earlier Dask export ({prefix}-NNNNN-NNNNN)
                    self.stale |= set(self.shards(folder, prefix))
                    if self.stale and not overwrite:
                        raise OutputExistsError(f"{min(self.stale)} already exists; pass overwrite=True "
                                                "(--overwrite) to replace the export")
            else:
                self.writers[split] = _TableWriter(folder / f"{prefix}{suffix}", fmt, overwrite)
            self.counts[split] = 0

    def write_batch(self, names: list[str], vals: np.ndarray, ok: np.ndarray, lname: str | None,
                    label: np.ndarray | None, props: dict[str, np.ndarray], split: np.ndarray | None) -> None:
        if self.fmt != "tfrecord":
            for s in self.names:
                sel = ok if split is None else ok & (split == s)
                if sel.any():
                    cols = {b: vals[sel, i, 0, 0] for i, b in enumerate(names)}
                    if lname:
                        cols[lname] = label[sel].astype(np.float32)
                    cols.update({k: v[sel].astype(np.float32) for k, v in props.items()})
                    self.writers[s].write(cols)
                    self.counts[s] += int(sel.sum())
            return
        if vals.shape[2:] == (1, 1):  # a table: every feature is one float
            cols = [vals[:, :, 0, 0]]
            keys = list(names)
            if lname:
                cols.append(label[:, None])
                keys.append(lname)
            for k, v in props.items():
                cols.append(v[:, None])
                keys.append(k)
            matrix = np.concatenate([c.astype(np.float32) for c in cols], axis=1)[ok]
            dest = np.full(len(matrix), "all", dtype=object) if split is None else split[ok]
            for s, rec in zip(dest, float_row_examples(keys, matrix), strict=True):
                self.writers[s].write(rec)
                self.counts[s] += 1
            return
        for j in np.flatnonzero(ok):
            feats: dict[str, Any] = {b: vals[j, i] for i, b in enumerate(names)}
            if lname:
                feats[lname] = float(label[j])
            for k, v in props.items():
                feats[k] = float(v[j])
            s = "all" if split is None else split[j]
            self.writers[s].write(example_bytes(feats))
            self.counts[s] += 1

    @staticmethod
    def shards(folder: Path, prefix: str) -> list[Path]:
        from .image import shard_files

        return shard_files(folder, prefix)

    def close(self) -> dict[str, list[Path]]:
        files = {s: list(w.close()) for s, w in self.writers.items()}
        self.remove_stale(files)
        return files

    def remove_stale(self, files: Mapping[str, list[Path]]) -> None:
        published = {f for fs in files.values() for f in fs}
        for old in self.stale - published:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


class _TableWriter:
    """Streams columns to Parquet (pyarrow) or CSV, through a temp file renamed on close."""

    def __init__(self, path: Path, fmt: str, overwrite: bool) -> None:
        import tempfile

        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
        self.path, self.fmt = path, fmt
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self._w: Any = None
        self._f: Any = None

    def write(self, cols: dict[str, np.ndarray]) -> None:
        if self.fmt == "parquet":
            from .._extras import require

            pa = require("pyarrow", "features")
            pq = require("pyarrow.parquet", "features")
            table = pa.table(cols)
            if self._w is None:
                self._w = pq.ParquetWriter(self.tmp, table.schema)
            self._w.write_table(table)
        else:
            if self._f is None:
                self._f = open(self.tmp, "w")  # noqa: SIM115 - streamed across calls, closed in close()
                self._f.write(",".join(cols) + "\n")
            arr = np.column_stack(list(cols.values()))
            np.savetxt(self._f, arr, delimiter=",", fmt="%.9g")

    def close(self) -> list[Path]:
        if self.fmt == "parquet" and self._w is None:
            raise InputError("nothing to write: every sample was masked")
        if self._w is not None:
            self._w.close()
        if self._f is not None:
            self._f.close()
        os.replace(self.tmp, self.path)
        return [self.path]

    def abort(self) -> None:
        for h in (self._w, self._f):
            if h is not None:
                with contextlib.suppress(Exception):
                    h.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)
