"""Output decoders on hand-made tensors (each expected box computed by hand), the metadata they read, and the errors
for what does not decode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

import tilecast
from tilecast.errors import OutputShapeError, SpecError
from tilecast.vectors import DetectorOutputError, DetectorSpecError, VectorFormatError, predict_vectors
from tilecast.vectors.decode import decode_batch, nms, obb_corners
from tilecast.vectors.metadata import describe_detector, detector_from_metadata, detector_spec, format_detector
from tilecast.vectors.write import VectorWriter, vector_driver

HW = (64, 64)


def yolo_v5_rows() -> np.ndarray:
    """Three candidates ``cx, cy, w, h, obj, c0, c1``: two overlapping class-0 boxes and one class-1 box on them."""
    return np.array([[[20, 20, 10, 10, 0.9, 0.9, 0.1],
                      [21, 20, 10, 10, 0.8, 0.9, 0.1],
                      [20, 20, 10, 10, 0.9, 0.2, 0.8],
                      [50, 50, 4, 4, 0.1, 0.9, 0.0]]], np.float32)


def test_yolo_v5_objectness_times_class_and_classwise_nms():
    spec = detector_spec(det_type="YOLO_v5_or_v7_default", confidence=0.25, iou=0.45)
    (d,) = decode_batch({"out": yolo_v5_rows()}, spec, 1, HW)
    order = np.argsort(d.classes)
    assert d.classes[order].tolist() == [0, 1]
    assert np.allclose(d.boxes[order], [[15, 15, 25, 25], [15, 15, 25, 25]])
    assert np.allclose(d.scores[order], [0.81, 0.72])  # obj * class; the 0.09 candidate is under the threshold


def test_yolo_v6_ignores_objectness():
    spec = detector_spec(det_type="yolo_v6", confidence=0.5)
    (d,) = decode_batch({"out": yolo_v5_rows()}, spec, 1, HW)
    assert np.allclose(sorted(d.scores), [0.8, 0.9, 0.9])


def test_yolo_v8_channels_first_and_clipped_to_the_tile():
    rows = np.array([[[60, 2, 20, 10, 0.1, 0.7]], [[10, 10, 4, 4, 0.95, 0.0]]], np.float32).transpose(0, 2, 1)
    spec = detector_spec(det_type="yolo_v8")
    a, b = decode_batch({"output0": rows}, spec, 2, HW)
    assert np.allclose(a.boxes, [[50, 0, 64, 7]]) and a.classes.tolist() == [1]
    assert np.allclose(b.boxes, [[8, 8, 12, 12]]) and b.classes.tolist() == [0]


def test_dense_head_is_one_anchor_per_pixel():
    dense = np.zeros((1, 5, 4, 4), np.float32)
    dense[0, :, 2, 3] = [30, 20, 6, 6, 0.9]
    (d,) = decode_batch({"o": dense}, detector_spec(det_type="yolo_v8"), 1, HW)
    assert np.allclose(d.boxes, [[27, 17, 33, 23]])


def test_keep_only_some_classes():
    spec = detector_spec(det_type="yolo_v5", classes=[1])
    (d,) = decode_batch({"out": yolo_v5_rows()}, spec, 1, HW)
    assert d.classes.tolist() == [1]


def test_oriented_boxes():
    angle = np.pi / 4
    rows = np.array([[[32, 32, 20, 10, 0.9, angle]]], np.float32).transpose(0, 2, 1)
    (d,) = decode_batch({"out": rows}, detector_spec(det_type="YOLO_Ultralytics_obb"), 1, HW)
    corners = obb_corners(d.rboxes, d.angles)[0]
    poly = shapely.Polygon(corners)
    assert poly.area == pytest.approx(200.0, rel=1e-5)
    half = (10 + 5) * np.sqrt(0.5)  # the axis-aligned envelope of the turned box
    assert np.allclose(d.boxes[0], [32 - half, 32 - half, 32 + half, 32 + half], atol=1e-4)


def test_yolo_seg_masks_from_prototypes():
    protos = np.full((1, 2, 16, 16), -10.0, np.float32)
    protos[0, 0, 2:6, 4:12] = 10.0  # prototype 0: a 16 x 32 px rectangle once upsampled 4x
    protos[0, 1] = 10.0
    det = np.array([[[32, 16, 40, 24, 0.9, 1.0, 0.0]]], np.float32).transpose(0, 2, 1)  # cx cy w h, 1 class, 2 coefs
    (d,) = decode_batch({"output0": det, "output1": protos}, detector_spec(det_type="yolo_seg"), 1, HW)
    mask, r0, c0 = d.masks[0]
    full = np.zeros(HW, bool)
    full[r0: r0 + mask.shape[0], c0: c0 + mask.shape[1]] = mask
    expected = np.zeros(HW, bool)
    expected[8:24, 16:48] = True  # the prototype's rectangle, cut to the box [12, 4, 52, 28]
    assert np.array_equal(full, expected)


def test_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]], float)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.5)
    assert keep.tolist() == [0, 2]


def test_deepness_and_geodeep_metadata():
    spec = detector_from_metadata({"model_type": "Detector", "det_type": "YOLO_v9", "class_names": '["tree", "car"]',
                                   "det_conf": "0.4", "tiles_size": "640", "tiles_overlap": "10",
                                   "resolution": "10"})
    assert spec.det_type == "yolo_v8" and spec.class_names == {0: "tree", 1: "car"}
    assert spec.confidence == 0.4 and spec.tiles_size == 640 and spec.resolution == 10.0
    assert detector_from_metadata({"model_type": "Segmentor"}) is None
    card = {"tilecast:detector": {"det_type": "generic", "box_format": "xyxy", "objectness": False}}
    spec = detector_spec({}, card, confidence=0.6)
    assert (spec.det_type, spec.box_format, spec.objectness, spec.confidence) == ("generic", "xyxy", False, 0.6)
    info = describe_detector(spec)
    assert info["det_type"].startswith("generic") and info["box_format"] == "xyxy" and info["confidence"] == 0.6
    line = format_detector(spec)
    assert line.startswith("generic (") and "confidence: 0.6" in line and "merge across tiles: ios >= 0.5" in line


def test_unknown_det_type_is_a_spec_error():
    with pytest.raises(DetectorSpecError, match=r"unknown det_type 'yolo_v99'.*yolo_v8") as err:
        detector_spec(det_type="yolo_v99")
    assert isinstance(err.value, SpecError)
    with pytest.raises(DetectorSpecError, match="unknown fields"):
        detector_spec({}, {"tilecast:detector": {"det_type": "yolo_v8", "conf": 0.3}})
    with pytest.raises(DetectorSpecError, match="between 0 and 1"):
        detector_spec(det_type="yolo_v8", confidence=3)
    with pytest.raises(DetectorSpecError, match="not a number"):
        detector_from_metadata({"model_type": "Detector", "tiles_size": "big"})


@pytest.mark.parametrize("det_type,outputs,message", [
    ("yolo_v5", {"o": np.zeros((1, 5, 8, 8), np.float32)}, r"\(N, anchors, 5\+C\), got \(1, 5, 8, 8\)"),
    ("yolo_v5", {"o": np.zeros((1, 10, 4), np.float32)}, r"at least 5 values per anchor"),
    ("yolo_v8", {"o": np.zeros((3, 6, 100), np.float32)}, r"3 tile\(s\).*batch of 1.*batch_size=1"),
    ("torchvision", {"a": np.zeros((3, 5), np.float32)}, r"boxes \(K, 4\)"),
    ("yolo_seg", {"o": np.zeros((1, 6, 100), np.float32)}, r"prototypes"),
])
def test_outputs_that_do_not_decode(det_type, outputs, message):
    with pytest.raises(DetectorOutputError, match=message) as err:
        decode_batch(outputs, detector_spec(det_type=det_type), 1, HW)
    assert isinstance(err.value, OutputShapeError)


def test_vector_extensions(tmp_path):
    assert vector_driver("a.gpkg") == "GPKG" and vector_driver("a.PARQUET") == "GeoParquet"
    with pytest.raises(VectorFormatError, match=r"\.tif is not a vector format.*\.gpkg"):
        vector_driver("a.tif")
    with pytest.raises(VectorFormatError):
        VectorWriter(tmp_path / "x.csv", None, {})


def test_continuous_output_is_not_a_vector(tmp_path, raster):
    path = raster(np.zeros((32, 32), np.float32))
    model = tilecast.Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=16,
                                         output_bands={"v": "float32"})
    with pytest.raises(VectorFormatError, match="neither objects nor a class map"):
        predict_vectors(model.predict_image(path), tmp_path / "v.gpkg")
    assert not list(tmp_path.glob("v.*")) and not list(tmp_path.glob(".v.gpkg*"))


def test_a_failed_run_leaves_nothing(tmp_path, raster):
    path = raster(np.zeros((32, 32), np.float32))

    def broken(x):
        raise RuntimeError("model crashed")

    model = tilecast.Model.from_callable(broken, layout="NCHW", input_tile_size=16, outputs=("output0",))
    with pytest.raises(RuntimeError, match="crashed"):
        predict_vectors(model.predict_image(path), tmp_path / "v.gpkg", detector="yolo_v8")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in tmp_path.iterdir()
                                                                 if p.suffix == ".tif")


def test_metadata_json_values():
    spec = detector_from_metadata({"model_type": "Detector", "class_names": json.dumps({"1": "a", "2": "b"})})
    assert spec.det_type == "yolo_v5" and spec.class_name(2) == "b" and spec.class_name(7) == "7"


def test_pairwise_nms_keeps_what_the_greedy_loop_keeps(monkeypatch):
    from tilecast.vectors import decode

    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 300))
        xy = rng.uniform(0, 100, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], axis=1)
        scores, classes = rng.uniform(0, 1, n).astype(np.float32), rng.integers(0, 3, n)
        fast = nms(boxes, scores, classes, 0.45)
        monkeypatch.setattr(decode, "PAIRWISE", 0)
        slow = nms(boxes, scores, classes, 0.45)
        monkeypatch.undo()
        assert fast.tolist() == slow.tolist()
