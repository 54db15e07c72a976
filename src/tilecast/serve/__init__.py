"""``tilecast serve``: host any model tilecast loads over KServe v2, TF Serving REST (including Earth Engine's
prepared-model convention and Vertex AI's ``:predict``) and, optionally, TF Serving gRPC."""

from .server import build, serve

__all__ = ["build", "serve"]
