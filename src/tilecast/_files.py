"""Publishing finished files: rename a temporary file into place with the mode the user's umask gives new files."""

from __future__ import annotations

import contextlib
import os

__all__ = ["current_umask", "publish"]


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename a finished temporary file to its final name with the mode a plain ``open`` would have given it:
    ``tempfile.mkstemp`` creates files 0600, and exports should be as readable as the rasters beside them."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, final)
