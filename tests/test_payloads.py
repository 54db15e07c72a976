"""Payload codecs: byte-compatible with TensorFlow and TF Serving's own protos, and clear about bad input."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tilecast.errors import InputError, OutputShapeError, SpecError, TileSizeError
from tilecast.payloads import grpc as grpc_codec
from tilecast.payloads import normalize_format, rest, tensor_to_b64, v2
from tilecast.payloads.protos import TensorProto, make_ndarray
from tilecast.payloads.tensors import b64_to_tensor, serialize_tensor
from tilecast.remote import Packer, parse_endpoint, vertex_url
from tilecast.remote.retry import RetryPolicy, retry_after

RNG = np.random.default_rng(0)


def batch(n=3, h=4, w=5, names=("B1", "B2"), dtype="float32"):
    return {k: RNG.normal(size=(n, h, w, 1)).astype(dtype) for k in names}


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "uint8", "int16", "int64", "uint16", "float16",
                                   "bool"])
def test_tensor_strings_round_trip(dtype):
    a = (RNG.normal(size=(3, 4, 2)) * 10).astype(dtype)
    s = tensor_to_b64(a)
    assert "=" not in s and "+" not in s and "/" not in s  # web-safe, unpadded
    b = b64_to_tensor(s)
    assert b.dtype == a.dtype and np.array_equal(a, b)
    padded_std = base64.b64encode(serialize_tensor(a)).decode()
    assert np.array_equal(b64_to_tensor(padded_std), a)  # the standard alphabet, padded, also decodes


def test_typed_value_fields_and_broadcast():
    p = TensorProto(dtype=1)  # DT_FLOAT with float_val, as tf.make_tensor_proto writes small tensors
    p.tensor_shape.dim.add(size=2)
    p.tensor_shape.dim.add(size=2)
    p.float_val.extend([1.5])
    assert np.array_equal(make_ndarray(p), np.full((2, 2), 1.5, np.float32))
    p.float_val.extend([2, 3])
    with pytest.raises(InputError, match="3 values"):
        make_ndarray(p)


def test_declared_shape_is_charged_before_allocating():
    """A 20-byte TensorProto declaring [3, 9000, 9000] floats is refused by the budget before numpy allocates."""
    import tracemalloc

    from tilecast.payloads.checks import DecodeBudget

    p = TensorProto(dtype=1)
    p.tensor_shape.dim.extend(TensorProto().tensor_shape.Dim(size=d) for d in (3, 9000, 9000))
    p.float_val.append(1.0)
    charged = []
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="declares 972,000,000 bytes"):
            make_ndarray(p, DecodeBudget(32 << 20, lambda n, what: charged.append(n)))
        with pytest.raises(InputError, match="declares"):
            b64_to_tensor(tensor_to_b64_proto(p), DecodeBudget(32 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20 and charged == []
    budget = DecodeBudget(100)  # the budget is cumulative over a request
    make_ndarray(TensorProto.FromString(serialize_tensor(np.zeros(20, np.float32))), budget)
    with pytest.raises(InputError, match="80 already decoded"):
        make_ndarray(TensorProto.FromString(serialize_tensor(np.zeros(20, np.float32))), budget)


def tensor_to_b64_proto(p) -> str:
    return base64.urlsafe_b64encode(p.SerializeToString()).decode()


@pytest.mark.parametrize(("shape", "match"), [
    ("1,2", "list of integers"), (["1", 2], "whole number"), ([1.0, 2], "whole number"), ([1.5], "whole number"),
    ([True, 2], "whole number"), ([2**70], "not valid"), ([-1, -1], "not valid"), ([-2], "not valid"),
])
def test_check_shape_refuses_what_is_not_a_shape(shape, match):
    from tilecast.payloads.checks import check_shape

    with pytest.raises(InputError, match=match):
        check_shape(shape, "t")
    assert check_shape([-1, 3], "t", allow_unknown=True) == (-1, 3)


def test_fit_dtype_refuses_values_the_cast_would_wrap():
    from tilecast.payloads.checks import fit_dtype

    assert fit_dtype(np.array([0, 255]), np.uint8, "x").dtype == np.uint8
    with pytest.raises(InputError, match="outside the range of uint8"):
        fit_dtype(np.array([0, 256]), np.uint8, "x")
    with pytest.raises(InputError, match="outside the range of int16"):
        fit_dtype(np.array([np.nan, 1.0]), np.int16, "x")
    with pytest.raises(InputError, match="beyond the range of float32"):
        fit_dtype(np.array([1e39]), np.float32, "x")
    kept = fit_dtype(np.array([np.nan, 1e30]), np.float32, "x")  # a NaN that was sent stays NaN: no overflow
    assert np.isnan(kept[0]) and kept[1] == np.float32(1e30)


def test_v2_request_fields_are_checked():
    def decode(head: dict):
        return v2.decode_request(json.dumps(head).encode(), None, DecodeBudget(1 << 20))

    from tilecast.payloads.checks import DecodeBudget

    t = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}
    assert decode({"inputs": [t]})[0]["x"].dtype == np.float32
    for bad, match in [({**t, "data": [None, 1]}, "numbers"), ({**t, "data": [1e39, 1]}, "beyond the range"),
                       ({**t, "datatype": "INT8", "data": [1, 200]}, "outside the range"),
                       ({**t, "shape": [2.0]}, "whole number"), ({**t, "data": ["1", "2"]}, "numbers"),
                       ({**t, "data": None, "parameters": {"binary_data_size": "abc"}}, "binary_data_size"),
                       ({**t, "shape": [10**6, 10**6]}, "declares")]:
        with pytest.raises(InputError, match=match):
            decode({"inputs": [bad]})
    with pytest.raises(InputError, match='"outputs" must be a list'):
        decode({"inputs": [t], "outputs": {"name": "y"}})
    # the client side (no budget) still reads answers with NaN in them
    body, hl = v2.encode_response("m", {"y": np.array([np.nan, 1.0], np.float32)})
    assert np.isnan(v2.decode_response(body, int(hl.get(v2.HEADER_LENGTH, len(body))), 2)["y"][0])


def test_tensorflow_parses_and_writes_the_same_bytes():
    tf = pytest.importorskip("tensorflow")
    a = RNG.normal(size=(8, 8, 1)).astype("float32")
    s = tensor_to_b64(a)
    parsed = tf.io.parse_tensor(tf.io.decode_base64(s), tf.float32).numpy()
    assert np.array_equal(parsed, a)
    assert tf.io.serialize_tensor(a).numpy() == serialize_tensor(a)
    assert tf.io.encode_base64(tf.io.serialize_tensor(a)).numpy().decode() == s
    ints = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert np.array_equal(tf.io.parse_tensor(tf.io.decode_base64(tensor_to_b64(ints)), tf.int32).numpy(), ints)
    # and TF's own proto with typed values decodes here
    proto = tf.make_tensor_proto(np.float32([1, 2, 3]))
    assert np.array_equal(make_ndarray(TensorProto.FromString(proto.SerializeToString())), [1, 2, 3])


def test_official_tf_serving_protos_parse_our_requests():
    tf = pytest.importorskip("tensorflow")
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    b = batch()
    for fmt in ("GRPC_TF_TENSORS", "GRPC_SERIALIZED_TF_TENSORS", "GRPC_TF_EXAMPLES"):
        ours = grpc_codec.encode_request(fmt, b, 0, 3, "m", "serving_default")
        official = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
        assert official.model_spec.name == "m" and official.model_spec.signature_name == "serving_default"
        if fmt == "GRPC_TF_TENSORS":
            assert np.array_equal(tf.make_ndarray(official.inputs["B1"]), b["B1"])
        elif fmt == "GRPC_SERIALIZED_TF_TENSORS":
            strings = tf.make_ndarray(official.inputs["B2"])
            assert strings.shape == (3,)
            got = tf.io.parse_tensor(tf.io.decode_base64(strings[1]), tf.float32).numpy()
            assert np.array_equal(got, b["B2"][1])
        else:
            examples = tf.make_ndarray(official.inputs["input"])
            spec = {k: tf.io.FixedLenFeature([4, 5, 1], tf.float32) for k in b}
            parsed = tf.io.parse_example(examples, spec)
            assert np.array_equal(parsed["B1"].numpy(), b["B1"])
        # the official response class reads our responses too
        arrays, detected = grpc_codec.decode_request(ours)
        assert detected == fmt
        resp = grpc_codec.encode_response(fmt, {"out": arrays["B1"] * 2}, "m")
        back = predict_pb2.PredictResponse.FromString(resp.SerializeToString())
        assert back.outputs["out"].tensor_shape.dim[0].size == 3


@pytest.mark.parametrize("fmt", ["SERIALIZED_TF_TENSORS", "RAW_JSON", "ND_ARRAYS", "COLUMNAR_JSON"])
def test_rest_round_trip(fmt):
    b = batch()
    body = json.loads(json.dumps(rest.encode_request(fmt, b, 1, 3)))
    arrays, detected = rest.decode_request(body)
    assert detected == fmt
    if fmt == "ND_ARRAYS":  # channel-first, keys omitted
        assert np.array_equal(arrays[""], np.concatenate([b["B1"], b["B2"]], axis=3).transpose(0, 3, 1, 2)[1:3])
    else:
        assert all(np.allclose(arrays[k], b[k][1:3]) for k in b)
    for outs in ({"y": b["B1"][1:3]}, {"y": b["B1"][1:3], "z": b["B2"][1:3]}):
        answer = json.loads(json.dumps(rest.encode_response(detected, outs)))
        got = rest.decode_response(answer, 2, "y")
        assert set(got) == set(outs) and all(np.allclose(got[k], outs[k]) for k in outs)


def test_earth_engine_wire_shape():
    """SERIALIZED_TF_TENSORS: plain strings keyed by band name; one output answers with bare strings."""
    b = batch(n=2)
    body = rest.encode_request("SERIALIZED_TF_TENSORS", b, 0, 2)
    assert list(body) == ["instances"] and all(isinstance(v, str) for v in body["instances"][0].values())
    answer = rest.encode_response("SERIALIZED_TF_TENSORS", {"out": b["B1"]})
    assert all(isinstance(p, str) for p in answer["predictions"])
    raw = rest.decode_request({"instances": [{"x": ["1.5", "2"]}]})[0]["x"]  # RAW_JSON numbers as strings
    assert raw.tolist() == [[1.5, 2.0]]


def test_rest_errors_name_the_instance_and_field():
    good = tensor_to_b64(np.zeros((2, 2, 1), np.float32))
    with pytest.raises(OutputShapeError, match="2 predictions for 3 instances"):
        rest.decode_response({"predictions": [good, good]}, 3, "y")
    with pytest.raises(OutputShapeError, match=r"instance 6: predictions\[1\]\['y'\]"):
        rest.decode_response({"predictions": [good, "!!notatensor"]}, 2, "y", first=5)
    with pytest.raises(OutputShapeError, match="has no field 'z'"):
        rest.decode_response({"predictions": [{"y": 1, "z": 2}, {"y": 1}]}, 2, "y")
    with pytest.raises(OutputShapeError, match="shape"):
        rest.decode_response({"predictions": [[1, 2], [1, 2, 3]]}, 2, "y")
    with pytest.raises(OutputShapeError, match=r"no \"predictions\".*boom"):
        rest.decode_response({"error": "boom"}, 1, "y")
    with pytest.raises(InputError, match="instances"):
        rest.decode_request({"foo": 1})
    with pytest.raises(InputError, match=r"instances\[1\]"):
        rest.decode_request({"instances": [{"a": [1, 2]}, {"a": [1, 2, 3]}]})


def test_v2_binary_and_json():
    b = {"x": RNG.normal(size=(2, 3, 4)).astype("float32"), "s": np.array([b"ab", b"c"], dtype=object)}
    body, headers = v2.encode_request(b, binary=True, outputs=["y"])
    assert headers["Content-Type"] == "application/octet-stream"
    arrays, head = v2.decode_request(body, int(headers[v2.HEADER_LENGTH]))
    assert np.array_equal(arrays["x"], b["x"]) and arrays["s"].tolist() == [b"ab", b"c"]
    assert v2.binary_outputs(head, ["y"]) == {"y"}
    body, headers = v2.encode_request({"x": b["x"]}, binary=False)
    arrays, head = v2.decode_request(body, None)
    assert np.array_equal(arrays["x"], b["x"]) and v2.binary_outputs(head, ["y"]) == set()
    resp, h = v2.encode_response("m", {"y": b["x"]}, "id1", binary={"y"})
    assert np.array_equal(v2.decode_response(resp, int(h[v2.HEADER_LENGTH]), 2)["y"], b["x"])
    with pytest.raises(OutputShapeError, match="expected 3 instances"):
        v2.decode_response(resp, int(h[v2.HEADER_LENGTH]), 3)
    with pytest.raises(OutputShapeError, match="not valid JSON"):
        v2.decode_response(b'{"outputs": [', None, 1)


def test_format_names():
    assert normalize_format("grpc_serialized_tf_examples") == "GRPC_TF_EXAMPLES"
    assert normalize_format("GRPC_SERAILZED_TF_EXAMPLES") == "GRPC_TF_EXAMPLES"
    with pytest.raises(SpecError, match="SERIALIZED_TF_TENSORS"):
        normalize_format("PICKLE")


def test_endpoint_urls():
    e = parse_endpoint("http://h:1/v2/models/lc/versions/3/infer")
    assert (e.protocol, e.payload_format, e.infer_url, e.metadata_url) == (
        "v2", "V2_BINARY", "http://h:1/v2/models/lc/versions/3/infer", "http://h:1/v2/models/lc/versions/3")
    e = parse_endpoint("http://h:1/v1/models/lc:predict")
    assert (e.protocol, e.payload_format, e.metadata_url) == ("tfserving", "SERIALIZED_TF_TENSORS",
                                                             "http://h:1/v1/models/lc/metadata")
    e = parse_endpoint("grpc://h:9/lc?signature=sig", payload_format="GRPC_SERIALIZED_TF_EXAMPLES")
    assert (e.protocol, e.infer_url, e.model, e.signature_name, e.payload_format) == (
        "grpc", "h:9", "lc", "sig", "GRPC_TF_EXAMPLES")
    e = parse_endpoint("projects/p/locations/europe-west4/endpoints/42")
    assert e.infer_url == "https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4/" \
                          "endpoints/42:predict"
    assert vertex_url("projects/p/locations/us-central1/endpoints/1").startswith("https://us-central1-aiplatform")
    with pytest.raises(SpecError, match="protocol"):
        parse_endpoint("http://h:1/predict")
    with pytest.raises(SpecError, match="does not go with"):
        parse_endpoint("http://h:1/v2/models/lc", payload_format="RAW_JSON")


def test_packer_fits_the_limit_and_names_the_largest_tile():
    b = batch(n=10, h=64, w=64, names=("B1", "B2", "B3"))

    def measure(bb, a, z):
        return len(json.dumps(rest.encode_request("SERIALIZED_TF_TENSORS", bb, a, z)))

    one = measure(b, 0, 1)
    p = Packer(int(one * 3.5), None, measure, "SERIALIZED_TF_TENSORS", text=False)
    slices = p.slices(b)
    assert slices[0][0] == 0 and slices[-1][1] == 10 and all(measure(b, a, z) <= p.limit for a, z in slices)
    assert len(slices) == 4
    with pytest.raises(SpecError, match="output_multiplier"):
        Packer(1000, 0.5, measure, "X", text=False)
    with pytest.raises(TileSizeError, match=r"largest square tile that fits is (\d+) x \1") as info:
        Packer(one // 2, None, measure, "SERIALIZED_TF_TENSORS", text=False).slices(b)
    side = int(str(info.value).split("fits is ")[1].split(" x")[0])
    assert 40 <= side < 64
    small = batch(n=1, h=side, w=side, names=("B1", "B2", "B3"))
    assert measure(small, 0, 1) <= one // 2
    p2 = Packer(int(one * 3.5), 2.0, measure, "SERIALIZED_TF_TENSORS", text=False)  # the response budget halves it
    assert len(p2.slices(b)) > len(slices)


def test_retry_after_and_backoff():
    assert retry_after("2") == 2.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    policy = RetryPolicy(base=1.0, cap=4.0)
    assert all(0 <= policy.delay(i) <= min(4.0, 2**i) for i in range(6))
    assert policy.delay(0, 3.0) == 3.0 and policy.delay(0, 1e6) == policy.max_retry_after


@pytest.mark.parametrize("names", [["x"], ["x", 'q"uote']])
def test_tensor_string_bodies_are_the_json_of_the_rows(names):
    """The bodies written straight from base64 bytes are byte for byte what json.dumps makes of the same rows."""
    rng = np.random.default_rng(11)
    batch = {k: rng.normal(size=(5, 2, 3, 4 + i)).astype(np.float32) for i, k in enumerate(names)}
    for start, stop in [(0, 5), (1, 2), (3, 5)]:
        want = json.dumps(rest.encode_request("SERIALIZED_TF_TENSORS", batch, start, stop), separators=(",", ":"))
        assert rest.encode_request_body("SERIALIZED_TF_TENSORS", batch, start, stop) == want.encode()
        with_sig = rest.encode_request_body("SERIALIZED_TF_TENSORS", batch, start, stop, {"signature_name": "s"})
        assert json.loads(with_sig) == {**json.loads(want), "signature_name": "s"}
    want = json.dumps(rest.encode_response("SERIALIZED_TF_TENSORS", batch), separators=(",", ":")).encode()
    assert rest.encode_response_body("SERIALIZED_TF_TENSORS", batch) == want
    decoded, fmt = rest.decode_request(json.loads(rest.encode_request_body("SERIALIZED_TF_TENSORS", batch, 0, 5)))
    assert fmt == "SERIALIZED_TF_TENSORS" and all(np.array_equal(decoded[k], batch[k]) for k in names)
    for n in range(7):  # every padding length, web-safe alphabet, no "="
        raw = bytes(range(250, 250 - n, -1))
        text = tensor_to_b64(np.frombuffer(raw, np.uint8))
        assert "=" not in text and "+" not in text and "/" not in text
        assert np.array_equal(b64_to_tensor(text), np.frombuffer(raw, np.uint8))
