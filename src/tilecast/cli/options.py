"""Options and parameter types shared by the subcommands, and the error handling they all use."""

from __future__ import annotations

import functools
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


def endpoint_request_options(f: Callable) -> Callable:
    """How requests to a hosted model are sent: the options every command with ``--endpoint`` shares."""
    for option in reversed((
        click.option("--output-multiplier", type=float, help="Expected response size / request size (>= 1)."),
        click.option("--concurrency", type=int, default=4, show_default=True, help="Concurrent endpoint requests."),
        click.option("--header", "headers", multiple=True, type=KeyValueType(":"), metavar="K:V",
                     help="Extra HTTP header (repeatable)."),
        click.option("--token-env", metavar="VAR", help="Environment variable holding a bearer token."),
    )):
        f = option(f)
    return f


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
