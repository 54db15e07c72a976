"""TFRecord files of ``tf.train.Example`` / ``SequenceExample`` without TensorFlow.

The messages are real protobuf classes (the ``protobuf`` runtime encodes them), built from TensorFlow's official
``example.proto`` descriptors in a *private* descriptor pool: the default pool would clash with TensorFlow's own
``tensorflow.Example`` when both are imported in one process (which is why the ``tfrecord`` package, whose bundled
``example_pb2`` registers in the default pool, is not used). Records are framed as TFRecord (length, masked
CRC32C, data, masked CRC32C) with the ``crc32c`` library.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import os
import re
import struct
import tempfile
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import crc32c
import numpy as np

from ..errors import InputError, OutputError, OutputExistsError
from .common import publish

__all__ = [
    "ShardedWriter",
    "decode_example",
    "decode_sequence_example",
    "example_bytes",
    "float_row_examples",
    "iter_records",
    "messages",
    "sequence_example_bytes",
]


@lru_cache(maxsize=1)
def messages() -> Any:
    """``Example``, ``SequenceExample``, ``Feature``... of TensorFlow's ``example.proto``, from the official
    descriptors in :mod:`tilecast.payloads.protos`' private pool (shared with the gRPC payload codecs)."""
    from google.protobuf import message_factory

    from ..payloads.protos import proto_pool

    pool = proto_pool()

    class _Messages:
        pass

    ns = _Messages()
    for name in ("BytesList", "FloatList", "Int64List", "Feature", "Features", "FeatureList", "FeatureLists",
                 "Example", "SequenceExample"):
        setattr(ns, name, message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}")))
    return ns


def _fill(feature: Any, value: Any) -> None:
    """Numbers go to float_list (Earth Engine coerces numbers to float); ints only when given as int64 arrays."""
    if isinstance(value, (bytes, str)):
        feature.bytes_list.value.append(value.encode() if isinstance(value, str) else value)
        return
    arr = np.asarray(value)
    if isinstance(value, (np.ndarray, np.int64)) and arr.dtype == np.int64:
        feature.int64_list.value.extend(arr.ravel().tolist())
    elif arr.dtype.kind in "SUO":
        feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else bytes(v) for v in arr.ravel())
    else:
        feature.float_list.value.extend(arr.astype(np.float32, copy=False).ravel().tolist())


def example_bytes(features: Mapping[str, Any]) -> bytes:
    """Serialize ``{key: value}`` as a ``tf.train.Example``: numbers and arrays as float_list (only numpy int64
    arrays as int64_list), strings as bytes_list. Arrays are flattened row-major."""
    m = messages()
    ex = m.Example()
    fmap = ex.features.feature
    for key, value in features.items():
        _fill(fmap[key], value)
    return ex.SerializeToString(deterministic=True)


def float_row_examples(keys: Sequence[str], rows: np.ndarray) -> Iterator[bytes]:
    """One Example per row of ``rows`` (n, len(keys)), each value a 1-element float_list: the fast path for tables,
    where per-value type dispatch would dominate."""
    example = messages().Example
    keys = list(keys)
    for row in np.asarray(rows, dtype=np.float32).tolist():
        ex = example()
        fmap = ex.features.feature
        for k, v in zip(keys, row, strict=True):
            fmap[k].float_list.value.append(v)
        yield ex.SerializeToString(deterministic=True)


def sequence_example_bytes(context: Mapping[str, Any], sequences: Mapping[str, Any]) -> bytes:
    """A ``tf.train.SequenceExample``: scalars in the context, each sequence as a FeatureList of 1-value features."""
    m = messages()
    ex = m.SequenceExample()
    for key, value in context.items():
        _fill(ex.context.feature[key], value)
    for key, values in sequences.items():
        fl = ex.feature_lists.feature_list[key]
        for v in np.asarray(values).ravel():
            _fill(fl.feature.add(), np.float32(v))
    return ex.SerializeToString(deterministic=True)


def _feature_value(feature: Any) -> np.ndarray | list[bytes]:
    kind = feature.WhichOneof("kind")
    if kind == "float_list":
        return np.asarray(feature.float_list.value, dtype=np.float32)
    if kind == "int64_list":
        return np.asarray(feature.int64_list.value, dtype=np.int64)
    if kind == "bytes_list":
        return list(feature.bytes_list.value)
    return np.zeros(0, dtype=np.float32)


def decode_example(data: bytes | memoryview) -> dict[str, np.ndarray | list[bytes]]:
    """``{key: flat values}`` of one serialized ``tf.train.Example``."""
    ex = messages().Example()
    try:
        ex.ParseFromString(bytes(data))
    except Exception as exc:
        raise InputError(f"a record is not a tf.train.Example ({exc}); pass TFRecord files of Examples") from None
    return {k: _feature_value(f) for k, f in ex.features.feature.items()}


def decode_sequence_example(data: bytes | memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    ex = messages().SequenceExample()
    try:
        ex.ParseFromString(bytes(data))
    except Exception as exc:
        raise InputError(f"a record is not a tf.train.SequenceExample ({exc}); pass TFRecord files of "
                         "SequenceExamples (sequence_data exports)") from None
    context = {k: _feature_value(f) for k, f in ex.context.feature.items()}
    seqs = {
        k: np.asarray([_feature_value(f) for f in fl.feature], dtype=np.float32).reshape(len(fl.feature), -1)
        for k, fl in ex.feature_lists.feature_list.items()
    }
    return context, seqs


# ---- framing ---------------------------------------------------------------------------------------------------

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c.crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF)


def frame(record: bytes) -> bytes:
    """One TFRecord: little-endian uint64 length, its masked CRC32C, the data, the data's masked CRC32C."""
    header = struct.pack("<Q", len(record))
    return header + _masked_crc(header) + record + _masked_crc(record)


def is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def iter_records(path: str | os.PathLike, verify: bool = True) -> Iterator[bytes]:
    """The records of one TFRecord file, GZIP or not (detected from the magic bytes)."""
    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"TFRecord file not found: {path}; check the path")
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder; pass .tfrecord[.gz] files (or the folder's files, e.g. 'dir/*.gz')")
    compressed = is_gzip(path)
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            reader = io.BufferedReader(f) if compressed else f
            yield from _records(reader, path, verify)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        # A truncated gzip ends in EOFError, which click would turn into a bare "Aborted!"; a flipped bit in the
        # compressed stream is a zlib or gzip error (bad CRC, invalid block).
        what = "truncated" if isinstance(exc, EOFError) else "corrupted"
        raise InputError(f"{path} is {what} ({exc}); re-export it or re-download the file") from None


def _records(reader: Any, path: str, verify: bool) -> Iterator[bytes]:
    offset = index = 0
    while True:
        at = f"record {index} at (uncompressed) byte {offset}"
        header = reader.read(12)
        if not header:
            if index == 0 and offset == 0 and os.path.getsize(path) == 0 and path.lower().endswith(".gz"):
                raise InputError(f"{path} is empty: a GZIP file never is, so it is truncated; re-export or "
                                 "re-download it")
            return
        if len(header) < 12:
            raise InputError(f"{path} is truncated ({at}: its header is incomplete); re-export it")
        (length,) = struct.unpack("<Q", header[:8])
        if verify and header[8:12] != _masked_crc(header[:8]):
            raise InputError(f"{path} is not a TFRecord file (bad length checksum, {at}); pass .tfrecord[.gz] files")
        if length > _MAX_RECORD:
            raise InputError(f"{path} declares a record of {length} bytes ({at}), more than any TFRecord reader "
                             "takes; the file is corrupted: re-export it")
        data = reader.read(length)
        footer = reader.read(4)
        if len(data) < length or len(footer) < 4:
            raise InputError(f"{path} is truncated ({at} is incomplete); re-export it")
        if verify and footer != _masked_crc(data):
            raise InputError(f"{path} has a corrupted record (data checksum mismatch, {at}); re-export it")
        yield data
        offset += 16 + length
        index += 1


_MAX_RECORD = 2**31
"""TensorFlow's readers refuse records over 2 GiB; a larger length is corruption, not a reason to allocate it."""


# ---- sharded, atomic output ------------------------------------------------------------------------------------


class ShardedWriter:
    """Writes records into ``{prefix}-{n:05d}{suffix}`` shards of at most ``max_file_size`` uncompressed bytes
    (Earth Engine's ``maxFileSize``), or into one file ``path`` when not sharded.

    Shards are written under temporary names and renamed by :meth:`close`, so a failed export leaves nothing.
    Lexicographic order of the names is the record order: the numbers have five digits, as Earth Engine's do, or as
    many as the last shard needs (``-000000`` ... ``-100000``), since the count is known when the names are given.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        prefix: str,
        compressed: bool = True,
        max_file_size: int | None = None,
        single_name: str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.prefix = prefix
        self.compressed = compressed
        self.suffix = ".tfrecord.gz" if compressed else ".tfrecord"
        self.max_file_size = max_file_size
        self.single_name = single_name if max_file_size is None else None
        self.overwrite = overwrite
        if max_file_size is not None and max_file_size <= 0:
            raise OutputError(f"max_file_size must be > 0 bytes, got {max_file_size}")
        self._tmp: list[str] = []
        self._f: _BackgroundFile | None = None
        self._size = 0
        self.count = 0
        self.counts: list[int] = []
        if not self.folder.is_dir():
            raise OutputError(f"the output folder {self.folder} does not exist; create it first")
        if not overwrite:
            existing = self.existing()
            if existing:
                raise OutputExistsError(
                    f"{existing[0]} already exists; pass overwrite=True (--overwrite) to replace the export"
                )

    def existing(self) -> list[Path]:
        if self.single_name:
            p = self.folder / self.single_name
            return [p] if p.exists() else []
        pattern = re.compile(re.escape(self.prefix) + r"-\d{5,}\.tfrecord(\.gz)?")
        return sorted(p for p in self.folder.glob(f"{glob.escape(self.prefix)}-*.tfrecord*")
                      if pattern.fullmatch(p.name))

    def _names(self) -> list[str]:
        """The final names of the shards written so far, all numbered with the same width."""
        if self.single_name:
            return [self.single_name]
        width = max(5, len(str(len(self._tmp) - 1)))
        return [f"{self.prefix}-{n:0{width}d}{self.suffix}" for n in range(len(self._tmp))]

    def _open(self) -> None:
        name = self.single_name or f"{self.prefix}-{len(self._tmp):05d}{self.suffix}"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
        self._f = _BackgroundFile(os.fdopen(fd, "wb"), self.compressed)
        self._tmp.append(tmp)
        self._size = 0
        self.counts.append(0)

    def _close_file(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            f.close()

    def write(self, record: bytes) -> None:
        framed = frame(record)
        if self._f is None or (
            self.max_file_size is not None and self._size > 0 and self._size + len(framed) > self.max_file_size
        ):
            self._close_file()
            self._open()
        self._f.write(framed)
        self._size += len(framed)
        self.count += 1
        self.counts[-1] += 1

    def close(self) -> list[Path]:
        """Publish the shards (an export with no record still writes one empty file) and return their paths."""
        if self._f is None and not self._tmp:
            self._open()
        self._close_file()
        if self.overwrite:
            for old in self.existing():
                old.unlink()
        out = []
        for tmp, name in zip(self._tmp, self._names(), strict=True):
            publish(tmp, self.folder / name)
            out.append(self.folder / name)
        self._tmp = []
        return out

    def abort(self) -> None:
        try:
            if self._f is not None:
                f, self._f = self._f, None
                f.close(raise_errors=False)
        finally:
            for tmp in self._tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
            self._tmp = []

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.abort()


try:  # ISA-L's zlib-compatible deflate: the same GZIP, ~5-10x faster than zlib at level 1
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - platforms without an isal wheel
    _zlib = zlib


class _BackgroundFile:
    """Buffers framed records and GZIP-compresses them in 1 MiB pieces on a thread pool (zlib releases the GIL),
    each piece a gzip member of its own: a multi-member file is plain GZIP to TensorFlow, Python and gunzip, and
    compression, the slowest step of a patch export, uses every core while the main thread encodes. Holds at most
    ``2 * workers + 1`` MiB. Level 1 compresses raster values about as well as level 6, several times faster.
    """

    chunk = 1 << 20

    def __init__(self, raw: Any, compressed: bool, level: int = 1, workers: int | None = None) -> None:
        self._raw = raw
        self._compressed = compressed
        self._level = level
        self._workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="tilecast-gzip") if compressed else None
        self._pending: deque[Future[bytes]] = deque()
        self._buf = bytearray()
        self._members = 0

    def _member(self, data: bytes) -> bytes:
        c = _zlib.compressobj(self._level, _zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
        return c.compress(data) + c.flush()

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= self.chunk:
            self._submit()

    def _submit(self) -> None:
        if self._buf:
            if self._pool is None:
                self._raw.write(self._buf)
            else:
                self._pending.append(self._pool.submit(self._member, bytes(self._buf)))
                self._members += 1
            self._buf = bytearray()
        while len(self._pending) > 2 * self._workers:
            self._raw.write(self._pending.popleft().result())

    def close(self, raise_errors: bool = True) -> None:
        try:
            if raise_errors:
                self._submit()
                if self._pool is not None and self._members == 0:
                    self._raw.write(self._member(b""))  # an empty export is still a valid GZIP file
                while self._pending:
                    self._raw.write(self._pending.popleft().result())
        finally:
            for f in self._pending:
                f.cancel()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._raw.close()
