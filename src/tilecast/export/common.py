"""What every export shares: the result it returns, its progress report and the names of its shards."""

from __future__ import annotations

import contextlib
import glob
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._files import current_umask, publish
from ..progress import Progress

__all__ = [
    "ExportResult", "chunk_prefix", "current_umask", "progress_callback", "publish", "remove_stale", "shard_files",
]


@dataclass
class ExportResult:
    """What an export wrote."""

    files: dict[str, list[Path]]
    """Output files per split (``"all"`` when there are no splits), in record order."""
    count: int
    counts: dict[str, int] = field(default_factory=dict)
    spec: Path | None = None
    mixer: Path | None = None
    skipped: int = 0
    """Samples (masked pixels) or patches (over ``masked_threshold``) left out."""


def progress_callback(progress: bool | Callable | None, label: str, unit: str) -> Callable | None:
    """``progress=True`` is the usual line on stderr, counting ``unit`` (samples, patches); a callable is called as
    it is; anything else is silence."""
    if progress is True:
        return Progress(label, unit=unit)
    return progress or None


def shard_files(folder: Path, prefix: str) -> list[Path]:
    """The shards of an earlier export with ``prefix``: ``{prefix}-NNNNN`` (local) or ``{prefix}-NNNNN-NNNNN``
    (one group per Dask task)."""
    pattern = re.compile(re.escape(prefix) + r"-\d{5,}(-\d{5,})?\.tfrecord(\.gz)?")
    return sorted(p for p in Path(folder).glob(f"{glob.escape(prefix)}-*.tfrecord*") if pattern.fullmatch(p.name))


def chunk_prefix(prefix: str, index: int, width: int = 5) -> str:
    """The shard-name prefix of Dask task ``index``: fixed width, so lexicographic order is task order."""
    return f"{prefix}-{index:0{width}d}"


def remove_stale(before: Iterable[Path], published: Sequence[Path]) -> None:
    """``overwrite=True``: shards of the earlier export that the new one did not replace."""
    for old in set(before) - set(published):
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


