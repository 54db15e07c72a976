"""The Dask scaffolding every plan shares: the client, a staging folder, the announcement, running and gathering the
tasks, resubmitting those cancelled with a lost worker. Predictions (:mod:`tilecast.runners.dask`) and the exports
(:mod:`tilecast.export.dask`, :mod:`tilecast.export.dask_samples`) only say what one task does.

On CPython 3.11 a worker can stop for good: a garbage collection that starts inside ``sys._current_frames()`` and
frees a ``threading.local`` (every open source keeps one) takes the interpreter's thread-list lock that
``_current_frames`` already holds (python/cpython#106883, dask/distributed#8616). Dask's task profiler calls it every
10 ms on the worker's event loop, so the worker, GIL held, sends no heartbeat again and its task stays "processing".
Two defences: the clusters tilecast starts run without that profiler on 3.11 (:func:`local_cluster`), and a failed
task frees what its frames hold at once, in its own thread (:func:`worker_task`), instead of leaving a source with
its ``threading.local`` in a reference cycle for the collector. Whatever stops a worker, a run stops with an error
naming it once it has been silent for Dask's ``worker-ttl`` (:func:`run_tasks`), not when the scheduler next checks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import os
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from .._extras import require
from ..errors import SpecError, TilecastError
from .engine import Dask

__all__ = [
    "PROFILER_DEADLOCKS",
    "Broadcast",
    "announce",
    "connect",
    "free_frames",
    "gather",
    "has_dashboard",
    "local_cluster",
    "name_width",
    "open_client",
    "result_of",
    "run_tasks",
    "session",
    "staging_folder",
    "worker_config",
    "worker_silence_limit",
    "worker_source",
    "worker_task",
]

PROFILER_DEADLOCKS = sys.version_info[:2] == (3, 11)
"""Whether Dask's task profiler can deadlock a worker on this interpreter (see the module's docstring). Distributed
itself turns off its event-loop profiler on 3.11 for this reason, but not the task profiler."""


def worker_config() -> dict[str, Any]:
    """Dask settings for the workers of a cluster tilecast starts: without the task profiler where it can deadlock
    them (the dashboard's profile page stays empty; nothing else changes)."""
    return {"distributed.worker.profile.enabled": False} if PROFILER_DEADLOCKS else {}


@contextlib.contextmanager
def local_cluster(**kwargs: Any) -> Iterator[Any]:
    """A ``distributed.LocalCluster(**kwargs)`` whose workers get :func:`worker_config`, closed on exit. Each nanny
    copies the configuration when it is created, so the settings also hold for a worker it restarts."""
    distributed = require("distributed", "dask")
    import dask

    with dask.config.set(worker_config()):
        cluster = distributed.LocalCluster(**kwargs)
    with cluster:
        yield cluster


def free_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s traceback (and its causes'), so what they held
    (a source, its GDAL handles and ``threading.local``) is freed now rather than by the garbage collector: an error
    kept in a local of the frame that raised it (``raise error``) forms a cycle with that frame. The traceback's
    text (files, lines) stays intact."""
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and not any(link is s for s in seen) and len(seen) < 16:
        seen.append(link)
        traceback.clear_frames(link.__traceback__)  # skips the frames still running (this one and its callers)
        link = link.__cause__ or link.__context__


def worker_task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function that runs as a Dask task: when it fails, :func:`free_frames` runs in the task's own
    thread before the error reaches Dask."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            free_frames(exc)
            raise

    return run


class Broadcast:
    """A value every task of a run shares, on every worker; scattered again when the last copy was lost with its
    workers (a scattered value has no task that could recompute it, so its tasks would be cancelled)."""

    def __init__(self, client: Any, value: Any) -> None:
        self.client = client
        self.value = value
        self._future = client.scatter(value, broadcast=True, hash=False)

    def future(self) -> Any:
        if self._future.status != "finished":
            self._future = self.client.scatter(self.value, broadcast=True, hash=False)
        return self._future


@contextlib.contextmanager
def open_client(
    client: Any = None, scheduler: str | None = None, workers: int | None = None, threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
) -> Iterator[Any]:
    """The client to use: the one given, one for ``scheduler``, the current one, or a new LocalCluster."""
    distributed = require("distributed", "dask")
    if client is not None:
        yield client
        return
    if scheduler:
        with connect(scheduler) as c:
            yield c
        return
    if workers is None:
        try:
            yield distributed.get_client()
            return
        except ValueError:
            pass
    n = workers or 1
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n)
    try:
        import bokeh  # noqa: F401

        dashboard: str | None = "127.0.0.1:0"
    except ImportError:
        dashboard = None
    kwargs: dict[str, Any] = {"n_workers": n, "threads_per_worker": threads, "processes": True,
                              "dashboard_address": dashboard}
    if memory_limit is not None:
        kwargs["memory_limit"] = memory_limit
    with local_cluster(**kwargs) as cluster, distributed.Client(cluster) as c:
        yield c


@functools.cache
def _closing_client() -> type:
    """``distributed.Client``, but one whose failed start stops the event-loop thread it began: a client that could
    not connect is never returned, so nothing else could close it, and each failed attempt left a thread behind."""
    distributed = require("distributed", "dask")

    class ClosingClient(distributed.Client):
        def start(self, **kwargs: Any) -> None:
            try:
                super().start(**kwargs)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.close()
                with contextlib.suppress(Exception):  # close() returns early for a client that never connected
                    self._loop_runner.stop()
                raise

    return ClosingClient


def connect(scheduler: str) -> Any:
    """A client of the scheduler at ``scheduler``; a :class:`~tilecast.errors.SpecError` naming the address when
    it cannot be reached within Dask's ``distributed.comm.timeouts.connect`` (instead of the library's error)."""
    import dask

    try:
        return _closing_client()(scheduler)
    except (OSError, TimeoutError, ValueError) as exc:
        timeout = dask.config.get("distributed.comm.timeouts.connect", None)
        raise SpecError(
            f"cannot reach the Dask scheduler at {scheduler}: {exc}. Check the address (tcp://HOST:8786) and that "
            f"the scheduler is running and reachable from here (tilecast waited distributed.comm.timeouts.connect, "
            f"{timeout}, for it), or run without a scheduler (a LocalCluster) or with engine='local'"
        ) from None


@contextlib.contextmanager
def session(engine: Dask, source_recipe: tuple) -> Iterator[Any]:
    """The run's client (see :func:`open_client`), once its workers have shown they can open the source, inside
    Dask's performance report when the engine asks for one."""
    distributed = require("distributed", "dask")
    from .recipe import check_workers_can_open

    with open_client(engine.client, engine.scheduler, engine.workers) as c:
        check_workers_can_open(c, source_recipe)
        report = (distributed.performance_report(filename=str(engine.performance_report))
                  if engine.performance_report else contextlib.nullcontext())
        with report:
            yield c


def has_dashboard(client: Any) -> bool:
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)

        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except Exception:
        return False


def announce(client: Any, tasks: str, report: Callable | None) -> None:
    """One line on stderr (unless quiet): the tasks, the workers and the dashboard link."""
    if report is None:
        return
    link = client.dashboard_link if has_dashboard(client) else None
    print(f"dask: {tasks} on {len(client.nthreads())} worker(s)" + (f"; dashboard {link}" if link else ""),
          file=sys.stderr)


def worker_silence_limit() -> float | None:
    """Seconds a worker running one of a run's tasks may stay silent (no heartbeat reaches the scheduler; a small
    cluster's workers send two a second) before the run stops with an error: ``distributed.scheduler.worker-ttl``
    (5 minutes by default), after which Dask itself counts the worker as dead, but which the scheduler only checks
    that often, so it restarts such a worker 5 to 10 minutes after it went silent. None where it is switched off."""
    require("distributed", "dask")  # which loads Distributed's defaults into Dask's configuration
    import dask
    from dask.utils import parse_timedelta

    ttl = dask.config.get("distributed.scheduler.worker-ttl", None)
    return float(parse_timedelta(ttl)) if ttl else None


class _Silence:
    """Watches whether a worker that runs one of the run's tasks stopped heartbeating: its ``last_seen`` (on the
    scheduler's clock) has not moved for ``limit`` seconds of this process's clock, so the two clocks need not
    agree. Asks the scheduler at most every few seconds; never with no limit."""

    def __init__(self, client: Any, limit: float | None) -> None:
        self.client = client
        self.limit = limit
        self.every = min(5.0, (limit or 0) / 4)
        self.seen: dict[str, tuple[Any, float]] = {}  # worker -> (its last_seen, when it last changed here)
        self.due = time.monotonic() + self.every

    def check(self, keys: Collection[str]) -> None:
        now = time.monotonic()
        if self.limit is None or now < self.due or not keys:
            return
        self.due = now + self.every
        try:
            info = self.client.scheduler_info(n_workers=-1)  # the default lists only 5 workers
        except TypeError:  # Distributed before 2025: no n_workers, every worker listed
            info = self.client.scheduler_info()
        workers = info.get("workers", {})
        for addr, worker in workers.items():
            last = worker.get("last_seen")
            if addr not in self.seen or self.seen[addr][0] != last:
                self.seen[addr] = (last, now)
        silent = [a for a in workers if now - self.seen[a][1] > self.limit]
        if not silent:
            return
        held: dict[str, list[str]] = {}  # a silent worker holding a finished task's value blocks its gather too
        for key, where in self.client.who_has(list(keys)).items():
            for addr in where or ():
                held.setdefault(addr, []).append(key)
        for addr, running in self.client.processing(workers=silent).items():
            mine = [k for k in running if k in keys]
            doing = "running" if mine else "holding the result of"
            mine = mine or held.get(addr, [])
            if mine:
                error = TilecastError(
                    f"Dask worker {addr} has not answered the scheduler for {now - self.seen[addr][1]:.0f} s while "
                    f"{doing} {mine[0]}, so this run stopped instead of waiting on it: the worker is stuck or its "
                    "machine overloaded or gone (on CPython 3.11, Dask's task profiler can deadlock a worker: start "
                    "workers with distributed.worker.profile.enabled: false, or use Python 3.12+); restart the "
                    "worker or the cluster and run again"
                )
                error.resumable = True  # nothing in the run is wrong: its partial output stays for resume=True
                raise error


def _completed(pending: Any, live: Collection[str], silence: _Silence) -> Iterator[Any]:
    """The futures of ``pending`` as they complete, like iterating it, but checking meanwhile that no worker running
    one of ``live`` went silent."""
    while True:
        while not pending.has_ready():
            if pending.is_empty():
                return
            with pending.thread_condition:  # notified as each future completes, as Distributed's own iteration is
                pending.thread_condition.wait(timeout=0.1)
            silence.check(live)
        yield next(pending)
        silence.check(live)  # also while others' results keep coming in


def _fetch(pool: concurrent.futures.Executor, future: Any, silence: _Silence, keys: Collection[str] = ()) -> Any:
    """``future.result()``, waited for on ``pool``'s thread while checking that no worker holding the value (or
    running one of ``keys``) went silent: the value of a finished task is fetched from its worker, which blocks
    for as long as that worker is stuck."""
    call = pool.submit(future.result)
    while True:
        done, _ = concurrent.futures.wait([call], timeout=0.1)
        if done:
            return call.result()  # the value, or the task's own error as it is (even a TimeoutError)
        silence.check({future.key, *keys})


def result_of(client: Any, future: Any) -> Any:
    """``future.result()``, but stopping with an error when the worker running it goes silent (see
    :func:`run_tasks`)."""
    distributed = require("distributed", "dask")
    silence = _Silence(client, worker_silence_limit())
    while True:
        try:
            distributed.wait(future, timeout=1.0)
        except TimeoutError:
            silence.check({future.key})
            continue
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tilecast-dask-result") as pool:
            try:
                return _fetch(pool, future, silence)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)


def run_tasks(
    client: Any,
    submit: Callable[[int, int], Any],
    indices: Iterable[int],
    on_result: Callable[[Any], None],
    *,
    in_flight: int | None = None,
    retries: int = 3,
    silence_limit: float | None = None,
) -> None:
    """Run ``submit(index, attempt)`` for every index, at most ``in_flight`` at a time (all at once by default),
    handing each result to ``on_result`` as it comes in and releasing its future; on a failure the remaining tasks
    are cancelled and the error raised.

    Dask retries a task whose worker died, but not one whose *scattered* input died with it: the scheduler cancels
    that task. Such a task is submitted again with ``attempt + 1`` (the caller scatters its inputs anew, e.g. with
    :class:`Broadcast`), at most ``retries`` times; a retry rewrites what the lost attempt wrote. A worker that stays
    alive but silent (stuck) for ``silence_limit`` seconds (default :func:`worker_silence_limit`) while it runs one
    of the tasks stops the run with a :class:`~tilecast.errors.TilecastError` that names it, instead of a wait on
    the scheduler's next ``worker-ttl`` check.
    """
    distributed = require("distributed", "dask")
    queue = iter(indices)
    pending = distributed.as_completed()
    live: dict[str, tuple[Any, int, int]] = {}  # key -> (future, index, attempt)

    def start(index: int, attempt: int = 0) -> None:
        fut = submit(index, attempt)
        live[fut.key] = (fut, index, attempt)
        pending.add(fut)

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tilecast-dask-result")
    try:
        for index in itertools.islice(queue, in_flight):
            start(index)
        silence = _Silence(client, worker_silence_limit() if silence_limit is None else silence_limit)
        for fut in _completed(pending, live.keys(), silence):
            _, index, attempt = live.pop(fut.key)
            try:
                # A task that had finished can still be lost before its result is in (its worker dies meanwhile).
                result = _fetch(pool, fut, silence, live.keys())
            except concurrent.futures.CancelledError:
                if attempt >= retries:
                    raise
                fut.release()
                start(index, attempt + 1)
                continue
            fut.release()
            on_result(result)
            nxt = next(queue, None)
            if nxt is not None:
                start(nxt)
    except BaseException:
        for fut, _, _ in live.values():
            with contextlib.suppress(Exception):
                fut.cancel()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a fetch from a stuck worker ends when that worker does


def gather(client: Any, submit: Callable[[int, int], Any], n: int, advance: Callable[[Any], None] | None = None
           ) -> list[Any]:
    """The results of tasks ``0 .. n-1`` (see :func:`run_tasks`), sorted by their ``index``."""
    results: list[Any] = []

    def collect(result: Any) -> None:
        results.append(result)
        if advance is not None:
            advance(result)

    run_tasks(client, submit, range(n), collect)
    return sorted(results, key=lambda r: r.index)


def name_width(tasks: int) -> int:
    """Digits of a task number in file names, so that names sort in task order."""
    return max(5, len(str(max(tasks - 1, 0))))


@contextlib.contextmanager
def staging_folder(folder: Path, prefix: str) -> Iterator[Path]:
    """A hidden folder inside the output folder where tasks write; removed at the end, whatever happens, so a
    failed run leaves nothing behind and a task still running after a failure finds it gone and fails instead of
    publishing."""
    staging = folder / f".{prefix}.dask-{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir()
    try:
        yield staging
    finally:
        # Cancelling a future does not stop a task that is already running: one may still create a file while
        # the folder is being removed. Retry briefly; such a task fails on its next file once the folder is gone.
        for attempt in range(10):
            shutil.rmtree(staging, ignore_errors=True)
            if not staging.exists():
                break
            time.sleep(0.1 * (attempt + 1))


@contextlib.contextmanager
def worker_source(recipe: tuple, env: Any) -> Iterator[Any]:
    """A task's source, opened on the worker from its recipe under the client's GDAL settings, closed after."""
    from .recipe import build_source

    with env.apply():
        source = build_source(recipe)
        try:
            yield source
        finally:
            if recipe[0] != "object":  # a source the worker opened itself (never the caller's own object)
                with contextlib.suppress(Exception):
                    source.close()
