"""Cards are bit-identical to the ones the pre-package code wrote (checksums taken from it, datetime left out)."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np

from tilecast.card import build_card, card_from_deepness
from tilecast.runtimes.base import Signature, TensorSpec
from tilecast.runtimes.scaled import Scaling
from tilecast.spec import OutputBand


def _digest(card) -> str:
    item = json.loads(json.dumps(card.item))
    item["properties"].pop("datetime")
    return hashlib.sha256(json.dumps(item).encode()).hexdigest()[:16]


def test_cards_match_the_pre_refactor_checksums():
    classes = ((0, "low"), (1, "high"))
    colors = ((0, (0, 0, 255)), (1, (255, 0, 0)))
    stacked = build_card(
        name="lin", bands=["B04", "B03", "B02"], input_tile_size=(32, 24), input_overlap_size=(4, 2), layout="NCHW",
        input_names=["x"], scaling=[Scaling("z-score", mean=100, stddev=50)], common_names={"B04": "red"},
        output_bands=[OutputBand("y", np.dtype("uint8"), 0, classes, colors)], output_names=["scores"],
        argmax={"y": 1}, resolution=(10, 10), crs="EPSG:32633", nodata=float("nan"), batch_size=4, description="d")
    pixels = build_card(name="px", bands=["a", "b"], input_tile_size=64, layout="pixels",
                        output_bands=[OutputBand("p", np.dtype("float32"), 1)], artifact="torchscript")
    per_band = build_card(name="per", bands=["a", "b"], input_tile_size=16, layout="bands",
                          scaling=[Scaling("scale", value=2.0), None], overlap_mode="total", input_overlap_size=4,
                          output_tile_size=8)
    sig = Signature((TensorSpec("input", (None, 3, None, None), np.dtype("float32")),),
                    (TensorSpec("output", None, None),))
    meta = {"model_type": "Segmentor", "class_names": '{"0": "bg", "1": "tree"}', "resolution": "20",
            "tiles_size": "256", "tiles_overlap": "10", "standardization_mean": "[0.5, 0.5, 0.5]",
            "standardization_std": "[0.2, 0.2, 0.2]"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deepness = card_from_deepness(meta, sig, name="dn")
    assert [_digest(c) for c in (stacked, pixels, per_band, deepness)] == [
        "aa2645d6b4d9a70e", "dcdeae060f6ab8ab", "c116b3a4fcae210e", "77f6de474a7fe515"]
    p = deepness.to_params().params
    assert p["input_tile_size"] == (230, 230) and p["input_overlap_size"] == (13, 13)
    assert p["resolution"] == (0.2, 0.2) and p["layout"] == "NCHW"
    p = per_band.to_params().params
    assert p["output_tile_size"] == (8, 8) and p["overlap_mode"] == "total" and p["input_overlap_size"] == (4, 4)
