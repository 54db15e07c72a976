"""Checks a decoder makes before it trusts what a payload declares: shapes, the bytes a shape asks for, and values
that must fit a dtype.

A TensorProto or a KServe v2 tensor carries its shape apart from its values, and TensorFlow's rule broadcasts a
single value to the whole shape: a 60-byte message can ask for gigabytes. Decoders therefore check the declared
shape and charge its bytes to a :class:`DecodeBudget` *before* they allocate anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["MAX_DIM", "DecodeBudget", "check_shape", "declared_bytes", "fit_dtype", "json_numbers", "require_finite"]

MAX_DIM = 1 << 40
"""No dimension of a sent tensor may reach this; it keeps every product an exact, small Python int."""


class DecodeBudget:
    """The bytes that the arrays decoded from one request may take in all, charged before each allocation.

    The server uses its body limit, so a request decodes to no more than it may send; ``None`` in a decoder means
    no budget (the client side, which decodes answers it asked for)."""

    def __init__(self, max_bytes: int, charge: Callable[[int, str], None] | None = None) -> None:
        self.max_bytes, self.used, self.charge = int(max_bytes), 0, charge
        """``charge(nbytes, where)``: also called before each allocation (the server's memory budget)."""

    def take(self, nbytes: int, where: str) -> None:
        if self.used + nbytes > self.max_bytes:
            raise InputError(
                f"{where} declares {nbytes:,} bytes of values, over this server's limit of {self.max_bytes:,} bytes "
                f"per request ({self.used:,} already decoded); send smaller tensors or fewer instances per request"
            )
        if self.charge is not None:
            self.charge(nbytes, where)
        self.used += nbytes


def check_shape(shape: Any, where: str, allow_unknown: bool = False) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, refusing strings, floats (even 1.0), booleans, negative or huge dims.

    ``allow_unknown``: one ``-1`` may stand for a dimension to infer (the shape feature of a tf.train.Example)."""
    if isinstance(shape, str | bytes) or not isinstance(shape, Sequence | np.ndarray):
        raise InputError(f"{where}: the shape must be a list of integers, got {type(shape).__name__} {shape!r:.60}")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int | np.integer):
            raise InputError(f"{where}: shape {list(shape)!r:.80} has {d!r:.20} ({type(d).__name__}); every "
                             "dimension must be a whole number (no strings, no floats)")
        dims.append(int(d))
    unknown = sum(d == -1 for d in dims)
    if any(d < -1 or d >= MAX_DIM for d in dims) or unknown > (1 if allow_unknown else 0):
        allowed = "non-negative (one -1 at most)" if allow_unknown else "non-negative"
        raise InputError(f"{where}: shape {dims} is not valid; dimensions must be {allowed} and under {MAX_DIM:,}")
    return tuple(dims)


def declared_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Elements x itemsize of a checked shape, exact (Python ints never wrap, unlike ``np.prod``)."""
    count = 1
    for d in shape:
        count *= int(d)
    return count * int(itemsize)


def require_finite(a: np.ndarray, where: str) -> np.ndarray:
    """JSON numbers must be finite: ``1e400`` parses to infinity, and NaN/Infinity are not JSON."""
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        raise InputError(f"{where}: values must be finite numbers (a value overflowed, or NaN/Infinity was sent); "
                         "send NaN and infinities in a binary format (SERIALIZED_TF_TENSORS, V2_BINARY, gRPC)")
    return a


def json_numbers(a: np.ndarray, what: str, fix: str, first: int = 0) -> None:
    """Refuse a batched float array (instances on the first axis) holding NaN or infinities before it is written as
    JSON numbers: JSON (RFC 8259) has no token for them; Python would write bare ``NaN``, which strict parsers
    (JavaScript's ``JSON.parse``, Go's ``encoding/json``, orjson) refuse with the whole body. The message names the
    first such value by instance (``first`` + its index) and position, and ends with ``fix``."""
    if a.dtype.kind not in "fc" or not a.size:
        return
    finite = np.isfinite(a)
    if finite.all():
        return
    bad = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), a.shape))
    where = "" if not bad else f" in instance {first + bad[0]}" + (f" at {list(bad[1:])}" if len(bad) > 1 else "")
    raise InputError(f"{what} has {int(a.size - finite.sum()):,} NaN or infinite values (the first, {a[bad]}, "
                     f"is{where}), which JSON numbers cannot carry; {fix}")


def fit_dtype(a: np.ndarray, dtype: Any, where: str) -> np.ndarray:
    """``a`` cast to ``dtype``, refusing values the cast would wrap around or turn into infinity."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if a.dtype.kind not in "biuf":
        raise InputError(f"{where} holds {a.dtype} values; expected numbers for {dtype}")
    if a.size and dtype.kind in "iu" and a.dtype.kind in "iuf":
        info = np.iinfo(dtype)
        lo, hi = a.min(), a.max()
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < info.min or hi > info.max:
            raise InputError(f"{where} has values from {lo} to {hi}, outside the range of {dtype} "
                             f"[{info.min}, {info.max}]; send values that fit, or the dtype the model takes")
    if a.size and dtype.kind == "f" and a.dtype.kind in "iuf":
        finite = np.isfinite(a).sum() if a.dtype.kind == "f" else a.size
        with np.errstate(over="ignore"):
            out = a.astype(dtype)
        if np.isfinite(out).sum() != finite:
            raise InputError(f"{where} has values beyond the range of {dtype} (±{np.finfo(dtype).max:.4g}); send "
                             "values that fit, or the dtype the model takes")
        return out
    return a.astype(dtype)
