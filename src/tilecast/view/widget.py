"""A Jupyter map of a prediction (or a raster): an ipyleaflet map backed by the map server in a background thread.

The widget shows the same tiles as ``tilecast view`` (same server code, same block cache). The server stops on
``close()``, or when the map is garbage collected (ipywidgets keeps every widget alive until it is closed, so in a
notebook ``close()`` is what stops it) and at interpreter exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import weakref
from typing import TYPE_CHECKING, Any

from .._extras import require
from ..errors import SpecError
from .app import ViewServer
from .session import MapView, ViewOptions, from_prediction, from_raster

if TYPE_CHECKING:
    from ..prediction import Prediction

ipyleaflet = require("ipyleaflet", "view")

__all__ = ["ExploreMap", "explore", "view_options"]


class ExploreMap(ipyleaflet.Map):
    """An ``ipyleaflet.Map`` that owns the tile server behind its layers."""

    _stop: weakref.finalize | None = None
    url: str = ""

    def attach(self, server: ViewServer) -> None:
        self.server = server
        self.url = server.url
        self._stop = weakref.finalize(self, server.stop)

    def close(self) -> None:
        """Stop the tile server, then close the widget."""
        if self._stop is not None:
            self._stop()
        super().close()


def explore(
    target: Prediction | str | os.PathLike,
    *,
    options: ViewOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    **style: Any,
) -> ExploreMap:
    """An interactive map of ``target``: a :class:`~tilecast.prediction.Prediction` (computed block by block as
    the map asks for it) or the path of a raster. ``style`` sets :class:`~tilecast.view.session.ViewOptions`
    fields (``colormap``, ``rescale``, ``classes``, ``rgb``, ``band``, ``basemap``, ``cache_dir``...)."""
    opts = view_options(options, style)
    raster = isinstance(target, (str, os.PathLike))
    mapview = from_raster(target, opts) if raster else from_prediction(target, opts)
    try:
        server = ViewServer(mapview, host=host, port=port).start()
    except BaseException:
        mapview.close()
        raise
    return _map(mapview, server)


def view_options(options: ViewOptions | None, style: dict[str, Any]) -> ViewOptions:
    """``options`` with the keywords given beside it; an unknown keyword is a :class:`SpecError` naming them all."""
    known = [f.name for f in dataclasses.fields(ViewOptions)]
    unknown = sorted(set(style) - set(known))
    if unknown:
        raise SpecError(f"explore() has no option {', '.join(map(repr, unknown))}; its options are {', '.join(known)}")
    return dataclasses.replace(options, **style) if options is not None else ViewOptions(**style)


def _map(mapview: MapView, server: ViewServer) -> ExploreMap:
    base = server.url
    w, s, e, n = mapview.config(base)["bounds"]
    tiles = []
    if mapview.basemap:  # nothing beneath the layers unless asked: the map stays offline
        tiles.append(ipyleaflet.TileLayer(url=mapview.basemap, name="basemap", max_zoom=24))
    for key, layer in reversed(list(mapview.layers.items())):
        prefix = "" if layer is mapview.main else f"{key}/"
        url = layer.tilejson(f"{base}{prefix}tiles/{{z}}/{{x}}/{{y}}.png")["tiles"][0]
        tiles.append(ipyleaflet.TileLayer(url=url, name=layer.name,
                                          max_native_zoom=layer.zooms.maxzoom, max_zoom=24,
                                          opacity=0.8 if layer is mapview.main else 1.0))
    m = ExploreMap(center=((s + n) / 2, (w + e) / 2), zoom=mapview.main.zooms.native - 2, scroll_wheel_zoom=True,
                   basemap=tiles[0])
    for layer in tiles[1:]:
        m.add(layer)
    m.add(ipyleaflet.LayersControl(position="topright"))
    legend = mapview.main.style.legend()
    if legend.get("kind") == "classes":
        m.add(ipyleaflet.LegendControl({i["name"]: i["color"] for i in legend["items"]}, title=mapview.main.name,
                                       position="bottomright"))
    if _loop_running():  # ipyleaflet fits bounds on the notebook's event loop; elsewhere centre and zoom frame it
        m.fit_bounds([[s, w], [n, e]])
    m.attach(server)
    return m


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
