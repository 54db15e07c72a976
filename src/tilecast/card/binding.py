"""The card bound to a model: it maps the user's bands to the card's and applies the card's GSD policy.

A :class:`~tilecast.model.Model` holds one (``model.card``) when it was loaded with a card; the card's value scaling
and ``argmax`` wrap the runtime (:class:`~tilecast.runtimes.scaled.ScaledRuntime`) when the model is opened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BandMismatchError, InputError
from ..spec import ModelSpec
from .html import card_html
from .params import CardParams
from .schema import Card

__all__ = ["CardBinding", "match_bands"]


@dataclass(frozen=True)
class CardBinding:
    """A card and what it means (:class:`~tilecast.card.CardParams`), plus whether the caller chose the bands."""

    card: Card
    params: CardParams
    explicit_bands: bool = False
    """``bands=`` (``--bands``) was given when the model was loaded: the card does not match bands by name then."""

    @property
    def source(self) -> str:
        """Where the card came from (see :attr:`Card.source`)."""
        return self.card.source

    @property
    def bands(self) -> list[str]:
        return self.params.bands

    def _repr_html_(self) -> str:
        return card_html(self.card)

    def resolve_bands(self, image: Any) -> list[int] | None:
        """1-based band indexes of ``image`` for the card's bands (None: let the source decide)."""
        if not self.params.bands:
            return None
        names, common = raster_band_names(image)
        if names is None:
            return None
        return match_bands(self.params.bands, names, self.params.common_names, common)

    def select_bands(self, image: Any, bands: Sequence[str | int] | None) -> Sequence[str | int] | None:
        """The bands to read: the caller's, else the card's matched by name; one per card band either way."""
        if bands is None and not self.explicit_bands:
            bands = self.resolve_bands(image)
        card_bands = self.params.bands
        if bands is not None and card_bands and len(bands) != len(card_bands):
            raise BandMismatchError(
                f"{len(bands)} bands selected ({list(bands)}) but the model card lists {len(card_bands)}: "
                f"{card_bands}; select one raster band per card band"
            )
        return bands

    def input_band_names(self, band_names: Sequence[str], layout: str | None) -> list[str]:
        """Earth Engine's per-band layout feeds each band to the input named after it: the selected bands (one per
        card band, in the card's order, however they were matched: description, ``eo:common_name`` or ``bands=``)
        take the names of the card's inputs (``name_0``, ``name_1``... for an array input)."""
        names = list(band_names)
        if layout != "bands" or len(names) != len(self.params.bands):
            return names
        renamed = []
        for inp in self.card.inputs:
            bands = inp.get("bands", [])
            renamed.extend([inp["name"]] if len(bands) == 1 else [f"{inp['name']}_{j}" for j in range(len(bands))])
        return renamed if len(renamed) == len(names) else names

    def grid_changes(self, image: Any, spec: ModelSpec) -> dict[str, Any]:
        """The card's GSD policy: within its tolerance the image's own grid is used (the spec's ``crs`` and
        ``resolution`` are dropped); otherwise each window is warped (``fix_input_proj``) or the image refused."""
        if spec.resolution is None:
            return {}
        grid = raster_grid(image)
        if grid is None:
            return {}
        if self.source == "deepness" and spec.crs is None and getattr(grid[0], "is_geographic", False):
            # Deepness/GeoDeep give the GSD in cm/px: in a geographic CRS it would be read as degrees.
            raise InputError(
                f"the model's GSD {spec.resolution} is in metres (Deepness/GeoDeep resolution), but the image is in "
                f"the geographic CRS {grid[0]}; reproject it to a projected CRS in metres (e.g. its UTM zone), or "
                "give crs= (--crs) with the model"
            )
        tol = self.params.gsd_tolerance
        same_crs = spec.crs is None or same_crs_as(spec.crs, grid[0])
        rel = max(abs(a - b) / b for a, b in zip(grid[1], spec.resolution, strict=True))
        if same_crs and rel <= tol:
            return {"resolution": None, "crs": None}
        if spec.fix_input_proj:
            return {}
        raise InputError(
            f"the image's pixel size {tuple(round(r, 6) for r in grid[1])} differs from the model's GSD "
            f"{spec.resolution} by {rel:.1%} (tolerance {tol:.1%}); resample it, or let tilecast warp each window "
            "with --fix-input-proj (fix_input_proj=True)"
        )


def same_crs_as(crs: str, other: Any) -> bool:
    from ..sources import parse_crs

    try:
        return parse_crs(crs) == other
    except Exception:
        return False


def raster_band_names(image: Any) -> tuple[list[str] | None, list[str | None] | None]:
    """Band descriptions (``b1``... when unnamed) and per-band ``eo:common_name``/``common_name`` tags.

    A file rasterio opens is read for its tags too; anything else (a glob, STAC items, xarray objects) is named by
    tilecast's own source for it, the names a prediction uses (an xarray object's ``long_name``, not its band
    coordinate)."""
    if isinstance(image, (str, os.PathLike)) and not _is_many(image):
        import rasterio

        try:
            with rasterio.open(image) as ds:
                return names_from_dataset(ds)
        except rasterio.errors.RasterioIOError:
            pass
    if hasattr(image, "descriptions") and hasattr(image, "tags"):  # an open rasterio dataset
        return names_from_dataset(image)
    source = _source_of(image)
    return (list(source.band_names), None) if source is not None else (None, None)


def _is_many(image: str | os.PathLike) -> bool:
    """A glob or a STAC file: many rasters, which only tilecast's mosaic source reads as one."""
    text = str(image)
    return any(c in text for c in "*?[") or text.lower().endswith(".json")


def _source_of(image: Any) -> Any:
    """tilecast's source for ``image`` (read lazily), or None when it is not something tilecast reads."""
    from ..errors import TilecastError
    from ..sources import open_source

    try:
        return open_source(image)
    except (TilecastError, TypeError, ValueError, OSError):
        return None


def names_from_dataset(ds: Any) -> tuple[list[str], list[str | None]]:
    names = [d or f"b{i + 1}" for i, d in enumerate(ds.descriptions)]
    common = []
    for i in range(ds.count):
        tags = ds.tags(i + 1)
        # rasterio splits GDAL's "eo:common_name=red" at the colon: {"eo": "common_name=red"}
        eo = tags.get("eo", "")
        split = eo.partition("=")[2] if eo.startswith("common_name=") else None
        common.append(tags.get("eo:common_name") or split or tags.get("common_name") or tags.get("COMMON_NAME"))
    return names, common


def raster_grid(image: Any) -> tuple[Any, tuple[float, float]] | None:
    """The CRS and pixel size of the data itself, for the card's GSD check (a mosaic's or STAC item's too)."""
    if isinstance(image, (str, os.PathLike)) and not _is_many(image):
        import rasterio

        try:
            with rasterio.open(image) as ds:
                return ds.crs, (abs(ds.transform.a), abs(ds.transform.e))
        except rasterio.errors.RasterioIOError:
            pass
    if hasattr(image, "crs") and hasattr(image, "transform") and not hasattr(image, "dims"):
        return image.crs, (abs(image.transform.a), abs(image.transform.e))
    source = _source_of(image)
    if source is None:
        return None
    from ..sources.base import native_grid

    grid = native_grid(source)
    return grid.crs, (abs(grid.transform.a), abs(grid.transform.e))


def match_bands(
    card_bands: Sequence[str],
    raster_bands: Sequence[str],
    common_names: Mapping[str, str] | None = None,
    raster_common: Sequence[str | None] | None = None,
) -> list[int]:
    """1-based raster band indexes for the card's bands, matched by description, then by ``eo:common_name``.

    A raster without band descriptions (``b1``, ``b2``...) that has exactly the card's band count is taken in order,
    as Earth Engine does. Anything else that does not match raises :class:`BandMismatchError` listing both sides.
    """
    common_names = dict(common_names or {})
    raster_common = list(raster_common or [None] * len(raster_bands))
    lower = [b.lower() for b in raster_bands]
    rc_lower = [(c or "").lower() for c in raster_common]
    anonymous = all(b == f"b{i + 1}" for i, b in enumerate(raster_bands))
    if anonymous and len(raster_bands) == len(card_bands):
        return list(range(1, len(card_bands) + 1))
    out, missing = [], []
    for band in card_bands:
        cn = (common_names.get(band) or "").lower()
        idx = None
        for cand in (band, band.lower()):
            if cand in raster_bands:
                idx = list(raster_bands).index(cand)
                break
            if cand in lower:
                idx = lower.index(cand)
                break
        if idx is None and cn:
            if cn in lower:
                idx = lower.index(cn)
            elif cn in rc_lower:
                idx = rc_lower.index(cn)
        if idx is None and band.lower() in rc_lower:
            idx = rc_lower.index(band.lower())
        if idx is None:
            missing.append(band + (f" ({common_names[band]})" if band in common_names else ""))
        else:
            out.append(idx + 1)
    if missing:
        have = [f"{b}" + (f" ({c})" if c else "") for b, c in zip(raster_bands, raster_common, strict=True)]
        raise BandMismatchError(
            f"the model needs bands {[b + (f' ({common_names[b]})' if b in common_names else '') for b in card_bands]}"
            f" but the raster has {have}; missing {missing}. Name the raster bands (band descriptions or "
            "eo:common_name tags), or map them explicitly with --bands 3,2,1"
        )
    return out
