"""How many CPUs this process may use, and how many of them the model's own thread pool gets by default."""

from __future__ import annotations

import os

__all__ = ["available_cpus", "model_threads"]


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, which containers and ``taskset`` narrow."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def model_threads() -> int:
    """Intra-op threads for an in-process model: every available CPU, less two on machines with more than four.

    Always an explicit count: left at its default, ONNX Runtime sizes its pool from the whole machine (not the
    affinity mask) and pins each thread to a core, so a pinned thread preempted by tilecast's readers or writer
    stalls every other one at the next barrier. On 16 cores, 14 unpinned threads made ``predict`` 10-16% faster
    than the pinned default (``bench/bench_threads.py``); on 2 cores the two were equal.
    """
    n = available_cpus()
    return n - 2 if n > 4 else n
