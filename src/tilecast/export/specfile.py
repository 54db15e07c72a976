"""The sidecar ``*.spec.json`` every export writes beside its files (read back by :mod:`tilecast.training`)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import publish

__all__ = ["SPEC_VERSION", "make_spec", "write_spec"]

SPEC_VERSION = 1


def make_spec(
    features: Mapping[str, Sequence[int]],
    files: Mapping[str, Sequence[str | os.PathLike]] | Sequence[str | os.PathLike],
    compressed: bool = True,
    kind: str = "example",
    sequence_features: Mapping[str, Sequence[int]] | None = None,
    dtypes: Mapping[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The sidecar's content. ``features`` maps each feature to its shape (``[1]`` for a number, ``[H, W]`` for a
    patch, ``[H, W, D]`` for an array band); for ``kind="sequence_example"`` they are the context features and
    ``sequence_features`` the per-step ones. ``files`` are paths relative to the sidecar, per split."""
    dtypes = dict(dtypes or {})
    spec: dict[str, Any] = {
        "tilecast_spec": SPEC_VERSION,
        "kind": kind,
        "compression": "GZIP" if compressed else "",
        "features": {k: {"shape": [int(s) for s in v], "dtype": dtypes.get(k, "float32")} for k, v in features.items()},
    }
    if sequence_features is not None:
        spec["sequence_features"] = {
            k: {"shape": [int(s) for s in v], "dtype": dtypes.get(k, "float32")} for k, v in sequence_features.items()
        }
    spec["files"] = {k: [str(f) for f in v] for k, v in files.items()} if isinstance(files, Mapping) \
        else {"all": [str(f) for f in files]}
    spec.update(extra)
    return spec


def write_spec(path: str | os.PathLike, spec: Mapping[str, Any]) -> Path:
    """Write the sidecar atomically (temp file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    publish(tmp, path)
    return path
