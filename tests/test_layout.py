"""One place reads a layout off a model (infer_layout) and one derives the tile from its signature."""

from __future__ import annotations

import numpy as np
import pytest

from tilecast.errors import SpecError
from tilecast.features.properties import choose_layout
from tilecast.plan import XY, TileGeometry, infer_layout
from tilecast.runtimes.base import Signature, TensorSpec

F32 = np.dtype("float32")


def t(*shape, name="x"):
    return TensorSpec(name, tuple(shape), F32)


@pytest.mark.parametrize(("inputs", "bands", "kw", "want"), [
    ([t(None, 3, 64, 64)], ["r", "g", "b"], {}, "NCHW"),                     # band count on axis 1
    ([t(None, 64, 64, 3)], ["r", "g", "b"], {}, "NHWC"),                     # band count on axis 3
    ([t(None, None, None, None)], ["a"], {}, "NHWC"),                        # one band: Earth Engine's default
    ([t(None, 6, 8, 8)], 2, {"padded": XY(8, 8)}, "NCHW"),                   # only the tile size decides
    ([t(None, 3, None, None)], 2, {}, "NCHW"),                               # only which axis is fixed decides
    ([t(None, None, None, 2)], 3, {}, "NHWC"),
    ([t(None, 4), ], ["a", "b", "c", "d"], {}, "pixels"),                    # a tabular model
    ([t(None, 4, name="a"), t(None, 1, name="b")], ["a", "b"], {}, "bands"),  # one input per band
    ([t(None, 8, 8, 1, name="B04")], ["B04"], {}, "bands"),                  # named after its band
    ([t(None, 8, 8, 3, name="arr")], ["x", "y", "z"], {"array_inputs": ["arr"]}, "bands"),
    ([t(None, 3, 8, 8)], None, {}, "NCHW"),                                  # no band count: short axis 1
    ([t(None, 8, 8, 3)], None, {}, "NHWC"),
    ([TensorSpec("x", None, None)], 3, {}, "bands"),                         # nothing known
    ([TensorSpec("x", None, None)], 3, {"fallback": "NCHW"}, "NCHW"),
    ([TensorSpec("x", None, None)], None, {"dim_order": ["batch", "channel", "height", "width"]}, "NCHW"),
    ([TensorSpec("x", None, None)], None, {"dim_order": ["batch", "height", "width", "channel"]}, "NHWC"),
    ([TensorSpec("x", None, None)], None, {"dim_order": ["batch", "channel"]}, "pixels"),
])
def test_infer_layout(inputs, bands, kw, want):
    assert infer_layout(inputs, bands, **kw) == want


def test_infer_layout_refuses_to_guess():
    with pytest.raises(SpecError, match="--layout"):
        infer_layout([t(None, None, None, None)], 3)
    assert infer_layout([t(None, None, None, None)], 3, fallback="NCHW") == "NCHW"


def test_feature_layouts_follow_infer_layout():
    named = Signature((t(None, 1, name="a"), t(None, 1, name="b")), ())
    assert choose_layout(named, ["a", "b", "c"]) == "named"
    assert choose_layout(Signature((t(None, 3),), ()), ["a", "b", "c"]) == "stacked"
    assert choose_layout(Signature((), ()), ["a"]) == "named"
    with pytest.raises(Exception, match="no properties"):
        choose_layout(named, ["a"])


@pytest.mark.parametrize(("inputs", "layout", "overlap", "mode", "tile"), [
    ([t(None, 3, 64, 48)], None, 0, "per_edge", (48, 64)),
    ([t(None, 3, 64, 48)], None, 8, "per_edge", (32, 48)),
    ([t(None, 3, 64, 48)], None, (8, 4), "total", (40, 60)),
    ([t(None, 64, 48, 3)], None, 0, "per_edge", (48, 64)),
    ([t(None, 64, 48, 3)], "NHWC", 2, "per_edge", (44, 60)),
    ([t(None, 5)], None, 0, "per_edge", (256, 256)),                      # any block for a per-pixel model
    ([t(None, 3, None, None), t(None, 32, 32, 1, name="b")], None, 0, "per_edge", (32, 32)),
])
def test_tile_from_signature(inputs, layout, overlap, mode, tile):
    g = TileGeometry.from_signature(inputs, layout, overlap, None, mode)
    assert tuple(g.tile) == tile
    assert g.padded.x == g.tile.x + 2 * g.overlap.x  # the model's own input size again
    if len(inputs[0].shape) == 4 and inputs[0].shape[2] is not None:
        assert TileGeometry.core_for(g.padded, g.overlap) == g.tile


def test_tile_from_signature_needs_a_fixed_size():
    with pytest.raises(SpecError, match="input_tile_size is required"):
        TileGeometry.from_signature([t(None, 3, None, None)])


def test_model_and_card_cli_derive_the_same_tile(tmp_path):
    from tests.onnx_models import mean_conv

    from tilecast import Model

    path = mean_conv(tmp_path / "m.onnx", bands=3, hw=(40, 40))
    with Model.from_onnx(path, input_overlap_size=4) as m:
        assert tuple(m.spec.geometry.tile) == (32, 32)
        want = TileGeometry.from_signature(m.signature.inputs, None, 4).tile
        assert m.spec.geometry.tile == want
