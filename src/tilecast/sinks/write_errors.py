"""Write failures of resumable outputs: what the user sees when the disk fills or the output folder goes mid-run.

The project's rule is that nothing is lost: a failed write into a partial output is a resumable
:class:`~tilecast.errors.OutputError` (the runners then keep the partial output for ``resume=True``), and keeping or
removing a partial output never raises over the run's own error.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from ..errors import OutputError, TilecastError

__all__ = ["is_gdal_error", "never_raising", "resumable_writes"]

log = logging.getLogger("tilecast")


def is_gdal_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from GDAL through rasterio: a rasterio error, a ``CPLE_*`` error, or one with a
    ``CPLE_*`` error in its chain (rasterio raises ``TypeError`` for a missing file opened ``"r+"``)."""
    link: BaseException | None = exc
    for _ in range(8):
        if link is None:
            return False
        if isinstance(link, (RasterioError, CPLE_BaseError)):
            return True
        link = link.__cause__ or link.__context__
    return False


@contextlib.contextmanager
def resumable_writes(output: Path, doing: str) -> Iterator[None]:
    """A failed write into a resumable output's partial files (a full disk, a folder removed or made read-only) as
    one :class:`~tilecast.errors.OutputError` that names the output and the fix, marked ``resumable``.

    Nothing is lost: the runners keep the partial output and manifest for a resumable error (see
    :meth:`~tilecast.sinks.chunked.PartialGeoTIFFSink.abort`), because the fix (free some space, bring the folder
    back) is followed by ``resume=True``, which must not recompute the finished chunks. Where the folder itself is
    gone there is nothing left to keep; that failure is noted on this error.
    """
    try:
        yield
    except TilecastError:
        raise
    except (RasterioError, CPLE_BaseError, OSError, TypeError) as exc:
        if isinstance(exc, TypeError) and not is_gdal_error(exc):
            raise
        text = str(exc).strip() or type(exc).__name__
        error = OutputError(
            f"cannot {doing} {output}: {text}. Make sure {output.parent} exists, is writable and has room for the "
            "output (free some space, or choose another output folder), then run again with resume=True to "
            "continue from the chunks already written"
        )
        error.resumable = True  # nothing in the run is wrong: keep what it wrote
        raise error from None


def never_raising(keep: bool, work: Callable[[], None]) -> None:
    """Run an abort's ``work`` without raising: it runs while the run's own error is handled, and that error is the
    one the user must see; a failure here (e.g. the output folder is gone) becomes a note on it, or a log line."""
    handled = sys.exc_info()[1]
    try:
        work()
    except Exception as failure:
        text = (f"tilecast could not {'keep' if keep else 'remove'} the partial output either: "
                f"{type(failure).__name__}: {failure}")
        if handled is not None:
            handled.add_note(text)
        else:
            log.warning(text)
