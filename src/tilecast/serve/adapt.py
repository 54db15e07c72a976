"""Fit what a client sent to the model's inputs: names, layouts and dtypes.

Earth Engine sends one ``(H, W, 1)`` tensor per band, keyed by band name, and ND_ARRAYS sends nameless
channel-first instances; most served models take one stacked tensor. The rules here bridge the two without any
configuration, and say exactly what did not fit when they cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..card import match_bands
from ..errors import BandMismatchError, InputError
from ..payloads.checks import fit_dtype
from ..runtimes.base import Signature, TensorSpec

__all__ = ["adapt_inputs", "band_order", "check_names"]


def _hwd(a: np.ndarray) -> np.ndarray:
    return a[..., None] if a.ndim == 3 else a


def _fits(t: TensorSpec, shape: tuple[int, ...]) -> bool:
    return t.shape is None or (len(t.shape) == len(shape) and all(d is None or d == s for d, s in
                                                                  zip(t.shape, shape, strict=True)))


def _layout_fix(t: TensorSpec, a: np.ndarray) -> np.ndarray:
    """Move channels to where a rank-4 input wants them, when only that makes the shape fit."""
    if _fits(t, a.shape) or a.ndim != 4 or t.shape is None or len(t.shape) != 4:
        return a
    for perm in ((0, 3, 1, 2), (0, 2, 3, 1)):
        b = a.transpose(perm)
        if _fits(t, b.shape):
            return b
    return a


def band_order(sent: Sequence[str], bands: Sequence[str], common_names: Mapping[str, str] | None,
               ordered: bool, input_name: str) -> list[str]:
    """The order to stack per-band tensors in: the model card's band order, matched by name or ``eo:common_name``
    exactly as raster bands are (:func:`~tilecast.card.match_bands`), else the order they were sent in."""
    if bands and len(bands) == len(sent):
        try:
            idx = match_bands(bands, list(sent), common_names)
        except BandMismatchError:
            idx = []
        if sorted(idx) == list(range(1, len(sent) + 1)):
            return [sent[i - 1] for i in idx]
    if ordered:
        return list(sent)
    known = f"the model card's bands are {list(bands)}" if bands else "the model has no card naming its bands"
    raise InputError(
        f"the model takes one stacked input {input_name!r}, but the request has the bands {sorted(sent)} as "
        f"separate tensors in an unordered map (gRPC), and {known}, so their order is unknown; send one tensor "
        f"named {input_name!r}, name the bands as the card does (`tilecast card MODEL --bands ...`), or use the "
        "HTTP :predict route"
    )


def _is_band(name: str, a: np.ndarray, bands: Sequence[str], common_names: Mapping[str, str] | None) -> bool:
    """Whether a tensor sent under a name that is not an input of the model is one band, as Earth Engine sends them:
    named as the card names its bands, or shaped ``(N, H, W)`` / ``(N, H, W, 1)``."""
    return name in bands or name in (common_names or {}).values() or a.ndim == 3 or (a.ndim == 4 and a.shape[3] == 1)


def check_names(signature: Signature, arrays: Mapping[str, np.ndarray], bands: Sequence[str] = (),
                common_names: Mapping[str, str] | None = None) -> None:
    """KServe v2 names every tensor: each must be an input of the model or a band its card names (400 otherwise).
    The Earth Engine routes are looser (:func:`adapt_inputs`): they send bands under the image's band names."""
    known = {t.name for t in signature.inputs} | set(bands) | set((common_names or {}).values())
    unknown = sorted(k for k in arrays if k not in known)
    if signature.inputs and unknown:
        raise InputError(f"unknown inputs {unknown}; the model's inputs are {[t.name for t in signature.inputs]}"
                         + (f" and its card's bands {list(bands)}" if bands else ""))


def adapt_inputs(signature: Signature, arrays: Mapping[str, np.ndarray], ordered: bool = True,
                 bands: Sequence[str] = (), common_names: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """The model's named inputs from what was sent; :class:`InputError` (HTTP 400) when they cannot be matched.

    ``ordered``: whether the request keeps the order of its inputs (JSON objects and v2 lists do; protobuf maps do
    not, so gRPC bands are stacked only by name). ``bands``/``common_names``: the model card's band order, which
    names the position of each separately sent band."""
    inputs = signature.inputs
    if not inputs:
        return {k or "input": v for k, v in arrays.items()}
    names = [t.name for t in inputs]
    sent = list(arrays)
    if set(sent) == set(names):
        out = dict(arrays)
    elif len(inputs) == 1 and len(sent) == 1:
        only = arrays[sent[0]]
        if sent[0] and not _is_band(sent[0], only, bands, common_names):
            raise InputError(f"unknown input {sent[0]!r}; the model's input is {names[0]!r} ({inputs[0].describe()}); "
                             f"send {names[0]!r}, a nameless tensor, or one (H, W, 1) tensor per band")
        out = {names[0]: only}
    elif len(inputs) == 1 and all(arrays[k].ndim in (3, 4) for k in sent):
        # one tensor per band (Earth Engine) into one stacked input, in the card's band order (else as sent)
        sent = band_order(sent, bands, common_names, ordered, names[0])
        parts = [_hwd(arrays[k]) for k in sent]
        if len({p.shape[:3] for p in parts}) != 1:
            raise InputError(f"the bands {sent} differ in shape: {[list(p.shape) for p in parts]}")
        channels = sum(p.shape[3] for p in parts)
        t = inputs[0]
        fixed = {t.shape[1], t.shape[3]} - {None} if t.shape is not None and len(t.shape) == 4 else set()
        if (fixed and channels not in fixed) or (not fixed and any(p.shape[3] != 1 for p in parts)):
            raise InputError(
                f"the model's input is {t.describe()}, but the request has {sent} "
                f"({', '.join(str(list(p.shape)) for p in parts)}); send {names[0]!r}, or one (H, W, 1) tensor "
                "per band"
            )
        out = {names[0]: np.concatenate(parts, axis=3)}
    elif len(sent) == 1 and all(t.shape is not None and len(t.shape) == 4 for t in inputs):
        # a nameless channel-first (ND_ARRAYS) or channels-last stack into one input per band
        a = arrays[sent[0]]
        depths = [t.shape[3] or 1 for t in inputs]  # type: ignore[index]
        if a.ndim == 4 and a.shape[1] == sum(depths):
            a = a.transpose(0, 2, 3, 1)
        if a.ndim != 4 or a.shape[3] != sum(depths):
            raise InputError(
                f"got one tensor of shape {list(a.shape)}; the model takes {len(inputs)} inputs {names} "
                f"with {sum(depths)} channels in all"
            )
        cuts = np.cumsum(depths)[:-1]
        out = dict(zip(names, np.split(a, cuts, axis=3), strict=True))
    else:
        raise InputError(f"the model's inputs are {names}, but the request has {sent}; send those names")
    result = {}
    for t in inputs:
        if t.name not in out:
            raise InputError(f"input {t.name!r} is missing; the model's inputs are {names}")
        a = _layout_fix(t, np.asarray(out[t.name]))
        if not _fits(t, a.shape):
            raise InputError(f"input {t.name!r} has shape {list(a.shape)}, but the model takes {t.describe()}")
        if t.dtype is not None and a.dtype != t.dtype:
            a = fit_dtype(a, t.dtype, f"input {t.name!r} ({a.dtype}, for a model that takes {t.dtype})")
        result[t.name] = a
    return result
