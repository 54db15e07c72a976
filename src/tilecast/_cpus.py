"""How many CPUs this process may use, and how many of them the model's own thread pool gets by default."""

from __future__ import annotations

import os

__all__ = ["available_cpus", "model_streams", "model_threads", "read_threads"]


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


def model_streams(threads: int) -> int:
    """How many model calls to keep running at once for an in-process model given ``threads`` CPU threads: two when
    those threads take every CPU (machines with up to four), else one.

    Inside one call every operator ends at a barrier that waits for all of the model's threads. When the model has
    every core, tilecast's reader and writer threads can only run by preempting one of them, and then the others
    idle at the next barrier. Two calls with half the threads each do not wait for each other, so a preempted thread
    stalls only its own call; on 2 cores, ``predict`` with the compute-bound benchmark model took 5-6% less time and
    CPU (``bench/bench_predict.py``). With CPUs to spare (more than four) nothing preempts the model, and one call
    keeps the activations of one batch in memory instead of two.
    """
    return 2 if threads >= 2 and threads >= available_cpus() else 1


def read_threads() -> int:
    """Threads that read input tiles for the local runner: one per two CPUs, at most four.

    Each holds its own GDAL handle and block cache, so input blocks shared by neighbouring tiles are decoded once
    per thread; more readers than this decode more than they gain, and the rest of the CPUs are the model's.
    """
    return max(1, min(4, available_cpus() // 2))
