"""``load_model(path)``: pick the runtime from the file, read the model card, let explicit arguments win.

This is what makes ``tilecast predict scene.tif --model landcover.onnx -o out.tif`` work without flags: the card says
how to tile, which bands in which order, how to scale them and what comes out.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .card import Card, CardParams, check_card_signature, match_bands, read_card
from .errors import BandMismatchError, InputError, ModelLoadError
from .model import Model
from .runtimes.base import Runtime
from .runtimes.scaled import ScaledRuntime

__all__ = ["CardModel", "detect_format", "explicit", "load_model", "open_runtime"]

_SUFFIXES = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".jit": "torchscript",
    ".torchscript": "torchscript",
    ".pt2": "torch.export",
    ".keras": "keras",
    ".h5": "keras",
}


def detect_format(path: str | os.PathLike) -> str:
    """``onnx``, ``torchscript``, ``torch.export``, ``savedmodel`` or ``keras``, from the path (and a peek inside)."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}; check the path")
    if p.is_dir():
        if (p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists():
            return "savedmodel"
        raise ModelLoadError(f"{p} is a directory without saved_model.pb; give a SavedModel directory or a model file")
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth") and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("/archive_format") or "/models/" in n for n in names) and \
                not any(n.endswith("/constants.pkl") or n.endswith("/code/") for n in names):
            return "torch.export"
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    with open(p, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return "torchscript"
    raise ModelLoadError(
        f"cannot tell the model format of {p}; use .onnx, .pt (TorchScript), .pt2 (torch.export), .keras, "
        "or a TensorFlow SavedModel directory"
    )


def open_runtime(path: str | os.PathLike, fmt: str | None = None, *, providers: Sequence[str] | None = None,
                 device: str | None = None, threads: int | None = None, signature_name: str | None = None
                 ) -> Runtime:
    """The runtime for a model file or directory, by format."""
    fmt = fmt or detect_format(path)
    if fmt == "onnx":
        from .runtimes.onnx import OnnxRuntime

        return OnnxRuntime(path, providers=providers, threads=threads)
    if fmt in ("torchscript", "torch.export"):
        from .runtimes.torch import TorchRuntime

        return TorchRuntime(path, device=device, fmt=fmt)
    if fmt in ("savedmodel", "keras"):
        from .runtimes.tensorflow import TensorFlowRuntime

        return TensorFlowRuntime(path, signature_name=signature_name)
    raise ModelLoadError(f"unknown model format {fmt!r}")


def explicit(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a user actually gave: drops None, empty containers and unset flags (``False``).

    A CLI passes ``load_model(path, **explicit(params))`` so its defaults never hide what the card says.
    """
    return {k: v for k, v in params.items()
            if v is not None and v is not False and not (isinstance(v, (list, tuple, dict)) and len(v) == 0)}


def load_model(path: str | os.PathLike, *, card: Card | str | os.PathLike | None = None,
               providers: Sequence[str] | None = None, device: str | None = None, threads: int | None = None,
               signature_name: str | None = None, check: bool = True, **overrides: Any) -> Model:
    """Load a model and its card. Keyword ``overrides`` (Earth Engine parameters) replace what the card says.

    ``card``: a :class:`Card`, or a path to a card JSON to use instead of the sidecar/embedded one. Overrides whose
    value is ``None`` are ignored, so a CLI can pass its options through unchanged.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    runtime = open_runtime(path, providers=providers, device=device, threads=threads, signature_name=signature_name)
    meta = getattr(runtime, "metadata", None) or {}
    try:
        if isinstance(card, (str, os.PathLike)):
            import json

            card = Card(json.loads(Path(card).read_text()), "file")
        elif card is None:
            card = read_card(path, meta, runtime.signature)
        if card is None:
            return Model(runtime, **overrides)
        if check:
            check_card_signature(card, runtime.signature)
        cp = card.to_params()
        params = {**cp.params, **overrides}
        if "input_overlap_size" in overrides and "input_tile_size" not in overrides \
                and cp.params.get("input_tile_size") is not None and not _dynamic_hw(runtime):
            # A fixed-size model: keep tile + 2*overlap constant when only the overlap changes.
            tile, old, new = (np.array(_pair(v)) for v in (cp.params["input_tile_size"],
                                                              cp.params.get("input_overlap_size", 0),
                                                              overrides["input_overlap_size"]))
            params["input_tile_size"] = tuple(int(v) for v in tile + 2 * (old - new))
        if cp.scaling or cp.argmax:
            runtime = ScaledRuntime(runtime, cp.scaling, cp.channel_axis, cp.argmax)
        explicit_bands = "bands" in overrides
        if not explicit_bands:
            params.pop("bands", None)
        return CardModel(runtime, card, cp, explicit_bands=explicit_bands, **params)
    except BaseException:
        runtime.close()
        raise


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(v)
    return (int(t[0]), int(t[0])) if len(t) == 1 else (int(t[0]), int(t[1]))


def _dynamic_hw(runtime: Runtime) -> bool:
    return all(t.shape is None or len(t.shape) != 4 or None in t.shape[1:] for t in runtime.signature.inputs)


class CardModel(Model):
    """A :class:`Model` that knows its card: it matches raster bands to the card's and checks the GSD policy."""

    def __init__(self, runtime: Runtime, card: Card, card_params: CardParams, *, explicit_bands: bool = False,
                 **params: Any) -> None:
        super().__init__(runtime, **params)
        self.card = card
        self.card_params = card_params
        self.explicit_bands = explicit_bands

    def with_options(self, **changes: Any) -> Model:
        m = super().with_options(**changes)
        out = CardModel.__new__(CardModel)
        out.__dict__.update(m.__dict__)
        out.card, out.card_params, out.explicit_bands = self.card, self.card_params, self.explicit_bands
        return out

    def resolve_bands(self, image: Any) -> list[int] | None:
        """1-based band indexes of ``image`` for the card's bands (None: let the source decide)."""
        card_bands = self.card_params.bands
        if not card_bands:
            return None
        names, common = _raster_band_names(image)
        if names is None:
            return None
        return match_bands(card_bands, names, self.card_params.common_names, common)

    def input_band_names(self, band_names: Sequence[str]) -> list[str]:
        """Earth Engine's per-band layout feeds each band to the input named after it: the selected bands (one per
        card band, in the card's order, however they were matched: description, ``eo:common_name`` or ``bands=``)
        take the names of the card's inputs (``name_0``, ``name_1``... for an array input)."""
        names = list(band_names)
        if self.spec.layout != "bands" or len(names) != len(self.card_params.bands):
            return names
        renamed = []
        for inp in self.card.inputs:
            bands = inp.get("bands", [])
            renamed.extend([inp["name"]] if len(bands) == 1 else [f"{inp['name']}_{j}" for j in range(len(bands))])
        return renamed if len(renamed) == len(names) else names

    def predict_image(self, image: Any, *, bands: Sequence[str | int] | None = None, **kwargs: Any) -> Any:
        if bands is None and not self.explicit_bands:
            bands = self.resolve_bands(image)
        if bands is not None and self.card_params.bands and len(bands) != len(self.card_params.bands):
            raise BandMismatchError(
                f"{len(bands)} bands selected ({list(bands)}) but the model card lists {len(self.card_params.bands)}: "
                f"{self.card_params.bands}; select one raster band per card band"
            )
        model: Model = self
        spec = self.spec
        if spec.resolution is not None:
            model = self._gsd_policy(image)
        if model is self:
            return super().predict_image(image, bands=bands, **kwargs)
        return Model.predict_image(model, image, bands=bands, **kwargs)

    def _gsd_policy(self, image: Any) -> Model:
        """Within the card's tolerance the image's own grid is used; otherwise warp (fix_input_proj) or refuse."""
        grid = _raster_grid(image)
        if grid is None:
            return self
        spec = self.spec
        tol = self.card_params.gsd_tolerance
        same_crs = spec.crs is None or _same_crs(spec.crs, grid[0])
        rel = max(abs(a - b) / b for a, b in zip(grid[1], spec.resolution, strict=True))  # type: ignore[arg-type]
        if same_crs and rel <= tol:
            return self.with_options(resolution=None, crs=None)
        if spec.fix_input_proj:
            return self
        raise InputError(
            f"the image's pixel size {tuple(round(r, 6) for r in grid[1])} differs from the model's GSD "
            f"{spec.resolution} by {rel:.1%} (tolerance {tol:.1%}); resample it, or let tilecast warp each window "
            "with --fix-input-proj (fix_input_proj=True)"
        )


def _same_crs(crs: str, other: Any) -> bool:
    from .sources import parse_crs

    try:
        return parse_crs(crs) == other
    except Exception:
        return False


def _raster_band_names(image: Any) -> tuple[list[str] | None, list[str | None] | None]:
    """Band descriptions (``b1``... when unnamed) and per-band ``eo:common_name``/``common_name`` tags."""
    if isinstance(image, (list, tuple)) and image:  # a mosaic: its files share one band layout
        image = image[0]
    if isinstance(image, (str, os.PathLike)):
        import rasterio

        try:
            with rasterio.open(image) as ds:
                return _names_from_dataset(ds)
        except rasterio.errors.RasterioIOError:
            return None, None
    if hasattr(image, "descriptions") and hasattr(image, "tags"):
        return _names_from_dataset(image)
    if hasattr(image, "band_names"):
        return list(image.band_names), None
    if hasattr(image, "dims"):  # xarray
        for dim in ("band", "bands"):
            if dim in getattr(image, "dims", ()):
                return [str(v) for v in image[dim].values], None
        if hasattr(image, "data_vars"):
            return [str(v) for v in image.data_vars], None
    return None, None


def _names_from_dataset(ds: Any) -> tuple[list[str], list[str | None]]:
    names = [d or f"b{i + 1}" for i, d in enumerate(ds.descriptions)]
    common = []
    for i in range(ds.count):
        tags = ds.tags(i + 1)
        # rasterio splits GDAL's "eo:common_name=red" at the colon: {"eo": "common_name=red"}
        eo = tags.get("eo", "")
        split = eo.partition("=")[2] if eo.startswith("common_name=") else None
        common.append(tags.get("eo:common_name") or split or tags.get("common_name") or tags.get("COMMON_NAME"))
    return names, common


def _raster_grid(image: Any) -> tuple[Any, tuple[float, float]] | None:
    if isinstance(image, (list, tuple)) and image:
        image = image[0]
    if isinstance(image, (str, os.PathLike)):
        import rasterio

        try:
            with rasterio.open(image) as ds:
                return ds.crs, (abs(ds.transform.a), abs(ds.transform.e))
        except rasterio.errors.RasterioIOError:
            return None
    if hasattr(image, "crs") and hasattr(image, "transform") and not hasattr(image, "dims"):
        return image.crs, (abs(image.transform.a), abs(image.transform.e))
    return None


def describe_card(card: Card) -> Mapping[str, Any]:
    """A flat summary of a card for ``tilecast info``."""
    p = card.properties
    cp = card.to_params()
    out: dict[str, Any] = {
        "card": card.source,
        "name": p.get("mlm:name"),
        "tasks": ", ".join(p.get("mlm:tasks", [])),
        "layout": cp.params.get("layout"),
        "tile": cp.params.get("input_tile_size"),
        "overlap": f"{cp.params.get('input_overlap_size')} ({cp.params.get('overlap_mode', 'per_edge')})",
        "output tile": cp.params.get("output_tile_size", cp.params.get("input_tile_size")),
        "blend": cp.params.get("blend", "crop"),
    }
    if "resolution" in cp.params or "crs" in cp.params:
        out["gsd policy"] = (f"{cp.params.get('crs') or 'image CRS'} @ {cp.params.get('resolution')} "
                             f"(tolerance {cp.gsd_tolerance:.1%}, "
                             f"{'warp' if cp.params.get('fix_input_proj') else 'refuse'} otherwise)")
    out["nodata"] = f"fill {cp.params.get('fill_value', 0)}, output nodata {cp.params.get('nodata', 'default')}"
    rows = []
    for inp in card.inputs:
        vs = inp.get("value_scaling") or []
        for i, b in enumerate(inp.get("bands", [])):
            name = b if isinstance(b, str) else b["name"]
            sc = vs[0 if len(vs) == 1 else i] if vs and (len(vs) == 1 or i < len(vs)) else None
            rows.append({"input": inp["name"], "band": name, "common_name": cp.common_names.get(name, ""),
                         "scaling": _scaling_text(sc), "dtype": inp.get("input", {}).get("data_type", "")})
    out["bands"] = rows
    outs = []
    extras = p.get("tilecast:outputs", {})
    for o in card.outputs:
        classes = o.get("classification:classes") or []
        outs.append({"name": o["name"], "dtype": o.get("result", {}).get("data_type", ""),
                     "dimensions": extras.get(o["name"], {}).get("dimensions", 0),
                     "classes": ", ".join(f"{c['value']}={c.get('description') or c['name']}" for c in classes)})
    out["card outputs"] = outs
    return out


def _scaling_text(sc: Mapping[str, Any] | None) -> str:
    if not sc or sc.get("type") is None:
        return ""
    args = [f"{sc[k]:g}" for k in ("value", "mean", "stddev", "minimum", "maximum") if sc.get(k) is not None]
    return ":".join([sc["type"], *args])


__all__ += ["describe_card"]
