"""Issue 16, item 3: the GPU code paths, tested on CPU.

Device names, batch planning and the chunked run are pure functions (properties with hypothesis, plus cases);
staging buffers and routing get fakes (a recording allocator, N CPU sessions or modules standing in for N GPUs, a
barrier that only opens when calls really run at once). Precision runs for real on CPU where the framework allows it
(PyTorch bf16 and fp16, ONNX Runtime fp16) and is compared with fp32. What needs a GPU is skipped with the reason.
"""

from __future__ import annotations

import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilecast.errors import DeviceError, MissingExtraError, SpecError, TileSizeError
from tilecast.runtimes.devices import (
    Device,
    HostBuffers,
    Slots,
    describe_placement,
    interleave,
    is_out_of_memory,
    numpy_staging,
    parse_devices,
    parse_precision,
    plan_batch,
    run_in_chunks,
)
from tilecast.runtimes.onnx import OnnxRuntime

ort = pytest.importorskip("onnxruntime")
HYP = settings(max_examples=60, deadline=None)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU and a CUDA build of torch (bench/gpu_check.py "
                               "measures these paths on a GPU machine)")


# --- device names ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,gpus,expected", [
    ("cpu", 0, ("cpu",)), ("CPU", 2, ("cpu",)), ("cuda", 1, ("cuda:0",)), ("gpu", 1, ("cuda:0",)),
    ("cuda:1", 2, ("cuda:1",)), ("cuda:0,1", 2, ("cuda:0", "cuda:1")), ("cuda:1,0", 2, ("cuda:1", "cuda:0")),
    ("cuda:all", 3, ("cuda:0", "cuda:1", "cuda:2")), ("all", 2, ("cuda:0", "cuda:1")),
])
def test_parse_devices(text, gpus, expected):
    assert tuple(str(d) for d in parse_devices(text, gpus)) == expected


@pytest.mark.parametrize("text", [None, "", "  "])
def test_no_device_leaves_the_choice_to_the_runtime(text):
    assert parse_devices(text, 4) is None


@pytest.mark.parametrize("text,gpus,error,words", [
    ("tpu", 1, SpecError, "unknown device"), ("cuda:x", 1, SpecError, "not a GPU number"),
    ("cuda:0,0", 2, SpecError, "twice"), (["cpu", "cuda:0"], 1, SpecError, "mixes"),
    ("cuda", 0, DeviceError, "--device cpu"), ("cuda:all", 0, DeviceError, "onnxruntime-gpu"),
    ("cuda:2", 2, DeviceError, "cuda:0..cuda:1"),
])
def test_bad_devices_name_the_fix(text, gpus, error, words):
    with pytest.raises(error, match=words):
        parse_devices(text, gpus)


def test_the_gpu_count_is_asked_only_when_a_gpu_is_named():
    def boom() -> int:
        raise AssertionError("counted GPUs for a CPU run")

    assert parse_devices("cpu", boom) == (Device("cpu"),)


@HYP
@given(count=st.integers(0, 8), wanted=st.lists(st.integers(0, 10), min_size=1, max_size=6, unique=True))
def test_parse_devices_property(count, wanted):
    text = "cuda:" + ",".join(map(str, wanted))
    if all(i < count for i in wanted):
        assert parse_devices(text, count) == tuple(Device("cuda", i) for i in wanted)
    else:
        with pytest.raises(DeviceError):
            parse_devices(text, count)


@pytest.mark.parametrize("text,expected", [(None, "fp32"), ("fp32", "fp32"), ("float16", "fp16"), ("HALF", "fp16"),
                                           ("bfloat16", "bf16"), ("bf16", "bf16")])
def test_parse_precision(text, expected):
    assert parse_precision(text) == expected


def test_unknown_precision_lists_the_choices():
    with pytest.raises(SpecError, match="fp32, fp16, bf16"):
        parse_precision("int8")


# --- batch planning --------------------------------------------------------------------------------------------------

def test_plan_batch_cases():
    gib = 2**30
    assert plan_batch(10 * gib, gib, safety=1.0) == 10
    assert plan_batch(10 * gib, gib) == 8  # 0.8 of the free memory
    assert plan_batch(10 * gib, gib, reserved_bytes=3 * gib) == 5
    assert plan_batch(0, gib) == 1  # never below min_batch: the run then meets the out-of-memory retry
    assert plan_batch(10 * gib, 1, max_batch=64) == 64
    with pytest.raises(SpecError):
        plan_batch(gib, 1, safety=0)
    with pytest.raises(SpecError):
        plan_batch(gib, 1, min_batch=4, max_batch=2)


@HYP
@given(free=st.integers(0, 2**40), tile=st.integers(1, 2**32), reserved=st.integers(0, 2**36),
       safety=st.floats(0.05, 1.0), lo=st.integers(1, 16), span=st.integers(0, 4096))
def test_plan_batch_properties(free, tile, reserved, safety, lo, span):
    hi = lo + span
    n = plan_batch(free, tile, reserved_bytes=reserved, safety=safety, min_batch=lo, max_batch=hi)
    usable = int(free * safety) - reserved
    assert lo <= n <= hi
    if n > lo:
        assert n * tile <= usable  # what it plans fits
    if n < hi:
        assert (n + 1) * tile > usable  # and one more tile would not
    more = plan_batch(free * 2, tile, reserved_bytes=reserved, safety=safety, min_batch=lo, max_batch=hi)
    bigger = plan_batch(free, tile * 2, reserved_bytes=reserved, safety=safety, min_batch=lo, max_batch=hi)
    assert more >= n >= bigger  # monotone in free memory and in the tile's cost


# --- chunked runs that halve on out-of-memory ------------------------------------------------------------------------

class FakeOOM(RuntimeError):
    pass


def _device_with(capacity: int, calls: list[int]):
    """A model on a fake device that holds ``capacity`` rows: more raise CUDA's out-of-memory message."""
    def call(batch):
        x = batch["x"]
        calls.append(len(x))
        if len(x) > capacity:
            raise FakeOOM(f"CUDA out of memory. Tried to allocate {len(x)} rows")
        return {"y": x * 2 + 1, "s": x.sum(axis=(1, 2))}
    return call


@HYP
@given(n=st.integers(1, 40), capacity=st.integers(1, 40), limit=st.integers(1, 64))
def test_run_in_chunks_matches_one_call(n, capacity, limit):
    x = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
    calls: list[int] = []
    out, used = run_in_chunks(_device_with(capacity, calls), {"x": x}, limit)
    np.testing.assert_array_equal(out["y"], x * 2 + 1)
    np.testing.assert_array_equal(out["s"], x.sum(axis=(1, 2)))
    assert 1 <= used <= max(1, limit)
    assert used <= capacity or n <= used  # the limit it returns works
    assert max(c for c in calls if c <= capacity) <= capacity


def test_run_in_chunks_passes_other_errors_and_a_one_row_oom():
    def refuses(batch):
        raise ValueError("wrong rank")

    with pytest.raises(ValueError, match="wrong rank"):
        run_in_chunks(refuses, {"x": np.zeros((4, 1))}, 8)
    with pytest.raises(FakeOOM):
        run_in_chunks(_device_with(0, []), {"x": np.zeros((4, 1, 1))}, 8)


def test_out_of_memory_messages():
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"))
    assert is_out_of_memory(RuntimeError("CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(ValueError("Got invalid dimensions for input"))


# --- host staging buffers --------------------------------------------------------------------------------------------

def test_host_buffers_reuse_one_buffer_per_shape_and_call():
    made: list[tuple] = []

    def pinned(shape, dtype):  # stands in for a pinned allocator: records what it is asked for
        made.append((shape, np.dtype(dtype).str))
        return numpy_staging(shape, dtype)

    pool = HostBuffers(pinned, shapes=2)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for _ in range(5):
        with pool.staged([x]) as (buf,):
            np.testing.assert_array_equal(buf.array, x)
            assert not np.shares_memory(buf.array, x)
    assert pool.allocated == 1 and made == [((2, 3, 4), "<f4")]
    a, b = pool.acquire((2, 3, 4), np.float32), pool.acquire((2, 3, 4), np.float32)
    assert a is not b  # two calls in flight never share a buffer
    pool.release(a)
    pool.release(b)
    assert pool.allocated == 2
    with pool.staged([x[:1]]), pool.staged([x.astype(np.uint16)]):  # two more shapes: the oldest is dropped
        pass
    assert pool.acquire((2, 3, 4), np.float32) is not None and pool.allocated == 5


def test_host_buffers_are_safe_across_threads():
    pool = HostBuffers()
    rng = np.random.default_rng(0)
    data = [rng.random((4, 8, 8), dtype=np.float32) for _ in range(32)]

    def roundtrip(a):
        with pool.staged([a]) as (buf,):
            time.sleep(0.001)
            return np.array(buf.array)

    with ThreadPoolExecutor(4) as ex:
        for a, got in zip(data, ex.map(roundtrip, data), strict=True):
            np.testing.assert_array_equal(got, a)
    assert pool.allocated <= 4


# --- routing ---------------------------------------------------------------------------------------------------------

def test_interleave_spreads_concurrent_calls_over_devices():
    assert interleave([["a0", "a1"], ["b0", "b1"], ["c0"]]) == ["a0", "b0", "c0", "a1", "b1"]


def test_slots_route_concurrent_calls_to_different_devices():
    slots = Slots(interleave([[("gpu0", s) for s in range(2)], [("gpu1", s) for s in range(2)]]))
    barrier = threading.Barrier(2, timeout=10)
    seen: list[str] = []

    def call(_):
        with slots.lease() as (device, _stream):
            seen.append(device)
            barrier.wait()  # opens only if both calls hold a slot at the same time
        return device

    with ThreadPoolExecutor(2) as ex:
        assert sorted(ex.map(call, range(2))) == ["gpu0", "gpu1"]
    assert len(slots) == 4


# --- ONNX Runtime ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory):
    from tests.onnx_models import mean_conv

    return mean_conv(tmp_path_factory.mktemp("gpu") / "conv.onnx", bands=3, k=3)


def _batch(n=4, bands=3, size=16, seed=0):
    return np.random.default_rng(seed).random((n, bands, size, size), dtype=np.float32) * 100


def test_onnx_cpu_path_is_unchanged(conv_onnx):
    x = _batch()
    raw = ort.InferenceSession(conv_onnx, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    for device in (None, "cpu"):
        rt = OnnxRuntime(conv_onnx, providers=["cpu"], device=device, threads=1)
        assert rt._slots is None and rt.devices == (Device("cpu"),) and rt.precision == "fp32"
        np.testing.assert_array_equal(rt.run({"image": x})["mean"], raw)  # bit-identical
        assert describe_placement(rt, 8) == "device cpu, precision fp32, batch 8"


def test_onnx_fp16_against_fp32(conv_onnx):
    x = _batch()
    ref = OnnxRuntime(conv_onnx, providers=["cpu"], threads=1).run({"image": x})["mean"]
    rt = OnnxRuntime(conv_onnx, providers=["cpu"], threads=1, precision="fp16")
    assert rt.signature.inputs[0].dtype == np.float32 and rt.signature.outputs[0].dtype == np.float32
    y = rt.run({"image": x})["mean"]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=2e-3, atol=0.05)
    assert not np.array_equal(y, ref)  # it really ran in half precision


def test_onnx_fp16_the_cpu_provider_cannot_run_names_the_fix(conv_onnx, monkeypatch):
    real = ort.InferenceSession

    def no_fp16_kernels(source, *a, **kw):
        if isinstance(source, bytes):  # the converted model
            raise RuntimeError("NOT_IMPLEMENTED : Could not find an implementation for Conv(11) node")
        return real(source, *a, **kw)

    monkeypatch.setattr(ort, "InferenceSession", no_fp16_kernels)
    with pytest.raises(SpecError, match=r"(?s)cannot run .* fp16.*--device cuda.*--precision fp32"):
        OnnxRuntime(conv_onnx, providers=["cpu"], precision="fp16")


def test_onnx_bf16_is_refused(conv_onnx):
    with pytest.raises(SpecError, match="--precision fp16"):
        OnnxRuntime(conv_onnx, providers=["cpu"], precision="bf16")


def test_onnx_gpu_without_onnxruntime_gpu(conv_onnx, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(MissingExtraError, match="pip install onnxruntime-gpu"):
        OnnxRuntime(conv_onnx, device="cuda")


def test_onnx_gpu_provider_but_no_gpu(conv_onnx, monkeypatch):
    import tilecast.runtimes.onnx as onnx_mod

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnx_mod, "cuda_device_count", lambda: 0)
    with pytest.raises(DeviceError, match="no GPU"):
        OnnxRuntime(conv_onnx, device="cuda:0")
    monkeypatch.setattr(onnx_mod, "cuda_device_count", lambda: 2)
    with pytest.raises(DeviceError, match="cuda:2"):
        OnnxRuntime(conv_onnx, device="cuda:0,2")
    with pytest.raises(SpecError, match="names no GPU provider"):
        OnnxRuntime(conv_onnx, device="cuda", providers=["cpu"])


def test_onnx_gpu_sessions_are_pinned_to_their_device():
    from tilecast.runtimes.onnx import _device_providers

    chosen = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    got = _device_providers(chosen, Device("cuda", 1), trt_half=True)
    assert got == [("TensorrtExecutionProvider", {"device_id": 1, "trt_fp16_enable": True}),
                   ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


class _Rendezvous:
    """Wraps a session: every call waits until ``parties`` calls are inside at once (or fails after a timeout)."""

    def __init__(self, session, barrier: threading.Barrier, log: list) -> None:
        self.session, self.barrier, self.log = session, barrier, log

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, *a, **kw):
        self.log.append(id(self.session))
        self.barrier.wait()
        return self.session.run(*a, **kw)

    def run_with_iobinding(self, binding, *a, **kw):
        self.log.append(id(self.session))
        self.barrier.wait()
        return self.session.run_with_iobinding(binding, *a, **kw)


@pytest.mark.parametrize("bound", [False, True], ids=["session.run", "io_binding"])
def test_onnx_several_devices_run_concurrently_with_the_same_outputs(conv_onnx, bound):
    """Two CPU sessions stand in for two GPUs; ``bound`` sends calls through the IO-binding path GPUs take."""
    x = [_batch(seed=i) for i in range(6)]
    one = OnnxRuntime(conv_onnx, providers=["cpu"], threads=1)
    expected = [one.run({"image": b})["mean"] for b in x]
    rt = OnnxRuntime(conv_onnx, providers=["cpu"], threads=2, device=[Device("cpu"), Device("cpu")])
    rt.io_binding = bound
    assert rt.streams == 2 and len({id(s.session) for s in rt._slots.items}) == 2
    barrier, log = threading.Barrier(2, timeout=10), []
    for slot in rt._slots.items:
        slot.session = _Rendezvous(slot.session, barrier, log)
    with ThreadPoolExecutor(2) as ex:
        got = list(ex.map(lambda b: rt.run({"image": b})["mean"], x))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert len(set(log)) == 2  # both sessions took calls
    if bound:
        assert rt._host.allocated <= 2  # pinned-style staging reused per shape and call in flight


class _SmallDevice:
    """Wraps a session: more than two tiles raise ONNX Runtime's out-of-memory message."""

    def __init__(self, session) -> None:
        self.session = session

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, names, feed, *a, **kw):
        if len(next(iter(feed.values()))) > 2:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested "
                               "buffer of size 1073741824")
        return self.session.run(names, feed, *a, **kw)


def test_onnx_out_of_memory_splits_the_batch(conv_onnx):
    x = _batch(n=7)
    one = OnnxRuntime(conv_onnx, providers=["cpu"], threads=1)
    expected = np.concatenate([one.run({"image": x[a:b]})["mean"] for a, b in ((0, 2), (2, 4), (4, 6), (6, 7))])
    rt = OnnxRuntime(conv_onnx, providers=["cpu"], threads=2, device=[Device("cpu"), Device("cpu")])
    for slot in rt._slots.items:
        slot.session = _SmallDevice(slot.session)
    np.testing.assert_array_equal(rt.run({"image": x})["mean"], expected)
    assert rt.device_batch == 2
    np.testing.assert_array_equal(rt.run({"image": x})["mean"], expected)  # starts from the size that fitted
    with pytest.raises(DeviceError, match="smaller --tile"):
        for slot in rt._slots.items:
            slot.session.run = lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
        rt.run({"image": x[:1]})


def test_onnx_bad_batch_still_names_the_tile(conv_onnx):
    rt = OnnxRuntime(conv_onnx, providers=["cpu"], threads=2, device=[Device("cpu"), Device("cpu")])
    with pytest.raises(TileSizeError, match="expects"):
        rt.run({"image": np.zeros((1, 2, 8, 8), np.float32)})


# --- PyTorch ---------------------------------------------------------------------------------------------------------

def _scripted_models(d) -> dict[str, str]:
    """A small conv net, and one that refuses more than two tiles with CUDA's out-of-memory message (a small
    device), as TorchScript files."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 2, 1)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.rand(p.shape, generator=g) - 0.5)

        def forward(self, image):
            return self.c2(torch.relu(self.c1(image * 0.01)))

    class Limited(torch.nn.Module):
        def forward(self, image):
            if image.shape[0] > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return image * 2.0 + 1.0

    torch.jit.save(torch.jit.script(Net().eval()), str(d / "net.pt"))
    torch.jit.save(torch.jit.script(Limited().eval()), str(d / "limited.pt"))
    return {"net": str(d / "net.pt"), "limited": str(d / "limited.pt")}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def scripts(torch, tmp_path_factory):
    return _scripted_models(tmp_path_factory.mktemp("torch"))


def _torch(path, **kw):
    from tilecast.runtimes.torch import TorchRuntime

    return TorchRuntime(path, **kw)


def test_torch_cpu_path_is_unchanged(scripts, torch):
    x = _batch()
    module = torch.jit.load(scripts["net"], map_location="cpu").eval()
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()
    rt = _torch(scripts["net"], device="cpu")
    assert rt.streams == 1 and rt.devices == (Device("cpu"),) and not rt._staging and not rt.releases_inputs
    np.testing.assert_array_equal(rt.run({"image": x})["output"], ref)
    assert repr(rt).endswith("device=cpu)")
    assert rt.batch_limit({"image": x}) is None and rt.device_batch is None


@pytest.mark.parametrize("precision,tol", [("bf16", 0.05), ("fp16", 0.01)])
def test_torch_reduced_precision_against_fp32(scripts, precision, tol):
    x = _batch()
    ref = _torch(scripts["net"], device="cpu").run({"image": x})["output"]
    rt = _torch(scripts["net"], device="cpu", precision=precision)
    try:
        y = rt.run({"image": x})["output"]
    except TileSizeError as exc:  # an older CPU build without half-precision convolutions
        pytest.skip(f"this torch cannot run {precision} convolutions on CPU: {exc}")
    assert y.dtype == np.float32  # outputs come back in the dtype the output bands are cast from
    np.testing.assert_allclose(y, ref, atol=tol * np.abs(ref).max())
    assert not np.array_equal(y, ref)
    assert describe_placement(rt) == f"device cpu, precision {precision}"


def test_torch_staged_path_plans_batches_from_free_memory(scripts):
    x = _batch(n=7)
    plain = _torch(scripts["net"], device="cpu")
    ref = np.concatenate([plain.run({"image": x[a:b]})["output"] for a, b in ((0, 3), (3, 6), (6, 7))])
    rt = _torch(scripts["net"], device="cpu", staging=True)
    assert rt.releases_inputs  # batches are copied into staging buffers: a runner may reuse its arrays
    tile = x[:1].nbytes + ref[:1].nbytes  # what a tile costs on the CPU: its input and output
    rt.free_memory = lambda device: int(3 * tile / 0.8)  # a device with room for three tiles
    assert rt.batch_limit({"image": x}) == 3  # what a runner may take as its batch size
    np.testing.assert_array_equal(rt.run({"image": x})["output"], ref)  # calls of 3, 3 and 1 tiles
    assert rt.device_batch == 3
    assert describe_placement(rt, 8) == "device cpu, precision fp32, batch 8 (device memory allows 3 per call)"
    np.testing.assert_array_equal(rt.run({"image": x})["output"], ref)
    assert rt._host.allocated <= 3  # staging reused: the planning probe's shape, a full chunk, the last chunk


def test_torch_out_of_memory_halves_the_batch(scripts):
    x = _batch(n=9)
    rt = _torch(scripts["limited"], device="cpu", staging=True)
    np.testing.assert_array_equal(rt.run({"image": x})["output"], x * 2 + 1)
    assert rt.device_batch == 2


def test_torch_out_of_memory_on_one_tile_is_a_device_error(scripts):
    rt = _torch(scripts["limited"], device="cpu")
    with pytest.raises(DeviceError, match="--precision fp16"):
        rt.run({"image": _batch(n=3)})


def test_torch_several_devices_run_concurrently_with_the_same_outputs(scripts):
    """Two CPU replicas stand in for two GPUs: calls at once go to both, with one replica's results."""
    x = [_batch(seed=i) for i in range(6)]
    one = _torch(scripts["net"], device="cpu")
    expected = [one.run({"image": b})["output"] for b in x]
    rt = _torch(scripts["net"], device=[Device("cpu"), Device("cpu")])
    assert rt.streams == 2
    replicas = [s.replica for s in rt._slots.items]
    assert replicas[0] is not replicas[1] and replicas[0].module is not replicas[1].module
    barrier, used = threading.Barrier(2, timeout=10), []
    for r in replicas:
        real = r.module

        def meeting(*args, _real=real, _r=r):
            used.append(id(_r))
            barrier.wait()
            return _real(*args)

        r.module = meeting
    with ThreadPoolExecutor(2) as ex:
        got = list(ex.map(lambda b: rt.run({"image": b})["output"], x))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert len(set(used)) == 2


def test_torch_unknown_device_names_the_fix(scripts):
    with pytest.raises((DeviceError, SpecError), match="cuda:0,1"):
        _torch(scripts["net"], device="cuda:zero")
    if not _cuda():
        with pytest.raises(DeviceError, match="--device cpu"):
            _torch(scripts["net"], device="cuda")


@needs_gpu
def test_torch_cuda_matches_cpu(scripts):
    x = _batch(n=5)
    ref = _torch(scripts["net"], device="cpu").run({"image": x})["output"]
    rt = _torch(scripts["net"], device="cuda:all")
    assert rt._staging and rt.streams == 2 * len(rt.devices)
    np.testing.assert_allclose(rt.run({"image": x})["output"], ref, atol=1e-4)
    assert rt.device_batch is not None and rt.device_batch >= 1


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers() or not _cuda(),
                    reason="needs onnxruntime-gpu and a CUDA GPU")
def test_onnx_cuda_matches_cpu(conv_onnx):
    x = _batch(n=5)
    ref = OnnxRuntime(conv_onnx, providers=["cpu"]).run({"image": x})["mean"]
    rt = OnnxRuntime(conv_onnx, device="cuda:all")
    assert rt.io_binding and rt.streams == 2 * len(rt.devices)
    np.testing.assert_allclose(rt.run({"image": x})["mean"], ref, atol=1e-4)


# --- the user surface ------------------------------------------------------------------------------------------------

def test_loaders_take_device_and_precision(conv_onnx, scripts):
    import tilecast

    m = tilecast.Model.from_onnx(conv_onnx, providers=["cpu"], device="cpu", precision="fp16", input_tile_size=16)
    assert m.runtime.precision == "fp16" and m.runtime.devices == (Device("cpu"),)
    t = tilecast.Model.from_torch(scripts["net"], device="cpu", precision="bf16", input_tile_size=16)
    assert t.runtime.precision == "bf16" and "precision=bf16" in repr(t)


def _card_passes_placement() -> bool:
    from tilecast.card.files import open_runtime

    return "precision" in inspect.signature(open_runtime).parameters


needs_card_change = pytest.mark.skipif(not _card_passes_placement(), reason="tilecast.card.files.open_runtime does "
                                       "not pass device/precision yet (the gpu branch's card patch)")


def _predict(tmp_path, model, *extra):
    from click.testing import CliRunner
    from tests.conftest import write_raster

    from tilecast.cli import main

    src = write_raster(tmp_path / "in.tif", _batch(n=1, size=40)[0])
    args = ["predict", src, "--model", model, "--tile", "16", "--overlap", "2", "--layout", "NCHW",
            "--output-band", "mean:float32", "-o", str(tmp_path / "out.tif"), "--overwrite", *extra]
    return CliRunner().invoke(main, args)


def test_cli_flags_are_in_the_model_section():
    from tilecast.cli.predict import SECTIONS

    assert {"device", "precision"} <= set(SECTIONS["Model and tiling"])


@needs_card_change
def test_cli_asking_for_a_gpu_on_a_cpu_machine_is_a_clear_error(tmp_path, conv_onnx):
    if _cuda() or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a GPU runtime")
    result = _predict(tmp_path, conv_onnx, "--device", "cuda")
    assert result.exit_code != 0
    assert "onnxruntime-gpu" in result.output and "Traceback" not in result.output


def test_cli_device_with_an_endpoint_is_refused():
    from tilecast.cli.predict import load_model

    with pytest.raises(SpecError, match="--endpoint"):
        load_model(None, {"endpoint": "http://127.0.0.1:1/v2/models/m", "device": "cuda"}, {})


@needs_card_change
def test_cli_verbose_names_device_precision_and_batch(tmp_path, conv_onnx):
    import rasterio

    result = _predict(tmp_path, conv_onnx, "--device", "cpu", "--precision", "fp16", "--batch-size", "3", "-v")
    assert result.exit_code == 0, result.output
    assert "device cpu, precision fp16, batch 3" in result.output
    (tmp_path / "ref").mkdir()
    ref = _predict(tmp_path / "ref", conv_onnx)
    assert ref.exit_code == 0, ref.output
    with rasterio.open(tmp_path / "out.tif") as a, rasterio.open(tmp_path / "ref" / "out.tif") as b:
        assert a.dtypes == b.dtypes == ("float32",)
        np.testing.assert_allclose(a.read(), b.read(), rtol=2e-3, atol=0.05)


@needs_card_change
def test_cli_bf16_with_onnx_names_the_fix(tmp_path, conv_onnx):
    result = _predict(tmp_path, conv_onnx, "--precision", "bf16")
    assert result.exit_code != 0 and "--precision fp16" in result.output


def test_onnx_gpu_provider_that_does_not_start(conv_onnx, monkeypatch):
    """onnxruntime-gpu without its CUDA libraries falls back to the CPU by itself: an explicit --device is an error
    that names the missing libraries; without one the model runs on the CPU with a warning, as before."""
    import tilecast.runtimes.onnx as onnx_mod
    from tilecast.errors import TilecastWarning

    real, session = ort.get_available_providers(), ort.InferenceSession

    def cpu_only(source, sess_options=None, providers=None, **kw):  # what ORT does when CUDA libraries do not load
        return session(source, sess_options=sess_options, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    monkeypatch.setattr(onnx_mod, "cuda_device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"cuDNN.*onnxruntime-gpu\[cuda,cudnn\]"):
        OnnxRuntime(conv_onnx, device="cuda")
    with pytest.warns(TilecastWarning, match="runs on the CPU"):
        rt = OnnxRuntime(conv_onnx, threads=1)
    assert rt._slots is None and rt.devices == (Device("cpu"),) and not rt.io_binding
    x = _batch()
    np.testing.assert_array_equal(rt.run({"image": x})["mean"],
                                  OnnxRuntime(conv_onnx, providers=["cpu"], threads=1).run({"image": x})["mean"])


def test_onnx_placement_of_providers_and_devices(monkeypatch):
    import tilecast.runtimes.onnx as onnx_mod

    class FakeOrt:
        @staticmethod
        def get_available_providers():
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

        get_all_providers = get_available_providers

    monkeypatch.setattr(onnx_mod, "cuda_device_count", lambda: 2)
    trt = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_mod._placement(FakeOrt, ["tensorrt", "cuda", "cpu"], "cuda:all") == (
        trt, (Device("cuda", 0), Device("cuda", 1)))
    assert onnx_mod._placement(FakeOrt, ["tensorrt", "cuda"], None) == (trt[:2], (Device("cuda", 0),))
    assert onnx_mod._placement(FakeOrt, None, None) == (trt[1:], (Device("cuda", 0),))
    assert onnx_mod._placement(FakeOrt, None, "cuda:1") == (trt[1:], (Device("cuda", 1),))
    assert onnx_mod._placement(FakeOrt, ["cuda"], "cpu") == (["CPUExecutionProvider"], (Device("cpu"),))


def test_pinned_allocator_views_and_frees_its_memory(monkeypatch):
    """``cudart_pinned`` with a stand-in for libcudart (ctypes buffers instead of page-locked memory): the numpy view
    covers the allocation, and the memory goes back when the buffer is dropped; a failed allocation falls back."""
    import ctypes
    import gc

    import tilecast.runtimes.devices as devices

    class FakeCudart:
        def __init__(self) -> None:
            self.live: dict[int, ctypes.Array] = {}
            self.freed: list[int] = []
            self.fail = False

        def cudaHostAlloc(self, ptr, size, flags):
            if self.fail:
                return 2  # cudaErrorMemoryAllocation
            buf = (ctypes.c_byte * size.value)()
            self.live[ctypes.addressof(buf)] = buf
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_void_p))[0] = ctypes.addressof(buf)
            return 0

        def cudaFreeHost(self, ptr):
            self.freed.append(ptr.value)
            return 0

    lib = FakeCudart()
    monkeypatch.setattr(devices, "_cudart", lambda: lib)
    pool = HostBuffers(devices.cudart_pinned())
    x = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    with pool.staged([x]) as (buf,):
        np.testing.assert_array_equal(buf.array, x)
        assert buf.array.ctypes.data == buf.handle.value in lib.live
    pool.clear()
    del buf
    gc.collect()
    assert lib.freed == list(lib.live)
    lib.fail = True
    fallback = devices.cudart_pinned()((4,), np.dtype(np.uint16))
    assert fallback.array.shape == (4,) and fallback.array.dtype == np.uint16


def test_an_unknown_provider_name_is_an_error_not_a_silent_cpu_run(conv_onnx):
    """A provider this build lacks is left out (one command runs everywhere); a name ONNX Runtime does not know at
    all is a typo, which ran on the CPU without a word."""
    with pytest.raises(SpecError, match=r"unknown ONNX Runtime provider 'cdua'.*cuda"):
        OnnxRuntime(conv_onnx, providers=["cdua", "cpu"])
    with pytest.raises(SpecError, match="'cdua'"):
        OnnxRuntime(conv_onnx, providers=["cdua"], device="cuda")
    OnnxRuntime(conv_onnx, providers=["tensorrt", "cuda", "cpu"], threads=1)  # known, absent here: the CPU runs it
