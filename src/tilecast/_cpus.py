"""Former home of the CPU-derived defaults, now the resource policy's (:class:`tilecast.resources.Resources`).

These names stay for callers not yet moved to :mod:`tilecast.resources`; each asks the policy.
"""

from __future__ import annotations

from .resources import Resources, available_cpus

__all__ = ["available_cpus", "model_streams", "model_threads", "read_threads"]


def model_threads() -> int:
    """:attr:`Resources.model_threads <tilecast.resources.Resources.model_threads>` of the detected policy."""
    return Resources.detect().model_threads


def model_streams(threads: int) -> int:
    """:meth:`Resources.streams_for <tilecast.resources.Resources.streams_for>` of the detected policy."""
    return Resources.detect().streams_for(threads)


def read_threads() -> int:
    """:attr:`Resources.read_threads <tilecast.resources.Resources.read_threads>` of the detected policy."""
    return Resources.detect().read_threads
