"""Open a model file with its card: the runtime, the parameters the card gives (explicit ones win) and the binding."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..plan import TileGeometry
from ..runtimes.base import Runtime
from ..runtimes.scaled import ScaledRuntime
from .binding import CardBinding
from .files import open_runtime, runtime_metadata
from .io import read_card, read_card_file
from .schema import Card
from .validate import check_card_signature

__all__ = ["OpenedModel", "open_model"]


@dataclass
class OpenedModel:
    """What :meth:`tilecast.Model.load` is built from."""

    runtime: Runtime
    params: dict[str, Any] = field(default_factory=dict)
    binding: CardBinding | None = None


def open_model(path: str | os.PathLike, *, card: Card | str | os.PathLike | None = None,
               providers: Sequence[str] | None = None, device: str | None = None, threads: int | None = None,
               signature_name: str | None = None, check: bool = True, precision: str | None = None,
               **overrides: Any) -> OpenedModel:
    """The runtime for ``path`` and the model parameters: the card's, replaced by ``overrides`` (Earth Engine
    parameters; None values are ignored, so a CLI can pass its options through unchanged).

    ``card``: a :class:`Card`, or a path to a card JSON to use instead of the sidecar/embedded one.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    runtime = open_runtime(path, providers=providers, device=device, threads=threads, signature_name=signature_name,
                           precision=precision)
    try:
        if isinstance(card, (str, os.PathLike)):
            card = read_card_file(card)
        elif card is None:
            card = read_card(path, runtime_metadata(runtime), runtime.signature)
        if card is None:
            return OpenedModel(runtime, overrides)
        if check:
            check_card_signature(card, runtime.signature)
        cp = card.to_params()
        params = {**cp.params, **overrides}
        if "input_overlap_size" in overrides and "input_tile_size" not in overrides \
                and cp.params.get("input_tile_size") is not None:
            params["input_tile_size"] = _refit_tile(runtime, params)
        if cp.scaling or cp.argmax:
            runtime = ScaledRuntime(runtime, cp.scaling, cp.channel_axis, cp.argmax)
        explicit_bands = "bands" in overrides
        if not explicit_bands:
            params.pop("bands", None)
        return OpenedModel(runtime, params, CardBinding(card, cp, explicit_bands))
    except BaseException:
        runtime.close()
        raise


def _refit_tile(runtime: Runtime, params: dict[str, Any]) -> Any:
    """A fixed-size model keeps its input size when only the overlap changes: the tile takes up the rest."""
    fixed = [t for t in runtime.signature.inputs if t.shape is not None and len(t.shape) == 4]
    if params.get("layout") == "pixels" or not fixed:
        return params["input_tile_size"]
    try:
        return tuple(TileGeometry.from_signature(fixed, params.get("layout"), params["input_overlap_size"], None,
                                                 params.get("overlap_mode", "per_edge")).tile)
    except SpecError:  # the model takes any size: the card's tile stays
        return params["input_tile_size"]
