"""STAC items as a mosaic: each item is one member, its assets (one per band, or one multi-band asset) stacked.

Accepts an Item, ItemCollection or FeatureCollection as a dict, a ``.json`` path or URL (or a list or glob of item
files), or pystac objects.
``bands`` may name assets (``["B04", "B08"]``): those assets become the bands, in that order. Otherwise an item's
data assets (role ``data``, or a GeoTIFF/COG media type) are stacked, or its one data asset is used, and ``bands``
selects among the bands. An asset of n bands gives bands ``KEY_1``..``KEY_n``. Relative hrefs follow the item's
self link (else the JSON's location); ``file://`` URLs are read as local paths.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

from .._extras import require
from ..errors import InputError, SourceNotFoundError
from .mosaic import MosaicSource, glob_files, is_pattern
from .rasterio_source import open_dataset

__all__ = ["is_stac", "stac_items", "stac_source"]

_IMAGE_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "application/x-geotiff", "image/jp2")


def is_stac(obj: Any) -> bool:
    if isinstance(obj, Mapping):
        return obj.get("type") in ("Feature", "FeatureCollection") and ("assets" in obj or "features" in obj)
    if isinstance(obj, (str, os.PathLike)):
        return str(obj).lower().endswith((".json", ".geojson"))
    module = type(obj).__module__
    if module.startswith("pystac"):
        return True
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(o, (str, os.PathLike)) for o in obj):
        return all(is_stac(o) for o in obj)  # item files, e.g. tilecast predict items/*/*.json
    return isinstance(obj, (list, tuple)) and bool(obj) and all(type(o).__module__.startswith("pystac") or (
        isinstance(o, Mapping) and o.get("type") == "Feature") for o in obj)


def _load(obj: Any) -> list[tuple[dict[str, Any], str | None]]:
    """Item dicts, each with the location its relative hrefs are relative to (the file it came from)."""
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(o, (str, os.PathLike)) for o in obj):
        return [pair for path in obj for pair in _load(path)]
    base = None
    if isinstance(obj, (str, os.PathLike)):
        base = _local_path(str(obj))
        if "://" not in base and is_pattern(base):
            paths = glob_files(base)
            if not paths:
                raise SourceNotFoundError(f"no STAC file matches {base!r}; check the pattern and the folder")
            return _load(paths)
        obj = _read_json(base)
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, (list, tuple)):
        return [(o.to_dict() if hasattr(o, "to_dict") else dict(o), base) for o in obj]
    if not isinstance(obj, Mapping):
        raise InputError(f"not a STAC Item or ItemCollection: {type(obj).__name__}")
    if obj.get("type") == "FeatureCollection":
        items = list(obj.get("features", []))
    elif obj.get("type") == "Feature":
        items = [dict(obj)]
    elif obj.get("type") in ("Collection", "Catalog"):
        raise InputError(
            f"{base or 'the JSON'} is a STAC {obj['type']}, which lists its items by links; pass the items: their "
            ".json files (e.g. 'items/*/*.json'), or an ItemCollection from a search (pystac-client)"
        )
    else:
        raise InputError("the JSON is not a STAC Item or ItemCollection (type must be Feature or FeatureCollection)")
    if not items:
        raise InputError("the STAC collection has no items; search again or widen the query")
    return [(item, base) for item in items]


def _read_json(location: str) -> Any:
    if location.startswith(("http://", "https://")):
        return require("pystac", "dask").StacIO.default().read_json(location)
    if not os.path.exists(location):
        raise SourceNotFoundError(f"STAC file not found: {location}; check the path")
    try:
        with open(location) as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{location} is not valid JSON ({exc}); pass a STAC Item or ItemCollection") from None


def _href(item: Mapping[str, Any], asset: Mapping[str, Any], base: str | None) -> str:
    """The asset's href as GDAL opens it: relative hrefs resolved against the item's self link (or the JSON's
    location), ``file://`` URLs as local paths (GDAL does not open those URLs)."""
    href = asset["href"]
    if _is_absolute(href):
        return _gdal_path(_local_path(href))
    self_link = next((link["href"] for link in item.get("links", []) if link.get("rel") == "self"), None)
    if self_link and base and not _is_absolute(self_link):
        self_link = _join(base, self_link)
    root = self_link or base
    return _join(root, href) if root else href


def _join(root: str, href: str) -> str:
    """``href`` relative to the document at ``root`` (a URL or a local path)."""
    if "://" in root and not root.startswith("file:"):
        return _gdal_path(urljoin(root, href))
    return os.path.normpath(os.path.join(os.path.dirname(_local_path(root)), href))


def _is_absolute(href: str) -> bool:
    return "://" in href or href.startswith(("/", "file:"))


def _local_path(href: str) -> str:
    """A ``file://`` URL as a local path (escapes such as ``%20`` decoded); anything else unchanged."""
    if not href.startswith("file:"):
        return href
    from urllib.request import url2pathname  # stdlib, but it imports http and ssl: only for file URLs

    parts = urlsplit(href)
    if parts.netloc not in ("", "localhost"):
        raise InputError(f"{href}: file URLs on another host are not supported; give a local path or an http URL")
    return url2pathname(parts.path)  # unquoted; on Windows also /C:/x -> C:\\x


def _gdal_path(href: str) -> str:
    """GDAL's spelling of cloud URLs (``s3://b/k`` -> ``/vsis3/b/k``); http(s) stays as is (GDAL reads it)."""
    for scheme, vsi in (("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/")):
        if href.startswith(scheme):
            return vsi + href[len(scheme):]
    return href


def _data_assets(item: Mapping[str, Any]) -> list[str]:
    assets = item.get("assets", {})
    keys = [k for k, a in assets.items() if "data" in (a.get("roles") or [])]
    if not keys:
        keys = [k for k, a in assets.items() if str(a.get("type", "")).split(";")[0] in _IMAGE_TYPES]
    if not keys:
        keys = [k for k, a in assets.items()
                if posixpath.splitext(urlsplit(a.get("href", "")).path)[1].lower() in (".tif", ".tiff")]
    return keys


def stac_items(obj: Any) -> list[dict[str, Any]]:
    return [item for item, _ in _load(obj)]


def stac_source(obj: Any, bands: Sequence[str | int] | None = None, **kwargs: Any) -> MosaicSource:
    """A :class:`MosaicSource` over STAC items (see the module docstring for how assets become bands)."""
    pairs = _load(obj)
    items = [item for item, _ in pairs]
    first_assets = items[0].get("assets", {})
    # Asset names, even where the first item lacks one (then the error names it, not an unknown band of a file).
    every_asset = {k for item in items for k in item.get("assets", {})}
    if bands and all(isinstance(b, str) and b in every_asset for b in bands):
        keys, selection = list(bands), None
    else:
        keys, selection = _data_assets(items[0]), bands
    if not keys:
        raise InputError(
            f"STAC item {items[0].get('id')!r} has no raster data asset; name the assets to use as bands "
            f"(bands=[...]) among {sorted(first_assets)}"
        )
    if len(keys) > 1 or (selection is None and bands):  # one asset per band (or named ones): stack them
        members = [_asset_files(item, keys, base) for item, base in pairs]
        return MosaicSource(members, selection, band_names=_band_names(keys, members[0]), **kwargs)
    members = []
    for item, base in pairs:
        ks = _data_assets(item)
        if not ks:
            raise InputError(f"STAC item {item.get('id')!r} has no raster data asset")
        members.append([_href(item, item["assets"][ks[0]], base)])
    return MosaicSource(members, bands, **kwargs)


def _asset_files(item: Mapping[str, Any], keys: Sequence[str], base: str | None) -> list[str]:
    missing = [k for k in keys if k not in item.get("assets", {})]
    if missing:
        raise InputError(f"STAC item {item.get('id')!r} has no asset(s) {missing}; choose assets that all items have")
    return [_href(item, item["assets"][k], base) for k in keys]


def _band_names(keys: Sequence[str], files: Sequence[str]) -> list[str]:
    """A band name per band of the assets: the asset's key, or ``KEY_1``.. ``KEY_n`` for an asset of n bands."""
    names = []
    for key, path in zip(keys, files, strict=True):
        with open_dataset(path) as ds:
            count = ds.count
        names += [key] if count == 1 else [f"{key}_{b}" for b in range(1, count + 1)]
    return names
