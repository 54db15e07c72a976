"""``tilecast serve``: host any model tilecast loads over KServe v2, TF Serving REST (including Earth Engine's
prepared-model convention and Vertex AI's ``:predict``) and, optionally, TF Serving gRPC.

Needs the ``server`` extra; without it, importing this package raises
:class:`~tilecast.errors.MissingExtraError` naming it."""

from .._extras import require

for _module in ("starlette", "uvicorn", "prometheus_client"):
    require(_module, "server")

from .limits import ServerLimits  # noqa: E402
from .server import build, serve  # noqa: E402

__all__ = ["ServerLimits", "build", "serve"]
