"""The map server: a Starlette app (the web stack of ``tilecast serve``) and uvicorn on a socket bound up front.

Routes::

    GET /                              the page (Leaflet, served from here: works offline)
    GET /config.json                   layers, legends and zoom guards, for the page
    GET /tilejson.json                 the main layer's TileJSON 3.0.0 (the prediction)
    GET /tiles/{z}/{x}/{y}.png         its tiles
    GET /{layer}/tilejson.json         another layer's TileJSON (``input``)
    GET /{layer}/tiles/{z}/{x}/{y}.png its tiles
    GET /point?lon=..&lat=..           every layer's values at a position (never starts a model run)
    GET /stats.json                    block cache counters, settled value ranges, the last tile errors
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._extras import require
from .errors import PortInUseError
from .session import MapView
from .style import RangeStyle
from .tiles import Layer, PredictionLayer, StillWanted

__all__ = ["ViewServer", "bind", "create_app", "tile_or_error", "view_stats"]

log = logging.getLogger("tilecast.view")
STATIC = Path(__file__).parent / "static"
_EMPTY: dict[str, bytes] = {}


def _empty_png() -> bytes:
    if "png" not in _EMPTY:
        import numpy as np
        from rio_tiler.utils import render

        _EMPTY["png"] = render(np.zeros((1, 256, 256), dtype=np.uint8), mask=np.zeros((256, 256), dtype=np.uint8))
    return _EMPTY["png"]


def create_app(view: MapView, stopping: Callable[[], bool] | None = None) -> Any:
    """The ASGI app serving ``view``. ``stopping``: whether the server is shutting down, so that requests waiting
    for blocks give up at once (503) instead of holding the shutdown until it cancels them."""
    require("starlette", "view")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    main_key = next(iter(view.layers))

    def layer_of(request: Request):
        key = request.path_params.get("layer", main_key)
        layer = view.layers.get(key)
        if layer is None:
            return None, JSONResponse({"error": f"no layer {key!r}; layers: {sorted(view.layers)}"}, 404)
        return layer, None

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(request: Request) -> Response:
        return JSONResponse(view.config(str(request.base_url)))

    async def tilejson(request: Request) -> Response:
        layer, error = layer_of(request)
        if error is not None:
            return error
        key = request.path_params.get("layer")
        prefix = f"{key}/" if key else ""
        return JSONResponse(layer.tilejson(f"{request.base_url}{prefix}tiles/{{z}}/{{x}}/{{y}}.png"))

    async def tile(request: Request) -> Response:
        layer, error = layer_of(request)
        if error is not None:
            return error
        z, x, y = (int(request.path_params[k]) for k in ("z", "x", "y"))
        if not (0 <= z <= 30 and 0 <= x < 2**z and 0 <= y < 2**z):
            return JSONResponse({"error": f"no tile {z}/{x}/{y}"}, 404)

        async def still_wanted() -> bool:
            return not (stopping is not None and stopping()) and not await request.is_disconnected()

        png, failed = await tile_or_error(view, layer, z, x, y, still_wanted)
        if failed is not None:
            return JSONResponse({"error": failed}, 500)
        if png is None and stopping is not None and stopping():
            return JSONResponse({"error": "the map server is stopping"}, 503, headers={"Cache-Control": "no-store"})
        if png is None and await request.is_disconnected():
            return Response(status_code=204)
        cache = "no-cache" if isinstance(layer, PredictionLayer) and z < layer.zooms.minzoom else "max-age=3600"
        return Response(png if png is not None else _empty_png(), media_type="image/png",
                        headers={"Cache-Control": cache})

    async def point(request: Request) -> Response:
        try:
            lon, lat = float(request.query_params["lon"]), float(request.query_params["lat"])
        except (KeyError, ValueError):
            return JSONResponse({"error": "give ?lon=..&lat=.. in degrees"}, 400)
        from anyio import to_thread

        values = {k: await to_thread.run_sync(layer.point, lon, lat) for k, layer in view.layers.items()}
        return JSONResponse(values)

    async def stats(request: Request) -> Response:
        return JSONResponse(view_stats(view))

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", page), Route("/favicon.ico", no_icon), Route("/config.json", config),
        Route("/point", point), Route("/stats.json", stats),
        Route("/tilejson.json", tilejson), Route("/tiles/{z:int}/{x:int}/{y:int}.png", tile),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/{layer}/tilejson.json", tilejson), Route("/{layer}/tiles/{z:int}/{x:int}/{y:int}.png", tile),
    ]
    return Starlette(routes=routes)


async def tile_or_error(view: MapView, layer: Layer, z: int, x: int, y: int,
                        still_wanted: StillWanted) -> tuple[bytes | None, str | None]:
    """``(png, None)``, or ``(None, error)`` when the tile failed: the model (a Python function's own error too) or
    GDAL. The error is one line, logged and kept for the page; the rest of the map keeps working."""
    try:
        return await layer.tile(z, x, y, still_wanted), None
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        log.error("tile %s/%s/%s: %s", z, x, y, message)
        view.errors.append({"layer": layer.name, "tile": f"{z}/{x}/{y}", "error": message})
        return None, message


def view_stats(view: MapView) -> dict[str, Any]:
    """Block counters of the prediction layers, the value ranges the continuous layers settled on, and the last
    tiles that failed (the page shows them)."""
    out: dict[str, Any] = {"errors": list(view.errors)}
    for key, layer in view.layers.items():
        if isinstance(layer, PredictionLayer):
            out[key] = asdict(layer.runner.stats)
        if isinstance(layer.style, RangeStyle):
            out.setdefault("rescale", {})[key] = layer.style.rescale
    return out


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port), or a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OverflowError:  # Python's word for a port outside 0-65535
        sock.close()
        raise PortInUseError(f"cannot listen on {host}:{port}: a port is 0-65535 (0: any free one)") from None
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise PortInUseError(
                f"cannot listen on {host}:{port}: {exc.strerror.lower() if exc.strerror else exc}; pick another "
                "port with --port N (or --port 0 for any free one)"
            ) from None
        raise PortInUseError(f"cannot listen on {host}:{port}: {exc}; check --host and --port") from None
    sock.set_inheritable(True)
    return sock


class ViewServer:
    """Serves a :class:`MapView` with uvicorn, in the foreground (:meth:`run`) or a background thread
    (:meth:`start`); :meth:`stop` ends it and closes the view."""

    def __init__(self, view: MapView, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        uvicorn = require("uvicorn", "view")
        self.view = view
        self.host = host
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        app = create_app(view, lambda: self.server.should_exit)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", log_level=log_level,
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C or SIGTERM). Blocks still being computed then are not waited for (a slow
        model would hold the interrupt for the rest of its run): see :meth:`MapView.busy`."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self._finish(wait=False)

    def start(self, timeout: float = 30.0) -> ViewServer:
        """Serve from a daemon thread; returns once the server accepts connections (at once if it does)."""
        if self.thread is not None:
            return self
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"tilecast-view-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise PortInUseError(f"the map server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, wait: bool = False) -> None:
        """Stop serving and release the blocks' threads; safe to call twice.

        Blocks still being computed are not waited for (``wait=True`` does): with a slow model that would freeze the
        caller, a notebook cell closing its map, for the rest of the block. They end in the background; queued ones
        are dropped."""
        self.server.should_exit = True
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)
        self._finish(wait)

    def _finish(self, wait: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self.sock.close()
        self.view.close(wait)

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
