"""See predictions on a map: XYZ tiles computed on the model's grid, cached, with a zoom-out guard.

``tilecast view scene.tif --model m.onnx`` serves a page; :func:`explore` returns a Jupyter map backed by the same
server. Needs the ``[view]`` extra (rio-tiler, morecantile, starlette, uvicorn; ipyleaflet for Jupyter).
"""

from __future__ import annotations

from typing import Any

__all__ = ["explore", "view"]


def explore(target: Any, **options: Any) -> Any:
    """An interactive map of ``target`` (a :class:`~tilecast.prediction.Prediction` or a raster path); see
    :func:`tilecast.view.widget.explore`."""
    from .widget import explore as _explore

    return _explore(target, **options)


view = explore
