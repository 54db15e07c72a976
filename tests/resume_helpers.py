"""What the resume tests share: a counting model, an interrupt after some tiles, and reading a result back."""

from __future__ import annotations

import numpy as np
import rasterio


class Counter:
    """A model that doubles its input and counts the tiles it sees."""

    def __init__(self) -> None:
        self.tiles = 0

    def __call__(self, x):
        self.tiles += x.shape[0]
        return x * 2


def interrupt_after(tiles: int):
    """A progress callback that stops the run (as Ctrl-C would) once ``tiles`` tiles are done."""

    def progress(done, total, pixels):
        if done >= tiles:
            raise KeyboardInterrupt

    return progress


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()
