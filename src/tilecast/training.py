"""Read tilecast's TFRecord exports for training: a ``tf.data`` parser spec, and a PyTorch dataset without TF.

Every export writes a sidecar ``*.spec.json`` that describes its features (name, shape, dtype), whether records are
``Example`` or ``SequenceExample``, the compression and the files. :func:`tf_parser_spec` turns it into the
``{name: tf.io.FixedLenFeature}`` dict that ``tf.io.parse_single_example`` takes, so nobody retypes shapes;
:class:`TFRecordDataset` reads the same files in PyTorch (or plain numpy) without TensorFlow.

    spec = tilecast.training.load_spec("patches/spec.json")
    ds = tf.data.TFRecordDataset(spec["files"]["train"], compression_type=spec["compression"])
    ds = ds.map(lambda r: tf.io.parse_single_example(r, tilecast.training.tf_parser_spec(spec)))
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ._extras import require
from .errors import InputError
from .export.specfile import SPEC_VERSION, make_spec, write_spec

__all__ = ["SPEC_VERSION", "TFRecordDataset", "load_spec"  # noqa: F822 - TFRecordDataset: __getattr__ (lazy torch)
           , "make_spec", "parse_record", "tf_parser_spec", "write_spec"]

def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sidecar; file paths in it become absolute (they are stored relative to the sidecar)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"spec file not found: {path}; every tilecast export writes one next to its files (for "
                         "files from elsewhere, e.g. Earth Engine, pass make_spec({name: shape}, files) instead)")
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*spec.json")) or ["*.spec.json"]
        raise InputError(f"{path} is a folder; pass the spec file in it: {', '.join(str(path / f) for f in found)}")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); pass the *.spec.json written by the export") from None
    if not isinstance(spec, dict) or "features" not in spec or "files" not in spec:
        raise InputError(f"{path} is not a tilecast export spec (no 'features'/'files'); pass the *.spec.json")
    spec["files"] = {k: [str((path.parent / f).resolve()) for f in v] for k, v in spec["files"].items()}
    return spec


_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64, "string": object}
"""The spec's dtypes as numpy ones (what ``tf.io.parse_single_example`` gives for each)."""


def _tf_dtype(tf: Any, name: str) -> Any:
    return {"float32": tf.float32, "int64": tf.int64, "string": tf.string}[name]


def tf_parser_spec(spec: Mapping[str, Any]) -> dict[str, Any] | tuple[dict[str, Any], dict[str, Any]]:
    """``{name: tf.io.FixedLenFeature(shape, dtype)}`` for ``tf.io.parse_single_example``; for sequence exports a
    ``(context, sequence)`` pair for ``tf.io.parse_single_sequence_example``."""
    tf = require("tensorflow", "tf")
    ctx = {k: tf.io.FixedLenFeature(v["shape"], _tf_dtype(tf, v["dtype"])) for k, v in spec["features"].items()}
    if spec.get("kind") == "sequence_example":
        seq = {
            k: tf.io.FixedLenSequenceFeature(v["shape"], _tf_dtype(tf, v["dtype"]))
            for k, v in spec.get("sequence_features", {}).items()
        }
        return ctx, seq
    return ctx


def parse_record(record: bytes, spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Decode one serialized record into ``{name: array of the spec's shape}`` with numpy only."""
    from .export.tfrecord import decode_example, decode_sequence_example

    if spec.get("kind") == "sequence_example":
        context, seqs = decode_sequence_example(record)
        out = {k: _shape(context, k, v) for k, v in spec["features"].items()}
        for k, v in spec.get("sequence_features", {}).items():
            out[k] = seqs[k].reshape(-1, *v["shape"]) if k in seqs else np.zeros((0, *v["shape"]), np.float32)
        return out
    values = decode_example(record)
    return {k: _shape(values, k, v) for k, v in spec["features"].items()}


def _shape(values: Mapping[str, Any], key: str, info: Mapping[str, Any]) -> np.ndarray:
    if key not in values:
        raise InputError(f"a record has no feature {key!r}; it does not match the spec (keys: {sorted(values)})")
    arr = np.asarray(values[key])
    shape = tuple(info["shape"])
    if arr.size != int(np.prod(shape)):
        raise InputError(f"feature {key!r} has {arr.size} values, the spec says shape {list(shape)}")
    return arr.reshape(shape)


class _TFRecordDataset:
    """Records of an export as ``{name: np.ndarray}`` dicts (or whatever ``transform`` makes of them), streamed
    from the TFRecord files without TensorFlow. An ``IterableDataset`` for PyTorch's ``DataLoader`` (each worker
    yields a disjoint share of the records), and a plain iterable without torch."""

    def __init__(
        self,
        spec: str | os.PathLike | Mapping[str, Any],
        split: str | None = None,
        transform: Callable[[dict[str, np.ndarray]], Any] | None = None,
    ) -> None:
        self.spec = load_spec(spec) if isinstance(spec, (str, os.PathLike)) else dict(spec)
        files = self.spec["files"]
        if split is None:
            self.files = [f for v in files.values() for f in v]
        elif split not in files:
            raise InputError(f"the export has no split {split!r}; it has {sorted(files)}")
        else:
            self.files = list(files[split])
        self.transform = transform

    def _my_share(self) -> tuple[list[str], int, int]:
        """``(files, step, first)``: the files this DataLoader worker reads, and that it yields their records
        ``first, first + step, ...``. Workers split the files; with fewer files than workers (a table export is one
        file) every worker reads them all and yields every N-th record, so that all of them parse."""
        try:
            import torch.utils.data as tud

            info = tud.get_worker_info()
        except ImportError:
            info = None
        if info is None or info.num_workers <= 1:
            return self.files, 1, 0
        if len(self.files) >= info.num_workers:
            return self.files[info.id :: info.num_workers], 1, 0
        return self.files, info.num_workers, info.id

    def __iter__(self) -> Iterator[Any]:
        from .export.tfrecord import iter_records

        files, step, first = self._my_share()
        seen = 0
        for path in files:
            for index, rec in enumerate(iter_records(path)):
                seen += 1
                if (seen - 1) % step != first:
                    continue
                try:
                    item = parse_record(rec, self.spec)
                except InputError as exc:  # which of thousands of records does not match the spec
                    raise InputError(f"{path}, record {index}: {exc}") from None
                yield self.transform(item) if self.transform else item

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Every record stacked per feature (for small exports)."""
        items = list(self._untransformed())
        if not items:
            return {k: np.zeros((0, *v["shape"]), _NUMPY_DTYPES.get(v.get("dtype"), np.float32))
                    for k, v in self.spec["features"].items()}
        return {k: np.stack([it[k] for it in items]) for k in items[0]}

    def _untransformed(self) -> _TFRecordDataset:
        clone = _TFRecordDataset.__new__(_TFRecordDataset)
        clone.spec, clone.files, clone.transform = self.spec, self.files, None
        return clone


@lru_cache(maxsize=1)
def _dataset_class() -> type:
    """``TFRecordDataset``: a torch ``IterableDataset`` when torch is installed (imported only on first use, as
    torch takes seconds to import), else the plain iterable."""
    try:
        import torch.utils.data as tud
    except ImportError:
        return _TFRecordDataset
    return type("TFRecordDataset", (_TFRecordDataset, tud.IterableDataset), {"__module__": __name__})


def __getattr__(name: str) -> Any:
    if name == "TFRecordDataset":
        return _dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
