"""Shipping a job to other processes: a small picklable recipe, rebuilt once per process and cached.

An ONNX session (or an open GDAL handle) does not pickle, and even when a model does, sending it with every task
would cost more than the task. A :class:`JobRecipe` carries how to rebuild the job (model path and options, source
path and bands, the plan, the bindings) plus the GDAL/credential settings captured on the client. Each worker
builds the job the first time it sees the recipe's token and reuses it for every later task.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import rasterio

from ..errors import OutputError, SourceReadError, SpecError, TilecastError
from ..job import Job
from ..resources import Resources
from ..runtimes.base import recipe_of, streams_of
from ..sinks.write_errors import is_gdal_error
from ..sources.base import source_paths, source_recipe_of
from .ordered import BatchReuse

__all__ = [
    "GdalEnv", "JobRecipe", "check_workers_can_open", "errors_reach_client", "get_job", "make_recipe",
    "tune_worker_malloc",
]

_ENV_PREFIXES = ("AWS_", "GDAL_", "CPL_", "VSI_", "GS_", "GOOGLE_", "AZURE_", "OSS_", "SWIFT_", "CURL_", "PROJ_")
_AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "KEY", "CREDENTIAL", "SAS", "SESSION")


@dataclass(frozen=True)
class GdalEnv:
    """GDAL configuration options (including credentials) to apply around every task; secrets masked in repr."""

    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls, extra: Mapping[str, Any] | None = None, resources: Resources | None = None) -> GdalEnv:
        """The active ``rasterio.Env`` options and the GDAL/cloud environment variables of this process, and unless
        they size it, GDAL's block cache at the policy's ``worker_cache``."""
        opts: dict[str, Any] = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
        if rasterio.env.hasenv():
            opts.update({k: v for k, v in rasterio.env.getenv().items() if isinstance(v, (str, int, float, bool))})
        opts.update(extra or {})
        # In bytes: rasterio hands an integer to GDALSetCacheMax64; 64 would mean 64 bytes, i.e. no cache.
        opts.setdefault("GDAL_CACHEMAX", (resources or Resources.detect()).worker_cache)
        return cls(opts)

    @staticmethod
    def is_secret(key: str) -> bool:
        return any(w in key.upper() for w in _SECRET_WORDS)

    def masked(self) -> dict[str, Any]:
        return {k: ("***" if self.is_secret(k) else v) for k, v in self.options.items()}

    @contextmanager
    def apply(self, writing: bool = False) -> Iterator[None]:
        """Set the options for the duration of a task. rasterio refuses AWS credentials as config options, so
        those go to the process environment, where GDAL reads them too.

        Every worker task runs inside this, so it is also where a task's error is made to reach the client as
        itself (:func:`errors_reach_client`; ``writing``: the task writes the output, so a GDAL error is about it).
        """
        tune_worker_malloc()
        opts = dict(self.options)
        for key in _AWS_CREDENTIALS:
            value = opts.pop(key, None)
            if value is not None and os.environ.get(key) != value:
                os.environ[key] = str(value)
        with errors_reach_client(writing), rasterio.Env(**opts):
            yield

    def __repr__(self) -> str:
        return f"GdalEnv({self.masked()})"


@contextmanager
def errors_reach_client(writing: bool = False) -> Iterator[None]:
    """Make a task's error reach the client as itself, and a GDAL error as a tilecast one.

    Distributed pickles an error together with its chain of causes and sends a bare ``Exception(repr)`` when that
    does not unpickle, as with GDAL's CPLE errors (their ``args`` cannot be set). A tilecast error raised while
    handling one (e.g. a missing input on a new worker) then lost its class, so the client could not tell that the
    run must stop rather than be resumed. Such a chain is cut and kept as notes.

    A GDAL error that no tilecast code turned into its own reaches the client as an
    :class:`~tilecast.errors.OutputError` (``writing``) or a :class:`~tilecast.errors.SourceReadError`: rasterio's
    own classes are no help there (a missing file opened ``"r+"`` is a ``TypeError``). It is marked ``resumable``, so
    the partial output is kept as it was for the library's error.
    """
    converted: TilecastError | None = None
    try:
        yield
    except Exception as exc:
        if isinstance(exc, TilecastError) or not is_gdal_error(exc):
            if not _round_trips(exc):
                shown = _shown_chain(exc)
                exc.__cause__ = exc.__context__ = None
                for link in shown:
                    exc.add_note(f"caused by {type(link).__name__}: {link}")
            raise
        converted = _gdal_error(exc, writing)
        for link in _shown_chain(exc):
            converted.add_note(f"caused by {type(link).__name__}: {link}")
    if converted is not None:
        # Raised while the library's error is still being handled (contextlib throws it in), so Python makes that error
        # the context, which Distributed would pickle along; a re-raise keeps the context cleared here.
        try:
            raise converted
        except TilecastError:
            converted.__context__ = None
            raise


def _gdal_error(exc: BaseException, writing: bool) -> TilecastError:
    """The tilecast error a worker sends for a GDAL error ``exc`` of a task that writes the output or reads."""
    text = str(exc).strip() or type(exc).__name__
    if writing:
        error: TilecastError = OutputError(
            f"a Dask worker could not write the output: {text}. Make sure the output folder exists on every worker, "
            "is writable and has room (free some space), then run again with resume=True (--resume) to continue"
        )
    else:
        error = SourceReadError(
            f"a Dask worker could not read: {text}. Make sure every worker can read the input (the same path or URL, "
            "the same credentials) and that it is intact, then run again with resume=True (--resume) to continue"
        )
    error.resumable = True  # as kept for the library's error it replaces
    return error


def _shown_chain(exc: BaseException) -> list[BaseException]:
    """The causes a traceback would print (``raise ... from None`` hides the context)."""
    links: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(links) < 8:
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
        if link is None or any(link is seen for seen in links):
            break
        links.append(link)
    return links


def _round_trips(exc: BaseException) -> bool:
    """Whether ``exc`` unpickles the way Distributed sends it: with its chain and tracebacks (tblib)."""
    try:
        import cloudpickle
        import tblib.pickling_support
    except ImportError:  # no Distributed: nothing sends the error anywhere
        return True
    try:
        tblib.pickling_support.install(exc)
        pickle.loads(cloudpickle.dumps(exc))
        return True
    except Exception:
        return False


_MALLOC_TUNED = False


def tune_worker_malloc(resources: Resources | None = None) -> bool:
    """Give large buffers back their reuse in a process started with Dask's ``MALLOC_TRIM_THRESHOLD_``.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any malloc threshold turns off
    glibc's dynamic mmap threshold, so every buffer over 128 KiB (tiles, batches, GDAL blocks, the COG conversion's
    buffers) becomes a fresh ``mmap`` whose pages fault in again on every use. The policy's
    ``worker_mmap_threshold`` lets those buffers be reused, and its ``worker_trim_threshold`` still hands memory
    back after a peak. Once per process; nothing happens outside glibc or where the variable is unset. True when
    this call changed the thresholds.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return False
    _MALLOC_TUNED = True
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        res = resources or Resources.detect()
        return (bool(libc.mallopt(m_mmap_threshold, res.worker_mmap_threshold))
                and bool(libc.mallopt(m_trim_threshold, res.worker_trim_threshold)))
    except (OSError, AttributeError):  # not glibc
        return False


def _runtime_recipe(runtime: Any) -> tuple:
    from ..runtimes.onnx import OnnxRuntime

    if isinstance(runtime, OnnxRuntime):
        if not runtime.path:
            raise SpecError(
                "engine='dask' rebuilds the model on each worker from its file, but this ONNX model was loaded "
                "from bytes; save it to a file every worker can read and use Model.from_onnx(path)"
            )
        session = runtime.session
        return ("onnx", runtime.path, tuple(session.get_providers()) if session is not None else None,
                runtime.precision)
    rebuild = recipe_of(runtime)
    return ("object", runtime) if rebuild is None else ("recipe", rebuild)


def _build_runtime(recipe: tuple, threads: int | None) -> Any:
    kind = recipe[0]
    if kind == "onnx":
        from ..runtimes.onnx import OnnxRuntime

        providers = [p.replace("ExecutionProvider", "").lower() for p in recipe[2] or ()] or None
        return OnnxRuntime(recipe[1], providers=providers, threads=threads,
                           precision=recipe[3] if len(recipe) > 3 else None)
    if kind == "recipe":
        factory, args, kwargs = recipe[1]
        return factory(*args, **kwargs)
    return recipe[1]


def source_recipe(source: Any) -> tuple:
    """How workers open ``source`` again: ``("recipe", (factory, args, kwargs), paths)`` from the source's own
    :meth:`~tilecast.sources.base.BaseSource.recipe`, or ``("object", source, paths)`` to send it as it is."""
    rebuild = source_recipe_of(source)
    paths = tuple(source_paths(source))
    return ("object", source, paths) if rebuild is None else ("recipe", rebuild, paths)


_PROCESS = uuid.uuid4().hex
"""This process, told apart from any other (a forked worker keeps the token, but not the pid)."""


def _process_id() -> tuple[str, int]:
    return _PROCESS, os.getpid()


def _process_local_paths(recipe: tuple) -> list[str]:
    """The source's files that live in GDAL's in-memory filesystem (``/vsimem/``, e.g. a rasterio ``MemoryFile``),
    which only the process that wrote them can read."""
    return [p for p in recipe[2] if isinstance(p, str) and "/vsimem/" in p]


def _workers_in_process(client: Any) -> bool:
    """Whether every worker of ``client``'s cluster runs in this very process (a ``LocalCluster(processes=False)``):
    asked of the workers themselves, by a token of this process and its pid."""
    here = _process_id()
    seen = client.run(_process_id)
    return bool(seen) and all(tuple(v) == here for v in seen.values())


def check_workers_can_open(client: Any, recipe: tuple) -> None:
    """Refuse, before any task runs, a source the workers cannot open: one in ``/vsimem/`` while the workers run in
    other processes (each would fail with "input raster not found"). Only such a source costs a round trip."""
    local = _process_local_paths(recipe)
    if not local or _workers_in_process(client):
        return
    raise SpecError(
        f"engine='dask' reopens the input on every worker, but {local[0]} is in GDAL's in-memory filesystem "
        "(/vsimem/, e.g. a rasterio MemoryFile), which only this process can read, and the Dask workers run in "
        "other processes; write the raster to a file or object store that every worker can read, or use "
        "engine='local' (or a LocalCluster(processes=False), whose workers share this process)"
    )


def build_source(recipe: tuple) -> Any:
    """The source a :func:`source_recipe` describes, opened in this process."""
    if recipe[0] == "recipe":
        factory, args, kwargs = recipe[1]
        return factory(*args, **kwargs)
    return recipe[1]


@dataclass(frozen=True)
class JobRecipe:
    """Everything a worker needs to rebuild a :class:`~tilecast.job.Job`; a few kilobytes once pickled."""

    token: str
    runtime: tuple
    source: tuple
    job: Job
    """The job with its runtime and source replaced by None (plan, spec, bindings, profile)."""
    env: GdalEnv
    threads: int | None = None

    def build(self) -> Job:
        return replace(self.job, runtime=_build_runtime(self.runtime, self.threads), source=build_source(self.source))


def make_recipe(job: Job, env: GdalEnv | None = None, threads: int | None = None) -> JobRecipe:
    """A recipe for ``job``; the client's own job is registered so in-process tasks reuse it."""
    recipe = JobRecipe(
        uuid.uuid4().hex, _runtime_recipe(job.runtime), source_recipe(job.source),
        replace(job, runtime=None, source=None), env or GdalEnv.capture(), threads,
    )
    _register(recipe.token, job)
    return recipe


class _Cached:
    def __init__(self, job: Job, owned: bool = True) -> None:
        self.job = job
        self.owned = owned
        """False for the caller's own job (registered on the client): never closed here."""
        self.infer_slots = threading.BoundedSemaphore(streams_of(job.runtime))
        """Model calls this process's tasks may make at once: the runtime's streams."""
        self.reuse = BatchReuse(job)
        """The job's packed batches, reused by every chunk task of this process."""


_CACHE: OrderedDict[str, _Cached] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4
BUILDS = 0
"""How many jobs this process has built from recipes (models loaded); for tests and diagnostics."""


def _register(token: str, job: Job) -> _Cached:
    with _CACHE_LOCK:
        entry = _CACHE[token] = _Cached(job, owned=False)
        _trim()
        return entry


def _trim() -> None:
    while len(_CACHE) > _CACHE_SIZE:
        _, old = _CACHE.popitem(last=False)
        if old.owned:
            _close(old.job)


def _close(job: Job) -> None:
    for part in (job.source, job.runtime):
        with contextlib.suppress(Exception):
            part.close()


def get_job(recipe: JobRecipe) -> _Cached:
    """This process's job for ``recipe``, built (model loaded) on first use only."""
    global BUILDS
    with _CACHE_LOCK:
        entry = _CACHE.get(recipe.token)
        if entry is not None:
            _CACHE.move_to_end(recipe.token)
            return entry
        with recipe.env.apply():
            job = recipe.build()
        BUILDS += 1
        entry = _CACHE[recipe.token] = _Cached(job)
        _trim()
        return entry


def forget(token: str) -> None:
    with _CACHE_LOCK:
        _CACHE.pop(token, None)
