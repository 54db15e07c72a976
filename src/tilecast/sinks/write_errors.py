"""Write failures: which errors come from GDAL, and aborts that never raise over the run's own error.

The project's rule is that nothing is lost: a failed write into a partial output is a resumable
:class:`~tilecast.errors.OutputError` (:func:`~tilecast.sinks.geotiff.writing_errors` with ``resumable=True``; the
runners then keep the partial output for ``resume=True``), and keeping or removing a partial output never raises
over the run's own error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

__all__ = ["is_gdal_error", "never_raising"]

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
