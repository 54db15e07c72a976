"""``load_model(path)``: pick the runtime from the file, read the model card, let explicit arguments win.

This is what makes ``tilecast predict scene.tif --model landcover.onnx -o out.tif`` work without flags: the card says
how to tile, which bands in which order, how to scale them and what comes out. The work happens in
:mod:`tilecast.card` (:func:`~tilecast.card.open_model`); :meth:`tilecast.Model.load` is the same call.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from .card import describe_card, detect_format, open_runtime
from .model import Model

__all__ = ["describe_card", "detect_format", "explicit", "load_model", "open_runtime"]


def explicit(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a user actually gave: drops None, empty containers and unset flags (``False``).

    A CLI passes ``load_model(path, **explicit(params))`` so its defaults never hide what the card says.
    """
    return {k: v for k, v in params.items()
            if v is not None and v is not False and not (isinstance(v, (list, tuple, dict)) and len(v) == 0)}


def load_model(path: str | os.PathLike, **options: Any) -> Model:
    """Load a model and its card: :meth:`tilecast.Model.load`. Keyword ``options`` (Earth Engine parameters)
    replace what the card says; ``card=``, ``providers=``, ``device=``, ``precision=``, ``threads=``,
    ``signature_name=`` and ``check=`` choose how it is opened."""
    return Model.load(path, **options)


def __getattr__(name: str) -> Any:
    if name == "CardModel":
        warnings.warn("tilecast.loading.CardModel is gone: a model loaded with a card is a plain Model whose "
                      "`card` holds the binding; use tilecast.Model", DeprecationWarning, stacklevel=2)
        return Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
