"""The class names a categorical raster carries: GDAL category names and raster attribute tables (RATs).

rasterio exposes neither, so GDAL serializes the dataset as a VRT in memory (which copies each band's category
names and default RAT, from any driver: a PAM ``.aux.xml`` sidecar, an ERDAS ``.img``, an ENVI header, a VRT) and
the names are read from its XML. No pixel is read.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from typing import Any

__all__ = ["read_classes"]

_NAME_USAGE, _MIN_USAGE, _MAX_USAGE, _MINMAX_USAGE = "2", "3", "4", "5"
"""GDAL's GDALRATFieldUsage codes, as the RAT's XML writes them."""
_STRING_TYPE = "2"
"""GDALRATFieldType GFT_String."""


def read_classes(ds: Any) -> dict[int, dict[int, str]]:
    """``{band: {pixel value: class name}}`` for the bands of an open rasterio dataset that name their classes:
    tilecast's ``class_names`` band tag (negative values included), else GDAL's category names, else the name
    column of the band's RAT. Bands without names are left out; a dataset GDAL cannot describe gives ``{}``."""
    out = {}
    for band in range(1, ds.count + 1):
        names = _tag_classes(ds.tags(band).get("class_names"))
        if names:
            out[band] = names
    if len(out) == ds.count:
        return out
    for band, names in _gdal_classes(ds).items():
        out.setdefault(band, names)
    return dict(sorted(out.items()))


def _tag_classes(text: str | None) -> dict[int, str]:
    """The ``{"value": "name"}`` JSON tilecast writes on each class band of its GeoTIFFs."""
    if not text:
        return {}
    try:
        return {int(k): str(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError):
        return {}


def _gdal_classes(ds: Any) -> dict[int, dict[int, str]]:
    import rasterio.shutil
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    try:
        from rasterio._err import CPLE_BaseError
    except ImportError:  # pragma: no cover - rasterio's private module moved
        CPLE_BaseError = RasterioError
    try:
        with MemoryFile(ext=".vrt") as mem:
            rasterio.shutil.copy(ds, mem.name, driver="VRT")
            root = ET.fromstring(mem.read())
    except (RasterioError, CPLE_BaseError, ET.ParseError, OSError):
        return {}
    out = {}
    for elem in root.iter("VRTRasterBand"):
        names = _category_names(elem.find("CategoryNames"))
        if not names:
            names = _rat_names(elem.find("GDALRasterAttributeTable"))
        if names:
            out[int(elem.get("band", "0"))] = names
    return out


def _category_names(elem: ET.Element | None) -> dict[int, str]:
    """GDAL's CategoryNames: entry ``i`` names pixel value ``i``; empty entries name nothing."""
    if elem is None:
        return {}
    return {i: c.text for i, c in enumerate(elem.findall("Category")) if c.text and c.text.strip()}


def _rat_names(elem: ET.Element | None) -> dict[int, str]:
    """A RAT's names by pixel value: the Name column (else the first text column) against the MinMax column (else
    equal Min and Max columns, else a column called Value, else the table's linear bins ``Row0Min + i * BinSize``)."""
    if elem is None:
        return {}
    fields = {int(f.get("index", "-1")): (f.findtext("Name") or "", f.findtext("Type"), f.findtext("Usage"))
              for f in elem.findall("FieldDefn")}

    def column(test) -> int | None:
        return next((i for i, f in sorted(fields.items()) if test(*f)), None)

    name_col = column(lambda n, t, u: u == _NAME_USAGE)
    if name_col is None:
        name_col = column(lambda n, t, u: t == _STRING_TYPE)
    value_col = column(lambda n, t, u: u == _MINMAX_USAGE)
    min_col, max_col = column(lambda n, t, u: u == _MIN_USAGE), column(lambda n, t, u: u == _MAX_USAGE)
    if value_col is None and (min_col is None or max_col is None):
        value_col = column(lambda n, t, u: n.strip().lower() == "value" and t != _STRING_TYPE)
    if name_col is None:
        return {}
    out = {}
    for row in elem.findall("Row"):
        cells = [f.text or "" for f in row.findall("F")]
        name = cells[name_col].strip() if name_col < len(cells) else ""
        if value_col is not None:
            value = _integer(cells[value_col] if value_col < len(cells) else "")
        elif min_col is not None and max_col is not None:  # a class is a single value, not a range
            low, high = (_integer(cells[c] if c < len(cells) else "") for c in (min_col, max_col))
            value = low if low == high else None
        else:
            row_i = int(row.get("index", "-1"))
            value = _integer(str(float(elem.get("Row0Min", "nan")) + row_i * float(elem.get("BinSize", "nan"))))
        if name and value is not None:
            out[value] = name
    return out


def _integer(text: str) -> int | None:
    """A pixel value a class can have: an integer, also when written as ``3.0``."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None
