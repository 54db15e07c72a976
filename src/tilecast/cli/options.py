"""Options and parameter types shared by the subcommands, and the error handling they all use."""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from ..errors import SpecError, TilecastError
from ..plan import AUTO, is_auto, parse_size


class SizeType(click.ParamType):
    """``256``, ``256,128`` or ``256x128``: width then height."""

    name = "W[,H]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(parse_size(value, f"--{param.name.replace('_', '-')}" if param and param.name else "size"))
        except SpecError as exc:
            self.fail(str(exc), param, ctx)


class KeyValueType(click.ParamType):
    """``KEY=VALUE`` or ``KEY:VALUE``; spaces around either are dropped, as curl drops them from ``-H 'Name: value'``
    (HTTP refuses a header value that starts with one)."""

    name = "KEY=VAL"

    def __init__(self, sep: str = "=") -> None:
        self.sep = sep

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition(self.sep)
        key, val = key.strip(), val.strip()
        if not sep or not key:
            self.fail(f"{value!r}: use KEY{self.sep}VALUE", param, ctx)
        return key, val


class TileSizeType(SizeType):
    """A :class:`SizeType` that also takes ``auto`` (the largest tile the model and the memory budget take)."""

    name = "W[,H]|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return AUTO if is_auto(value) else super().convert(value, param, ctx)


SIZE = SizeType()
TILE_SIZE = TileSizeType()


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in titled sections (``sections``: title -> parameter names, in
    order); options in no section come last, under "Other options"."""

    def __init__(self, *args: Any, sections: Mapping[str, Sequence[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = {title: tuple(names) for title, names in (sections or {}).items()}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        where = {name: title for title, names in self.sections.items() for name in names}
        rows: dict[str, list[tuple[str, str]]] = {title: [] for title in self.sections}
        rows["Other options"] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                rows[where.get(param.name or "", "Other options")].append(record)
        for title, records in rows.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


COG_COMPRESSIONS = ("DEFLATE", "ZSTD", "LZW", "LZMA", "WEBP", "JPEG", "LERC", "LERC_DEFLATE", "LERC_ZSTD", "NONE")
"""What GDAL's COG driver takes as COMPRESS."""


def compress_option(f: Callable) -> Callable:
    """``--compress``, checked: GDAL ignores a compression it does not know, with a warning no one reads."""
    return click.option("--compress", default="DEFLATE", show_default=True, metavar="NAME",
                        type=click.Choice(COG_COMPRESSIONS, case_sensitive=False),
                        callback=lambda ctx, param, value: value.upper() if value else value,
                        help=f"COG compression: {', '.join(COG_COMPRESSIONS)}.")(f)


def csv_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def quiet_option(f: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")(f)


def verbose_option(f: Callable) -> Callable:
    return click.option("-v", "--verbose", is_flag=True,
                        help="Say what was chosen (an automatic tile) and end with a one-line profile: the model's "
                        "share of the wall time, its speed alone and the pipeline's.")(f)


def overwrite_option(f: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")(f)


_TASK_OPTIONS = {
    "chunk_rows": click.option("--chunk-rows", type=int,
                               help="Patch rows per Dask task (default: two tasks per worker thread)."),
    "samples_per_task": click.option("--samples-per-task", type=int,
                                     help="Samples per Dask task (default: two tasks per worker thread, at most "
                                          "100,000)."),
}


def engine_options(*task_options: str, help: str = "local: threads on this machine; dask: tasks on a Dask "
                   "cluster (the same output).") -> Callable[[Callable], Callable]:
    """``--engine`` and the Dask options (``--scheduler``, ``--workers``, ``--performance-report`` and the named
    ``task_options``: ``chunk_rows``, ``samples_per_task``); the command receives one ``engine`` value, a
    :class:`tilecast.Local` or :class:`tilecast.Dask`."""
    names = ("scheduler", "workers", "performance_report", *task_options)
    options = [
        click.option("--engine", type=click.Choice(["local", "dask"]), default="local", show_default=True, help=help),
        click.option("--cpus", type=click.IntRange(min=1), metavar="N",
                     help="CPUs to plan threads for (default: those this process may run on; also TILECAST_CPUS)."),
        click.option("--scheduler", metavar="ADDR", help="Dask scheduler address (default: a LocalCluster)."),
        click.option("--workers", type=int, help="Worker processes of the LocalCluster started for --engine dask."),
        click.option("--performance-report", type=click.Path(dir_okay=False),
                     help="Write a Dask performance report (HTML)."),
        *(_TASK_OPTIONS[name] for name in task_options),
    ]

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cpus = kwargs.pop("cpus")
            if cpus is not None:  # before the model is loaded: every part of the run sizes its threads from it
                from ..resources import CPUS_ENV

                os.environ[CPUS_ENV] = str(cpus)
            given = {name: kwargs.pop(name) for name in names}
            kwargs["engine"] = engine_from_options(kwargs.pop("engine"), given)
            return f(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def engine_from_options(engine: str, options: dict[str, Any]) -> Any:
    """The engine the command line asks for; Dask options without ``--engine dask`` are a usage error."""
    from ..runners.engine import Dask, Local

    given = {k: v for k, v in options.items() if v is not None}
    if engine != "dask":
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise click.UsageError(f"{flags} need --engine dask (or leave them out to run on this machine)")
        return Local()
    try:
        return Dask(**given)
    except TilecastError as exc:
        raise click.UsageError(str(exc)) from None


def endpoint_request_options(f: Callable) -> Callable:
    """How requests to a hosted model are sent: the options every command with ``--endpoint`` shares. The command
    receives them as one ``endpoint_options`` value (:class:`tilecast.remote.options.EndpointOptions`)."""
    options = [
        click.option("--protocol", type=click.Choice(["v2", "tfserving", "vertex", "grpc"]),
                     help="Endpoint protocol (default: inferred from the URL)."),
        click.option("--payload-format",
                     help="Earth Engine payload format (SERIALIZED_TF_TENSORS, RAW_JSON, ND_ARRAYS, GRPC_TF_TENSORS, "
                     "GRPC_SERIALIZED_TF_TENSORS, GRPC_TF_EXAMPLES) or V2_BINARY, V2_JSON, COLUMNAR_JSON."),
        # Ranged types: a bad value is a usage error naming the flag (this wrapper runs outside reports_errors).
        click.option("--timeout", "request_timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
                     show_default=True, help="Seconds before an endpoint request is retried."),
        click.option("--max-payload-bytes", type=click.IntRange(min=1), default=1_500_000, show_default=True,
                     help="Largest request body; tiles or features are packed into requests under it."),
        click.option("--output-multiplier", type=click.FloatRange(min=1),
                     help="Expected response size / request size (>= 1)."),
        click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Concurrent endpoint requests."),
        click.option("--header", "headers", multiple=True, type=KeyValueType(":"), metavar="K:V",
                     help="Extra HTTP header (repeatable)."),
        click.option("--token-env", metavar="VAR", help="Environment variable holding a bearer token."),
    ]

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..remote.options import EndpointOptions

        token = None
        env = kwargs.pop("token_env")
        if env:
            token = os.environ.get(env)
            if not token:
                raise click.UsageError(f"--token-env {env}: that environment variable is not set")
        try:
            kwargs["endpoint_options"] = EndpointOptions(
                protocol=kwargs.pop("protocol"), payload_format=kwargs.pop("payload_format"),
                max_payload_bytes=kwargs.pop("max_payload_bytes"), output_multiplier=kwargs.pop("output_multiplier"),
                concurrency=kwargs.pop("concurrency"), headers=dict(kwargs.pop("headers") or ()), token=token,
                timeout=kwargs.pop("request_timeout"),
            )
        except TilecastError as exc:  # outside reports_errors: a usage error, not a traceback
            raise click.UsageError(str(exc)) from None
        return f(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def gdal_config_option(f: Callable) -> Callable:
    return click.option(
        "--config", "gdal_config", multiple=True, type=KeyValueType("="),
        help="GDAL configuration option KEY=VAL (repeatable), e.g. GDAL_CACHEMAX=512 or AWS_REGION=eu-west-1.",
    )(f)


def finite_bounds(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``--bounds``: four finite numbers (``inf`` and ``nan`` parse as floats, but bound nothing). ``--bounds-crs``
    alone would be silently ignored, so it is a usage error (a ``--bounds-crs`` given on the command line is parsed
    before a ``--bounds`` that is not, so this callback sees it)."""
    if value and not all(math.isfinite(v) for v in value):
        crs = " (or of --bounds-crs)" if any(p.name == "bounds_crs" for p in ctx.command.params) else ""
        raise click.BadParameter(f"{' '.join(map(str, value))}: give four finite numbers, left bottom right top, in "
                                 f"the CRS of the image{crs}")
    if not value and ctx.params.get("bounds_crs"):
        raise click.UsageError(f"--bounds-crs {ctx.params['bounds_crs']} says the CRS of --bounds, but no --bounds "
                               "was given; add --bounds L B R T (left bottom right top) or leave out --bounds-crs",
                               ctx)
    return value or None


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP: the terminal or SSH session closed), unwound like Ctrl-C: sinks abort and delete their
    temporary files on the way out."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


def _signum_of(interrupt: KeyboardInterrupt) -> int:
    return interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT


def reports_errors(f: Callable) -> Callable:
    """Turn tilecast errors, and the library errors a careless input can provoke (no memory, a full disk, a folder
    that cannot be written, GDAL refusing), into one clear line and a non-zero exit status, never a traceback.
    Ctrl-C, SIGTERM and SIGHUP interrupt the run at once (retry waits included) and exit 130 / 143 / 129. Run as a
    ``rio`` plugin, the command runs inside the GDAL environment rio's own options set up (:func:`host_gdal_env`)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = _catch_signals()
        try:
            with host_gdal_env():
                return f(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _exit_interrupted(_signum_of(exc))
        except Exception as exc:
            # An interrupt that surfaced as another error (a C function returning while the handler's exception was
            # pending is a SystemError; a clean-up failing as the interrupt unwinds): the user still interrupted.
            interrupt = next((e for e in _chain(exc) if isinstance(e, KeyboardInterrupt)), None)
            if interrupt is not None:
                _exit_interrupted(_signum_of(interrupt))
            if isinstance(exc, TilecastError):
                raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
            line = library_error(exc)
            if line is None:
                raise
            raise click.ClickException(line) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper


def host_gdal_env() -> contextlib.AbstractContextManager:
    """The ``rasterio.Env`` that ``rio`` builds from its options (``--aws-profile``, ``--aws-no-sign-requests``,
    ``--aws-requester-pays``, ``-vvv``) and leaves in ``ctx.obj["env"]`` for its commands to enter; nothing under
    ``tilecast`` itself."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.obj if ctx is not None else None
    env = obj.get("env") if isinstance(obj, dict) else None
    if env is None:
        return contextlib.nullcontext()
    import rasterio

    return env if isinstance(env, rasterio.Env) else contextlib.nullcontext()


EXTRA_OF_MODULE = {
    **dict.fromkeys(("starlette", "uvicorn", "httptools", "uvloop", "httpx", "prometheus_client", "grpc",
                     "google.auth"), "server"),
    **dict.fromkeys(("geopandas", "pyogrio", "pyarrow", "shapely"), "features"),
    **dict.fromkeys(("dask", "distributed", "bokeh", "zarr"), "dask"),
    **dict.fromkeys(("pystac", "stac_model", "jsonschema", "onnx"), "card"),
    **dict.fromkeys(("xarray", "rioxarray", "odc"), "xarray"),
    **dict.fromkeys(("rio_tiler", "morecantile", "PIL", "ipyleaflet"), "view"),
    "torch": "torch", "tensorflow": "tf", "keras": "tf", "matplotlib": "demo",
}
"""The extra (``pip install 'tilecast[EXTRA]'``) that installs each optional module, for a command that imports
one directly (the library's own imports go through :func:`tilecast._extras.require`, which says it already)."""


def library_error(exc: BaseException) -> str | None:
    """One line for an error that a library raised on a bad input or a hostile machine; None for anything else
    (a bug, which keeps its traceback)."""
    if isinstance(exc, ImportError) and exc.name:
        top = exc.name.split(".")[0]
        extra = EXTRA_OF_MODULE.get(exc.name, EXTRA_OF_MODULE.get(top))
        if extra:
            return (f"MissingExtraError: {top!r} is not installed; this command needs it. Install it with: "
                    f"pip install 'tilecast[{extra}]'")
        return None
    if isinstance(exc, MemoryError):
        return ("OutputError: not enough memory for this run; use a smaller --tile or --batch-size, a smaller region "
                "(--bounds), or a machine with more memory")
    messages = _messages(exc)
    text = " ".join(messages)
    errnos = {e.errno for e in _chain(exc) if isinstance(e, OSError) and e.errno}
    name = next((str(e.filename) for e in _chain(exc) if isinstance(e, OSError) and e.filename), "the output")
    full = errnos & {errno.ENOSPC, errno.EDQUOT, errno.EFBIG} or "No space left" in text or "disk space" in text
    if not full and _is_gdal(exc) and ("Write error" in text or "Write failed" in text):
        return (f"OutputError: GDAL could not write the output ({_short(text)}); the disk is probably full: free some "
                "space, predict a smaller region (--bounds), or write the output to another disk (-o)")
    if full:
        return (f"OutputError: no space left writing {name} ({_short(text)}); free some space, predict a smaller "
                "region (--bounds), or write the output to another disk (-o)")
    denied = errnos & {errno.EACCES, errno.EPERM, errno.EROFS}
    if denied:
        return (f"OutputError: cannot write {name}: {os.strerror(min(denied))}; choose an output folder you can write "
                "to (-o)")
    if _is_gdal(exc):
        return f"GDAL refused: {_short(text)}; check the inputs, the output folder and the free disk space"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 10:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _messages(exc: BaseException) -> list[str]:
    out = []
    for e in _chain(exc):
        text = str(e).strip()
        if text and "See previous exception" not in text and text not in out:
            out.append(text)
    return out


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_gdal(exc: BaseException) -> bool:
    """rasterio's errors and GDAL's CPLE_* errors (rasterio is a core dependency; imported only when needed)."""
    from rasterio.errors import RasterioError

    try:
        from rasterio._err import CPLE_BaseError
    except ImportError:  # pragma: no cover - rasterio's private module moved
        CPLE_BaseError = RasterioError
    return any(isinstance(e, (RasterioError, CPLE_BaseError)) for e in _chain(exc))


CAUGHT_SIGNALS = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))
"""What interrupts a run cleanly. SIGHUP (no such signal on Windows) would otherwise end it at once, leaving its
temporary files behind: a closed terminal or a dropped SSH session."""


def _catch_signals() -> dict[int, Any]:
    """Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt (:class:`Terminated`) in the main thread, after waking every
    endpoint retry wait, so the run unwinds, aborting its sinks, at once. Main thread only (Python's rule). A signal
    the process inherited as ignored (SIGINT in ``cmd &`` from a script: a background job of a shell without job
    control; any signal a supervisor set to SIG_IGN) stays ignored: the parent asked that it not end the run."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        # From a thread: the handler runs between two bytecodes of the main thread, which may hold an event's lock.
        threading.Thread(target=_interrupt_waits, name="tilecast-interrupt", daemon=True).start()
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)

    return {signum: signal.signal(signum, handler) for signum in CAUGHT_SIGNALS
            if signal.getsignal(signum) is not signal.SIG_IGN}


def _interrupt_waits() -> None:
    from ..remote.retry import interrupt_waits

    interrupt_waits()


EXIT_GRACE_S = 1.0
"""After an interrupt, how long threads still working (a request in flight) may take to finish before the process
exits without them."""


def _exit_interrupted(signum: int) -> None:
    """Exit now, with the status of a process that the signal ended. Threads that outlive the grace period (an HTTP
    request waiting for its answer) would hold the interpreter's exit for their whole timeout, so the process then
    ends by the signal itself, without joining them; every sink has already aborted (the exception unwound through
    the runner)."""
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        click.echo("Aborted!", err=True)
    deadline = time.monotonic() + EXIT_GRACE_S
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.current_thread()):
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(128 + signum)
