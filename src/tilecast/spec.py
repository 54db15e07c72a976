"""What a model needs besides its weights: Earth Engine's ``fromVertexAi`` parameters, validated once.

The spec is plain data. It knows nothing about rasters or runtimes, so a model card (or a server) can carry it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from difflib import get_close_matches
from typing import Any, Literal, TypeVar

import numpy as np
from rasterio.enums import Resampling

from .errors import SpecError
from .plan import OverlapMode, TileGeometry, parse_resolution, parse_size

__all__ = [
    "DEFAULT_PALETTE",
    "PALETTES",
    "PARAMETERS",
    "Layout",
    "ModelSpec",
    "OutputBand",
    "categories_xml",
    "category_names",
    "palette_colors",
    "pam_categories_xml",
    "parse_color",
    "parse_colors",
    "parse_dtype",
    "parse_output_bands",
    "parse_resolution",
    "parse_size",
    "refuse_unknown",
    "replace_options",
    "split_names",
    "with_default_colors",
]

_Options = TypeVar("_Options")


def replace_options(base: _Options, options: Mapping[str, Any], message: str, *, none_keeps: bool = False
                    ) -> _Options:
    """The options dataclass ``base`` with ``options`` replaced (with ``none_keeps``, a None keeps ``base``'s value).
    A keyword that is not one of its fields is a :class:`SpecError` rather than a bare TypeError: ``message`` with
    ``{unknown}`` and ``{known}`` (the sorted unknown names, every field's name) filled in."""
    known = [f.name for f in fields(base)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SpecError(message.format(unknown=unknown, known=known))
    return replace(base, **{k: v for k, v in options.items() if v is not None or not none_keeps})  # type: ignore


Layout = Literal["bands", "NHWC", "NCHW", "pixels"]
Blend = Literal["crop", "cosine", "hann"]
Padding = Literal["zero", "reflect"]
LAYOUTS = ("bands", "NHWC", "NCHW", "pixels")
BLENDS = ("crop", "cosine", "hann")
PADDINGS = ("zero", "reflect")
RESAMPLINGS = tuple(r.name for r in Resampling)  # GDAL's names, as rasterio.enums.Resampling spells them

_EE_PRECISION = {"float": "float32", "double": "float64"}


def parse_dtype(value: Any, what: str = "dtype") -> np.dtype:
    """A numpy dtype from ``"uint8"``, ``np.float32`` or an Earth Engine PixelType dict."""
    if isinstance(value, Mapping):  # {"type": "PixelType", "precision": "int", "min": 0, "max": 255}
        precision, lo, hi = value.get("precision", "float"), value.get("min"), value.get("max")
        if precision in _EE_PRECISION:
            return np.dtype(_EE_PRECISION[precision])
        if precision != "int" or not all(isinstance(v, (int, float, type(None))) for v in (lo, hi)):
            raise SpecError(f"{what}: {dict(value)} is not a PixelType; give precision 'int' (with min and max "
                            "numbers), 'float' or 'double'")
        if lo is None or hi is None:
            return np.dtype("int32")
        for cand in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64"):
            info = np.iinfo(cand)
            if info.min <= lo and hi <= info.max:
                return np.dtype(cand)
        return np.dtype("int64")
    try:
        dt = np.dtype(value)
    except TypeError:
        raise SpecError(f"{what}: {value!r} is not a dtype; use e.g. uint8, int16, float32") from None
    if dt.kind not in "biuf":
        raise SpecError(f"{what}: {dt} is not a numeric dtype; use e.g. uint8, int16, float32")
    return dt


@dataclass(frozen=True)
class OutputBand:
    """One declared model output (Earth Engine's ``outputBands`` entry)."""

    name: str
    dtype: np.dtype
    dimensions: int = 0
    """0: one value per pixel; 1: a vector per pixel, written as bands ``name_0``, ``name_1``, ..."""
    classes: tuple[tuple[int, str], ...] | None = None
    """``(pixel value, name)`` pairs; a plain list of names means values 0, 1, 2, ... (GDAL's convention)."""
    colors: tuple[tuple[int, tuple[int, ...]], ...] | None = None
    """``(pixel value, RGB[A])`` pairs; a plain list follows the classes' values."""

    def __post_init__(self) -> None:
        if self.dimensions not in (0, 1):
            raise SpecError(
                f"output band {self.name!r}: dimensions must be 0 (scalar) or 1 (vector), got {self.dimensions}"
            )


def parse_output_bands(value: Any) -> tuple[OutputBand, ...]:
    """Accept ``{"lc": "uint8"}``, ``{"lc": {"type": "uint8", "dimensions": 0}}``, ``["lc:uint8:0"]`` or OutputBands."""
    if value is None:
        return ()
    items: Iterable[tuple[str, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, str):
        items = [_parse_band_string(value)]
    elif not isinstance(value, Iterable):
        raise SpecError(f"output_bands {value!r}: use a mapping name -> dtype or a list of 'NAME:DTYPE[:DIMS]'")
    else:
        items = []
        for v in value:
            if isinstance(v, OutputBand):
                items.append((v.name, v))
            elif isinstance(v, str):
                items.append(_parse_band_string(v))
            else:
                raise SpecError(f"output band {v!r}: use 'NAME:DTYPE[:DIMS]' or a mapping name -> dtype")
    bands = []
    for name, spec in items:
        if isinstance(spec, OutputBand):
            bands.append(spec)
            continue
        if (isinstance(spec, Mapping) and "type" in spec) or (isinstance(spec, Mapping) and "dtype" in spec):
            dtype = parse_dtype(spec.get("dtype", spec.get("type")), f"output band {name!r}")
            classes = _by_value(spec.get("classes"), name, "classes")
            colors = spec.get("colors")
            if colors is not None and not isinstance(colors, Mapping):
                values = [v for v, _ in classes] if classes else list(range(len(colors)))
                if len(values) != len(colors):
                    raise SpecError(f"output band {name!r}: {len(values)} classes but {len(colors)} colours")
                colors = dict(zip(values, colors, strict=True))
            colors = _by_value(colors, name, "colors")
            dims = spec.get("dimensions") or 0  # OutputBand refuses anything but 0 and 1
            bands.append(
                OutputBand(
                    name,
                    dtype,
                    int(dims) if str(dims).isdigit() else dims,
                    classes,
                    tuple((v, _rgba(col)) for v, col in colors) if colors else None,
                )
            )
        else:
            bands.append(OutputBand(name, parse_dtype(spec, f"output band {name!r}")))
    names = [b.name for b in bands]
    if len(set(names)) != len(names):
        raise SpecError(f"output band names must be unique, got {names}")
    return tuple(bands)


def _by_value(value: Any, band: str, what: str) -> tuple[tuple[int, Any], ...] | None:
    """``{1: x, 2: y}`` or ``[x, y]`` (values 0, 1, ...) as sorted ``(value, item)`` pairs."""
    if not value:
        return None
    items = value.items() if isinstance(value, Mapping) else enumerate(value)
    try:
        return tuple(sorted((int(k), v) for k, v in items))
    except (TypeError, ValueError):
        raise SpecError(f"output band {band!r}: {what} must be keyed by integer pixel values, got {value!r}") from None


def _parse_band_string(text: str) -> tuple[str, Any]:
    parts = text.split(":")
    if not 2 <= len(parts) <= 3 or not parts[0]:
        raise SpecError(f"output band {text!r}: use NAME:DTYPE or NAME:DTYPE:DIMS, e.g. landcover:uint8")
    dims = 0
    if len(parts) == 3:
        try:
            dims = int(parts[2])
        except ValueError:
            raise SpecError(f"output band {text!r}: DIMS must be 0 or 1") from None
    return parts[0], {"type": parts[1], "dimensions": dims}


@dataclass(frozen=True)
class ModelSpec:
    """Earth Engine's model parameters plus tilecast's own (layout, padding, blend, batching)."""

    geometry: TileGeometry
    output_bands: tuple[OutputBand, ...] = ()
    layout: Layout | None = None
    input_type_override: Mapping[str, np.dtype] = field(default_factory=dict)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    input_properties: tuple[str, ...] = ()
    crs: str | None = None
    resolution: tuple[float, float] | None = None
    fix_input_proj: bool = False
    resampling: str = "bilinear"
    padding: Padding = "zero"
    blend: Blend = "crop"
    batch_size: int = 8
    fill_value: float = 0
    nodata: float | None = None
    mask_receptive_field: bool = False
    """Mask an output pixel whose overlap neighbourhood touches masked input (off: Earth Engine's rule)."""
    bands: tuple[str | int, ...] | None = None
    output_layout: Literal["channels_last", "channels_first"] | None = None

    @classmethod
    def create(
        cls,
        *,
        input_tile_size: int | Sequence[int],
        input_overlap_size: int | Sequence[int] = 0,
        output_tile_size: int | Sequence[int] | None = None,
        overlap_mode: OverlapMode = "per_edge",
        output_bands: Any = None,
        input_type_override: Mapping[str, Any] | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        input_properties: Sequence[str] | None = None,
        resolution: float | Sequence[float] | None = None,
        bands: Sequence[str | int] | None = None,
        **options: Any,
    ) -> ModelSpec:
        refuse_unknown(options, PARAMETERS)  # a typo, e.g. input_overlap=4: else a bare TypeError from __init__
        geometry = TileGeometry.create(input_tile_size, input_overlap_size, output_tile_size, overlap_mode)
        for name, value in (("input_type_override", input_type_override), ("input_shapes", input_shapes)):
            if value is not None and not isinstance(value, Mapping):
                raise SpecError(f"{name} maps input names to values (e.g. {{'image': 'float32'}} or {{'array': [4]}}), "
                                f"got {value!r:.80}")
        res = None
        if resolution is not None:
            res = parse_resolution(resolution)
            if min(res) <= 0:
                raise SpecError(f"resolution must be a positive number or (x, y), got {resolution!r}")
        spec = cls(
            geometry=geometry,
            output_bands=parse_output_bands(output_bands),
            input_type_override={
                k: parse_dtype(v, f"input_type_override[{k!r}]") for k, v in (input_type_override or {}).items()
            },
            input_shapes={k: _shape(k, v) for k, v in (input_shapes or {}).items()},
            input_properties=tuple(split_names(input_properties) or ()),
            resolution=res,  # type: ignore[arg-type]
            bands=tuple(split_names(bands)) if bands is not None else None,
            **options,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS:
            raise SpecError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.blend not in BLENDS:
            raise SpecError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if self.padding not in PADDINGS:
            raise SpecError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        switches = (("fix_input_proj", self.fix_input_proj), ("mask_receptive_field", self.mask_receptive_field))
        for name, value in switches:  # "false" from a config file would mean True
            if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, int) and value in (0, 1)):
                raise SpecError(f"{name} must be True or False, got {value!r:.40}")
        if self.resampling not in RESAMPLINGS:
            hint = "".join(f"did you mean {c!r}? " for c in get_close_matches(str(self.resampling), RESAMPLINGS, n=1))
            raise SpecError(f"unknown resampling {self.resampling!r}; {hint}use one of {', '.join(RESAMPLINGS)}")
        if not isinstance(self.batch_size, (int, np.integer)) or isinstance(self.batch_size, bool) \
                or self.batch_size < 1:
            raise SpecError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        numbers = {"fill_value": self.fill_value, **({"nodata": self.nodata} if self.nodata is not None else {})}
        for name, value in numbers.items():
            if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
                raise SpecError(f"{name} must be a number (NaN allowed), got {value!r}")
        if self.output_layout not in (None, "channels_last", "channels_first"):
            raise SpecError(f"output_layout must be 'channels_last' (N, H, W, C) or 'channels_first' (N, C, H, W), "
                            f"got {self.output_layout!r}")
        if self.blend != "crop":
            g = self.geometry
            if g.overlap == (0, 0):
                raise SpecError(f"blend={self.blend!r} needs an overlap to blend over; set input_overlap_size")
            if g.output_overlap is None:
                raise SpecError(
                    f"blend={self.blend!r}: the overlap {tuple(g.overlap)} scaled by output/input tile "
                    f"({g.out.x}/{g.tile.x}) is not a whole number of output pixels; pick an overlap divisible "
                    "by the scale, or use blend='crop'"
                )
        for name, shape in self.input_shapes.items():
            if len(shape) > 1:
                raise SpecError(f"input_shapes[{name!r}] = {list(shape)}: only [] or [depth] per pixel are supported")
            if shape and shape[0] < 1:
                raise SpecError(f"input_shapes[{name!r}] = {list(shape)}: the depth is a number of bands, at least 1 "
                                f"(e.g. {{{name!r}: [4]}}; [] for a scalar band)")

    def replace(self, **changes: Any) -> ModelSpec:
        spec = replace(self, **changes)
        spec.validate()
        return spec


PARAMETERS = frozenset({p for p in inspect.signature(ModelSpec.create).parameters if p != "options"}
                       | {f.name for f in fields(ModelSpec) if f.name != "geometry"})
"""The keywords :meth:`ModelSpec.create` takes: Earth Engine's parameters and tilecast's options."""


def refuse_unknown(given: Iterable[str], known: Iterable[str]) -> None:
    """A :class:`SpecError` for a parameter name not in ``known`` (a typo), suggesting the closest known one."""
    known = sorted(known)
    if unknown := sorted(set(given) - set(known)):
        near = [f"did you mean {m[0]!r}? " for u in unknown if (m := get_close_matches(u, known, 1))]
        raise SpecError(f"unknown model parameter(s) {unknown}; {''.join(near)}the parameters are {', '.join(known)}")


def split_names(value: Any) -> Any:
    """``"red,nir"`` (as ``--bands red,nir``) as ``["red", "nir"]``, not as the names "r", "e", "d"...; one band
    index (``bands=4``) as ``[4]``; anything else unchanged."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [value]
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else value


def _shape(name: str, value: Any) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in value)
    except (TypeError, ValueError):
        raise SpecError(f"input_shapes[{name!r}] = {value!r}: give [4] (4 bands) or [] (a scalar band)") from None


# ---- class colours and category names (GIS tools show class maps through these) ----------------------------------

PALETTES: dict[str, tuple[str, ...]] = {
    "tab10": ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf"),
    "set1": ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf", "#999999"),
    "paired": ("#a6cee3", "#1f78b4", "#b2df8a", "#33a02c", "#fb9a99", "#e31a1c", "#fdbf6f", "#ff7f00", "#cab2d6",
               "#6a3d9a", "#ffff99", "#b15928"),
}
"""Qualitative palettes (matplotlib's ``tab10``, ColorBrewer's ``Set1`` and ``Paired``); they repeat past their end."""

DEFAULT_PALETTE = "tab10"
"""What class maps get when their classes have no colours, so they open coloured in QGIS."""


def parse_color(text: str, what: str = "colour") -> tuple[int, int, int, int]:
    """``#1f77b4``, ``1f77b4``, ``#1f77b480`` (with alpha) or ``31,119,180[,255]`` as RGBA."""
    t = text.strip()
    try:
        if "," in t or " " in t:
            parts = [int(p) for p in t.replace(" ", ",").split(",") if p]
        else:
            h = t.removeprefix("#")
            if len(h) not in (6, 8) or any(c not in "0123456789abcdefABCDEF" for c in h):
                raise ValueError
            parts = [int(h[i : i + 2], 16) for i in range(0, len(h), 2)]
    except ValueError:
        parts = []
    if len(parts) not in (3, 4) or not all(0 <= p <= 255 for p in parts):
        raise SpecError(f"{what} {text!r} is not a colour; use #RRGGBB (e.g. #1f77b4), #RRGGBBAA or R,G,B[,A]")
    return (*parts, 255)[:4]  # type: ignore[return-value]


def _rgba(color: str | Sequence[int]) -> tuple[int, ...]:
    """A colour given as ``"#rrggbb"`` (or a name ``parse_color`` knows) or as integers."""
    return parse_color(color) if isinstance(color, str) else tuple(int(c) for c in color)


def palette_colors(name: str, values: Sequence[int]) -> dict[int, tuple[int, int, int, int]]:
    """The colours of palette ``name`` for ``values``, in order (repeating past the palette's end)."""
    key = name.strip().lower()
    if key not in PALETTES:
        raise SpecError(f"unknown palette {name!r}; use one of {', '.join(PALETTES)} or VALUE:#RRGGBB,...")
    colors = PALETTES[key]
    return {int(v): parse_color(colors[i % len(colors)]) for i, v in enumerate(values)}


def parse_colors(text: str, values: Sequence[int] | None = None, what: str = "--colors"
                 ) -> dict[int, tuple[int, int, int, int]]:
    """``0:#1f77b4,1:#ff7f0e`` (value: colour), ``#1f77b4,#ff7f0e`` (values 0, 1, ... or ``values``) or a
    palette name (for ``values``, the class values; 0..9 without them)."""
    if text.strip().lower() in PALETTES:
        return palette_colors(text, list(values) if values is not None else range(10))
    items = [i.strip() for i in text.split(",") if i.strip()]
    if not items:
        raise SpecError(f"{what} is empty; use e.g. 0:#1f77b4,1:#ff7f0e or a palette ({', '.join(PALETTES)})")
    if all(":" in i for i in items):
        out = {}
        for item in items:
            value, _, color = item.partition(":")
            if not value.strip().lstrip("-").isdigit():
                raise SpecError(f"{what}: {item!r} is not VALUE:COLOUR; use e.g. 0:#1f77b4,1:#ff7f0e")
            out[int(value)] = parse_color(color, f"{what} {item!r}:")
        return out
    if any(":" in i for i in items):
        raise SpecError(f"{what}: give every entry as VALUE:COLOUR, or none (colours for values 0, 1, ...)")
    keys = list(values) if values is not None else list(range(len(items)))
    if len(keys) != len(items):
        raise SpecError(f"{what}: {len(items)} colours for {len(keys)} classes; give one colour per class, or "
                        "VALUE:COLOUR pairs")
    return {int(k): parse_color(c, what) for k, c in zip(keys, items, strict=True)}


def with_default_colors(band: OutputBand) -> OutputBand:
    """A class band without colours gets the default palette, so GIS tools show it coloured; others unchanged."""
    if not band.classes or band.colors or band.dimensions or band.dtype.kind not in "iub":
        return band
    colors = palette_colors(DEFAULT_PALETTE, [v for v, _ in band.classes])
    return replace(band, colors=tuple(sorted(colors.items())))


def category_names(classes: Sequence[tuple[int, str]] | None) -> list[str]:
    """GDAL's CategoryNames: the name of pixel value ``i`` at index ``i``, empty for values without a class (GDAL
    has no names for negative values; those classes are left out)."""
    if not classes:
        return []
    named = {int(v): str(n) for v, n in classes if int(v) >= 0}
    if not named:
        return []
    return [named.get(i, "") for i in range(max(named) + 1)]


def pam_categories_xml(bands: Sequence[Sequence[tuple[int, str]] | None]) -> str | None:
    """A GDAL PAM sidecar (``OUTPUT.tif.aux.xml``) with each band's CategoryNames, which gdalinfo and QGIS read:
    GeoTIFF has no tag for them, and rasterio does not write them. ``bands``: each band's ``(value, name)``
    classes or None. None when no band has classes."""
    named = [(i, category_names(classes)) for i, classes in enumerate(bands, start=1)]
    if not any(names for _, names in named):
        return None
    from xml.sax.saxutils import escape  # here: importing it takes longer than writing a small output

    parts = []
    for i, names in named:
        if names:
            cats = "".join(f"      <Category>{escape(n)}</Category>\n" for n in names)
            parts.append(f'  <PAMRasterBand band="{i}">\n    <CategoryNames>\n{cats}    </CategoryNames>\n'
                         "  </PAMRasterBand>\n")
    return f"<PAMDataset>\n{''.join(parts)}</PAMDataset>\n" if parts else None


def categories_xml(bands: Sequence[OutputBand]) -> str | None:
    """:func:`pam_categories_xml` for a GeoTIFF's output bands, numbered as the sink numbers its class bands
    (from 1, up to the first vector band)."""
    classes: list[Sequence[tuple[int, str]] | None] = []
    for band in bands:
        if band.dimensions:
            break
        classes.append(band.classes)
    return pam_categories_xml(classes)
