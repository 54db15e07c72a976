"""``polygonize_raster``: polygons of an existing class raster, read strip by strip (no model involved)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import Progress, ProgressCallback
from .features import FeatureOutput, polygon_fields
from .polygonize import StripPolygonizer
from .write import VectorWriter, vector_driver

__all__ = ["polygonize_raster"]


def polygonize_raster(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    band: int = 1,
    overwrite: bool = False,
    vector_crs: Any = None,
    ignore: tuple[float, ...] = (),
    simplify: float | None = None,
    min_area: float | None = None,
    strip_rows: int = 1024,
    progress: bool | ProgressCallback | None = None,
) -> Path:
    """Polygonize ``band`` (1-based) of the class raster at ``path`` into the vector file ``out``.

    One polygon per 4-connected region of equal value, whatever the raster's size: strips of ``strip_rows`` rows
    are read in turn and their seams dissolved. Nodata, pixels a mask band masks (GDAL's internal mask, an alpha
    band) and the ``ignore`` values are not regions; class names come from the ``class_names`` tag tilecast writes.
    ``min_area`` and ``simplify`` are as in :func:`~tilecast.vectors.run.predict_vectors` (square metres for a
    geographic output CRS).
    """
    from pyproj import CRS
    from rasterio.enums import MaskFlags
    from rasterio.windows import Window

    from ..sinks.safety import refuse_overwriting_inputs
    from ..sources.rasterio_source import open_dataset, parse_crs

    vector_driver(out)  # an unknown extension, or CRS, fails before any reading
    refuse_overwriting_inputs(out, os.fspath(path))
    dst = CRS.from_user_input(parse_crs(vector_crs).to_wkt()) if vector_crs else None
    callback: ProgressCallback | None = Progress("polygonize", unit="rows") if progress is True else (progress or None)
    with open_dataset(path) as ds:
        if not 1 <= band <= ds.count:
            from ..errors import BandMismatchError

            raise BandMismatchError(f"{path} has {ds.count} band(s); band {band} does not exist")
        if np.dtype(ds.dtypes[band - 1]).kind not in "iub":
            from .errors import VectorFormatError

            raise VectorFormatError(f"band {band} of {path} is {ds.dtypes[band - 1]}: polygonize takes a class map "
                                    "(integer values); classify or round it first")
        if ds.crs is None or (ds.transform.is_identity and not ds.gcps[0]):  # as predict: nothing to place it by
            from ..errors import NotGeoreferencedError

            raise NotGeoreferencedError(f"{path} has no CRS or geotransform, so its polygons could not be placed on a "
                                        "map; georeference it first (e.g. gdal_translate -a_srs EPSG:XXXX -a_ullr ...)")
        src = CRS.from_user_input(ds.crs.to_wkt())
        dst = src if dst is None else dst
        names = _categories(ds, band)
        fields = polygon_fields(ds.dtypes[band - 1])
        writer = VectorWriter(out, dst, fields, overwrite=overwrite)
        try:
            output = FeatureOutput(writer, ds.transform, src, names, vector_crs=dst, simplify=simplify,
                                   min_area=min_area, class_dtype=fields["class_id"])
            poly = StripPolygonizer((*ignore, ds.nodatavals[band - 1]))
            # a mask band (GDAL's internal .msk or an alpha band) masks pixels no nodata value names
            masked = {MaskFlags.per_dataset, MaskFlags.alpha} & set(ds.mask_flag_enums[band - 1])
            for r in range(0, ds.height, strip_rows):
                h = min(strip_rows, ds.height - r)
                window = Window(0, r, ds.width, h)
                valid = ds.read_masks(band, window=window) > 0 if masked else None
                final = poly.add(r, ds.read(band, window=window), valid)
                output.polygons(final, last=False, held=poly.open)
                if callback is not None:
                    callback(r + h, ds.height, (r + h) * ds.width)
            output.polygons(poly.finish(), last=True)
        except BaseException:
            writer.abort()
            raise
    return writer.close()


def _categories(ds: Any, band: int) -> dict[int, str]:
    """The band's class names: tilecast's ``class_names`` tag, else GDAL's category names or attribute table."""
    from ..sources.categories import read_classes

    return read_classes(ds).get(band, {})
