"""Runners execute a tile plan. They decide where and when each tile's steps run, never what they do."""

from .local import run_local, run_local_chunked

__all__ = ["run_local", "run_local_chunked"]
