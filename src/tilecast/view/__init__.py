"""See predictions on a map: XYZ tiles computed on the model's grid, cached, with a zoom-out guard.

``tilecast view scene.tif --model m.onnx`` serves a page; :func:`explore` returns a Jupyter map backed by the same
server. Needs the ``[view]`` extra (rio-tiler, morecantile, starlette, uvicorn; ipyleaflet for Jupyter).
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXTRA_MODULES", "explore", "require_extra", "view"]

EXTRA_MODULES = ("rio_tiler", "morecantile", "starlette", "uvicorn")
"""What the map server imports; ``pip install 'tilecast[view]'`` brings them (and ipyleaflet for Jupyter)."""


def require_extra(jupyter: bool = False) -> None:
    """Fail with :class:`~tilecast.errors.MissingExtraError` naming the ``view`` extra when a part is missing."""
    from .._extras import require

    for module in EXTRA_MODULES + (("ipyleaflet",) if jupyter else ()):
        require(module, "view")


def explore(target: Any, **options: Any) -> Any:
    """An interactive map of ``target`` (a :class:`~tilecast.prediction.Prediction` or a raster path); see
    :func:`tilecast.view.widget.explore`."""
    require_extra(jupyter=True)
    from .widget import explore as run

    return run(target, **options)


view = explore
