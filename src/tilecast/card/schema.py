"""The card itself: a STAC item with the MLM extension, and the names of the schemas it declares.

MLM already says which bands a model takes (``mlm:input[].bands``), how their values are scaled (``value_scaling``),
the tensor shape, dimension order and dtype, and what comes out (``mlm:output``, ``classification:classes``). It has no
words for tiling, so tilecast adds namespaced fields for what Earth Engine makes every caller repeat::

    tilecast:tile_size         [w, h]   core tile (Earth Engine's inputTileSize)
    tilecast:overlap           [x, y]   inputOverlapSize; with tilecast:overlap_mode ("per_edge" | "total")
    tilecast:output_tile_size  [w, h]   outputTileSize
    tilecast:layout            "NCHW" | "NHWC" | "bands" | "pixels"
    tilecast:crs, tilecast:gsd [x, y], tilecast:gsd_tolerance (relative), tilecast:fix_input_proj,
    tilecast:resampling        the projection / resolution policy
    tilecast:fill_value, tilecast:nodata   what masked input pixels are sent as, and the output nodata
    tilecast:blend, tilecast:padding       recommended merge of overlapping tiles, and edge padding
    tilecast:outputs           {band: {"dimensions": 0|1, "argmax": axis}} for what MLM's result does not say
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .html import card_html
from .params import CardParams, card_params

__all__ = ["CLASSIFICATION_SCHEMA", "EO_SCHEMA", "MLM_SCHEMA", "ONNX_KEY", "Card"]

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
EO_SCHEMA = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
ONNX_KEY = "mlm:item"
"""The ``metadata_props`` key that holds the card (JSON) inside an ONNX model."""


@dataclass
class Card:
    """A model card: the STAC item as a plain dict, plus where it came from."""

    item: dict[str, Any]
    source: str = "sidecar"
    """``sidecar``, ``embedded`` (ONNX metadata_props or a Torch archive's extra file), ``deepness`` (converted from
    Deepness/GeoDeep keys), ``flags`` or ``file``."""

    @property
    def properties(self) -> dict[str, Any]:
        return self.item.setdefault("properties", {})

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.properties.get("mlm:input", [])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.properties.get("mlm:output", [])

    def band_names(self) -> list[str]:
        out: list[str] = []
        for inp in self.inputs:
            out.extend(b if isinstance(b, str) else b["name"] for b in inp.get("bands", []))
        return out

    def common_names(self) -> dict[str, str]:
        """Band name -> ``eo:common_name`` from the item's STAC 1.1 ``bands``."""
        bands = list(self.properties.get("bands", []))
        for asset in self.item.get("assets", {}).values():
            bands.extend(asset.get("bands", []))
        return {b["name"]: b["eo:common_name"] for b in bands if "name" in b and b.get("eo:common_name")}

    def to_params(self) -> CardParams:
        return card_params(self)

    def to_json(self) -> str:
        return json.dumps(self.item, indent=2)

    def _repr_html_(self) -> str:
        """Jupyter's view: name, source, tiling, bands, outputs and classes with their colours."""
        return card_html(self)
