"""Where sample and patch exports write: the output's layout, one writer per split, and the Parquet/CSV writer.

The layout (:class:`SampleOutput`) is decided once, from the output path; the local export and every Dask task make
their :class:`Writers` from it, so both name and fill their files the same way.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import InputError, OutputError, OutputExistsError
from .common import publish, shard_files
from .tfrecord import ShardedWriter, example_bytes, float_row_examples

__all__ = ["SampleOutput", "TableWriter", "Writers", "empty_columns"]

_SUFFIXES = {".tfrecord.gz": "tfrecord", ".tfrecord": "tfrecord", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class SampleOutput:
    """The files of a sample or patch export: a single file per split, or a folder of shards."""

    folder: Path
    stem: str
    suffix: str | None
    """The single file's suffix as the user wrote it (``.TFRECORD.GZ`` stays so), or None for a folder of shards."""
    fmt: str
    splits: tuple[str, ...] | None
    compressed: bool
    max_file_size: int | None
    table: bool

    @classmethod
    def create(cls, output: str | os.PathLike, file_format: str | None, compressed: bool | None,
               max_file_size: int | None, splits: Sequence[str] | None, table: bool) -> SampleOutput:
        """The layout of ``output``: a file (``.tfrecord.gz``, ``.tfrecord``, ``.parquet``, ``.csv``) or a folder."""
        folder, stem, suffix, fmt = _layout(output, file_format)
        _check_split_names(splits or ())
        kind = suffix.lower() if suffix else None
        resolved = (kind != ".tfrecord") if compressed is None else compressed
        if kind == ".tfrecord.gz" and compressed is False:
            raise OutputError("the output ends in .gz but compressed=False; name it .tfrecord")
        return cls(folder, stem, suffix, fmt, tuple(splits) if splits else None, resolved, max_file_size, table)

    @property
    def split_names(self) -> list[str]:
        return list(self.splits) if self.splits else ["all"]

    @property
    def spec_path(self) -> Path | None:
        """The ``*.spec.json`` sidecar of a TFRecord export (``spec.json`` in a folder), else None."""
        if self.fmt != "tfrecord":
            return None
        return self.folder / (f"{self.stem}.spec.json" if self.stem else "spec.json")

    def prefix(self, split: str) -> str:
        """The file (or shard) name prefix of ``split`` (``"all"`` without splits; a split may be named so too)."""
        if not self.splits:
            return self.stem or ("samples" if self.table else "patches")
        return f"{self.stem}-{split}" if self.stem else split


def _check_split_names(splits: Sequence[Any]) -> None:
    """Split names become file names (``{stem}-{split}``, ``{split}-00000``): each must be one non-empty name."""
    for name in splits:
        text = str(name)
        if not text.strip() or text.strip(".") == "" or any(sep in text for sep in "/\\") or "\0" in text:
            raise OutputError(f"the split name {text!r} is not a file name (split names name the files); use names "
                              "such as train, val, test")


def _layout(output: str | os.PathLike, file_format: str | None) -> tuple[Path, str, str | None, str]:
    """``(folder, stem, single file suffix or None for a folder of shards, format)``; the suffix is recognised
    whatever its case and returned as written, so the file gets the name the user gave."""
    out = Path(output)
    text = str(output)
    if file_format is not None and file_format not in _SUFFIXES.values():
        raise OutputError(f"unknown file format {file_format!r}; use one of {sorted(set(_SUFFIXES.values()))}")
    if text.endswith(os.sep) or out.is_dir() or ("." not in out.name and not out.exists()):
        if file_format not in (None, "tfrecord"):
            raise OutputError(f"{out} is a folder, for TFRecord shards; write a {file_format} table to a file "
                              f"({out / ('samples.' + file_format)})")
        return out, "", None, "tfrecord"  # a name without a suffix is a folder, created if missing
    for suffix, fmt in _SUFFIXES.items():
        if out.name.lower().endswith(suffix):
            if file_format and file_format != fmt:
                raise OutputError(f"the output {out.name} ends in {suffix} but the format is {file_format!r}")
            return out.parent, out.name[: -len(suffix)], out.name[-len(suffix):], fmt
    raise OutputError(
        f"cannot tell the format of {out}; end it in .tfrecord.gz, .tfrecord, .parquet or .csv, "
        "or give a folder (a name without a suffix, or a path ending in /) for sharded TFRecord files"
    )


class Writers:
    """One output per split, in the chosen format."""

    def __init__(self, output: SampleOutput, overwrite: bool) -> None:
        self.output = output
        self.fmt = output.fmt
        self.compressed = output.compressed
        self.counts: dict[str, int] = {}
        self.names = output.split_names
        self.writers: dict[str, Any] = {}
        self.columns: dict[str, np.ndarray] | None = None
        """A table's columns, without rows: what a split that gets no sample is written as."""
        self.stale: set[Path] = set()
        """Shards of an earlier export to remove once this one is published (``overwrite=True``)."""
        for split in self.names:
            prefix = output.prefix(split)
            if output.fmt == "tfrecord":
                single = None
                if output.suffix is not None:  # .tfrecord with compressed=True: GZIP, so the name ends in .gz
                    single = prefix + output.suffix
                    if self.compressed and output.suffix.lower() == ".tfrecord":
                        single += ".gz"
                self.writers[split] = w = ShardedWriter(output.folder, prefix, self.compressed,
                                                        output.max_file_size, single, overwrite)
                if w.single_name is None:  # shards, maybe of an earlier Dask export ({prefix}-NNNNN-NNNNN)
                    self.stale |= set(shard_files(output.folder, prefix))
                    if self.stale and not overwrite:
                        raise OutputExistsError(f"{min(self.stale)} already exists; pass overwrite=True "
                                                "(--overwrite) to replace the export")
            else:
                self.writers[split] = TableWriter(output.folder / f"{prefix}{output.suffix}", output.fmt, overwrite)
            self.counts[split] = 0
        spec = output.spec_path
        if spec is not None and spec.exists() and not overwrite:  # another export's, with other file names
            raise OutputExistsError(f"{spec} already exists; pass overwrite=True (--overwrite) to replace the export")

    def write_batch(self, names: list[str], vals: np.ndarray, ok: np.ndarray, lname: str | None,
                    label: np.ndarray | None, props: dict[str, np.ndarray], split: np.ndarray | None) -> None:
        if self.fmt != "tfrecord":
            for s in self.names:
                sel = ok if split is None else ok & (split == s)
                if sel.any():
                    cols = {b: vals[sel, i, 0, 0] for i, b in enumerate(names)}
                    if lname:
                        cols[lname] = label[sel].astype(np.float32)
                    cols.update({k: v[sel] for k, v in props.items()})  # float64
                    if self.columns is None:
                        self.columns = {k: v[:0] for k, v in cols.items()}
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

    def close(self) -> dict[str, list[Path]]:
        if self.columns is not None:  # a split without samples: an empty table, not a failure or a 0-byte CSV
            for s, w in self.writers.items():
                if not self.counts[s]:
                    w.write(self.columns)
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


def empty_columns(path: str | os.PathLike, fmt: str) -> dict[str, np.ndarray]:
    """The columns of a table written by :class:`TableWriter`, without rows (for an empty split on Dask)."""
    if fmt == "parquet":
        pq = require("pyarrow.parquet", "features")
        return {f.name: np.zeros(0, f.type.to_pandas_dtype()) for f in pq.read_schema(path)}
    with open(path, newline="") as f:
        names = next(csv.reader(f), [])
    return {name: np.zeros(0, np.float32) for name in names}


class TableWriter:
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
            pa = require("pyarrow", "features")
            pq = require("pyarrow.parquet", "features")
            table = pa.table(cols)
            if self._w is None:
                self._w = pq.ParquetWriter(self.tmp, table.schema)
            self._w.write_table(table)
        else:
            if self._f is None:
                self._f = open(self.tmp, "w", newline="")  # noqa: SIM115 - streamed across calls, closed in close()
                # Names are free text (band descriptions): one holding a comma or a quote is quoted, as CSV says.
                csv.writer(self._f, lineterminator="\n").writerow(cols)
            # float32 columns to 9 significant digits (enough to round-trip); float64 ones (properties, coordinates) as
            # Python's repr, the shortest text that round-trips (not numpy's, which may change between versions).
            texts = [list(map(repr, v.tolist())) if v.dtype == np.float64 else [f"{x:.9g}" for x in v.tolist()]
                     for v in cols.values()]
            self._f.writelines(",".join(row) + "\n" for row in zip(*texts, strict=True))

    def close(self) -> list[Path]:
        if self.fmt == "parquet" and self._w is None:
            raise InputError("nothing to write: the pixel of every sample is masked (nodata), and a Parquet file "
                             "needs a row to know its columns; check that the labels fall on valid pixels of the image")
        if self._w is not None:
            self._w.close()
        if self._f is not None:
            self._f.close()
        publish(self.tmp, self.path)
        return [self.path]

    def abort(self) -> None:
        for h in (self._w, self._f):
            if h is not None:
                with contextlib.suppress(Exception):
                    h.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)
