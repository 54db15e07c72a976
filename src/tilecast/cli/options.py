"""Options and parameter types shared by the subcommands, and the error handling they all use."""

from __future__ import annotations

import functools
import os
import re
import signal
import threading
from collections.abc import Callable
from typing import Any

import click

from ..errors import TilecastError


class SizeType(click.ParamType):
    """``256``, ``256,128`` or ``256x128``: width then height."""

    name = "W[,H]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = [p for p in re.split(r"[,x ]", str(value)) if p]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r} is not a size; use 256 or 256,128 (width,height)", param, ctx)
        if len(nums) == 1:
            return nums[0], nums[0]
        if len(nums) == 2:
            return nums[0], nums[1]
        self.fail(f"{value!r} is not a size; use 256 or 256,128 (width,height)", param, ctx)


class KeyValueType(click.ParamType):
    """``KEY=VALUE`` or ``KEY:VALUE``."""

    name = "KEY=VAL"

    def __init__(self, sep: str = "=") -> None:
        self.sep = sep

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition(self.sep)
        if not sep or not key:
            self.fail(f"{value!r}: use KEY{self.sep}VALUE", param, ctx)
        return key, val


SIZE = SizeType()


def csv_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def quiet_option(f: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")(f)


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
        click.option("--scheduler", metavar="ADDR", help="Dask scheduler address (default: a LocalCluster)."),
        click.option("--workers", type=int, help="Worker processes of the LocalCluster started for --engine dask."),
        click.option("--performance-report", type=click.Path(dir_okay=False),
                     help="Write a Dask performance report (HTML)."),
        *(_TASK_OPTIONS[name] for name in task_options),
    ]

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
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
        click.option("--timeout", "request_timeout", type=float, default=60.0, show_default=True,
                     help="Seconds before an endpoint request is retried."),
        click.option("--max-payload-bytes", type=int, default=1_500_000, show_default=True,
                     help="Largest request body; tiles or features are packed into requests under it."),
        click.option("--output-multiplier", type=float, help="Expected response size / request size (>= 1)."),
        click.option("--concurrency", type=int, default=4, show_default=True, help="Concurrent endpoint requests."),
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
        kwargs["endpoint_options"] = EndpointOptions(
            protocol=kwargs.pop("protocol"), payload_format=kwargs.pop("payload_format"),
            max_payload_bytes=kwargs.pop("max_payload_bytes"), output_multiplier=kwargs.pop("output_multiplier"),
            concurrency=kwargs.pop("concurrency"), headers=dict(kwargs.pop("headers") or ()), token=token,
            timeout=kwargs.pop("request_timeout"),
        )
        return f(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def gdal_config_option(f: Callable) -> Callable:
    return click.option(
        "--config", "gdal_config", multiple=True, type=KeyValueType("="),
        help="GDAL configuration option KEY=VAL (repeatable), e.g. GDAL_CACHEMAX=512 or AWS_REGION=eu-west-1.",
    )(f)


def reports_errors(f: Callable) -> Callable:
    """Turn tilecast errors into one clear line and exit status 1, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = _exit_on_sigterm()
        try:
            return f(*args, **kwargs)
        except TilecastError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _exit_on_sigterm() -> Any:
    """Make SIGTERM unwind like Ctrl-C, so sinks delete their temporary files (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)
