"""GPU review: bugs in the GPU code paths that a real GPU would show, each shown here on the CPU with fakes (two
slots on one replica for a GPU's two CUDA streams, sessions whose providers do not start, a fake ``preload_dlls``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tilecast.runtimes.devices import Device, Slots, is_out_of_memory

ort = pytest.importorskip("onnxruntime")


def _batch(n=4, bands=3, size=16, seed=0):
    return np.random.default_rng(seed).random((n, bands, size, size), dtype=np.float32) * 100


# --- PyTorch: the free memory of a GPU is shared by its streams ------------------------------------------------------


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.test_gpu_paths import _scripted_models

    return _scripted_models(tmp_path_factory.mktemp("review"))


def test_torch_plan_shares_free_memory_between_the_streams_of_a_device(scripts):
    """A GPU runs STREAMS_PER_GPU calls at once, each as large as the plan allows: each may take only its share of
    the free memory, or two concurrent full-size calls ask for 2 x 80 % of it and run out of memory."""
    from tilecast.runtimes.torch import TorchRuntime, _Slot

    x = _batch(n=7)
    rt = TorchRuntime(scripts["net"], device="cpu", staging=True)
    replica = rt._slots.items[0].replica
    rt._slots = Slots([_Slot(replica), _Slot(replica)])  # one device, two streams, as on a GPU
    ref = TorchRuntime(scripts["net"], device="cpu").run({"image": x[:1]})["output"]
    tile = x[:1].nbytes + ref.nbytes
    rt.free_memory = lambda device: int(6 * tile / 0.8)  # room for six tiles on the device in all
    assert rt.batch_limit({"image": x}) == 3  # three per call, two calls in flight
    assert rt.device_batch == 3


# --- ONNX Runtime: GPU providers that do not start -------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory):
    from tests.onnx_models import mean_conv

    return mean_conv(tmp_path_factory.mktemp("review_onnx") / "conv.onnx", bands=3, k=3)


class _Reported:
    """A CPU session that reports the providers a GPU session would have (construction only, never run)."""

    def __init__(self, session, providers: list[str]) -> None:
        self.session, self.providers = session, providers

    def __getattr__(self, name):
        return getattr(self.session, name)

    def get_providers(self) -> list[str]:
        return self.providers


def _gpu_onnx(monkeypatch, providers: list[str], session):
    """ONNX Runtime claiming ``providers`` on a one-GPU machine, its sessions made by ``session(source, providers,
    kwargs, real)``."""
    import tilecast.runtimes.onnx as onnx_mod

    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)
    monkeypatch.setattr(onnx_mod, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(onnx_mod, "cudart_pinned", lambda: None)
    monkeypatch.setattr(
        ort,
        "InferenceSession",
        lambda source, sess_options=None, providers=None, **kw: session(source, providers, kw, real),
    )


def _names(providers) -> list[str]:
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def test_onnx_gpu_provider_that_raises_is_a_device_error_not_a_bad_model(conv_onnx, monkeypatch):
    """ONNX Runtime raises (not falls back) when the CUDA provider loads but cannot start (no device visible, a
    driver too old, CUDA_PATH set to a broken toolkit), and its own fallback then retries with ``provider_options``
    None: the error must name the GPU, not call the model file invalid; without --device, the CPU runs it."""
    from tilecast.errors import DeviceError, TilecastWarning
    from tilecast.runtimes.onnx import OnnxRuntime

    seen: list[dict] = []

    def session(source, providers, kw, real):
        seen.append(kw)
        if "CUDAExecutionProvider" in _names(providers):
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected ; GPU=0 ; hostname=x")
        return real(source, providers=providers)

    _gpu_onnx(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], session)
    with pytest.raises(DeviceError, match=r"(?s)no CUDA-capable device.*--device cpu"):
        OnnxRuntime(conv_onnx, device="cuda")
    assert seen[0].get("enable_fallback") == 0  # ONNX Runtime's own fallback would drop device_id (to cuda:0)
    with pytest.warns(TilecastWarning, match="runs on the CPU"):
        rt = OnnxRuntime(conv_onnx, threads=1)
    assert rt.devices == (Device("cpu"),) and not rt.io_binding
    assert rt.run({"image": _batch()})["mean"].shape == (4, 1, 16, 16)


def test_onnx_preloads_the_pip_cuda_libraries_before_giving_up(conv_onnx, monkeypatch):
    """onnxruntime-gpu finds CUDA and cuDNN installed as pip packages (the fix the error names) only after
    onnxruntime.preload_dlls() (ONNX Runtime >= 1.21) or an earlier import of torch: tried once before failing."""
    from tilecast.runtimes import onnx as onnx_mod
    from tilecast.runtimes.onnx import OnnxRuntime

    state = {"preloaded": 0}

    def preload_dlls(**kw):
        print("Failed to load libcudnn_adv.so.9: not there")  # it prints; tilecast keeps its stdout clean
        state["preloaded"] += 1

    def session(source, providers, kw, real):
        cpu = real(source, providers=["CPUExecutionProvider"])
        if state["preloaded"] and "CUDAExecutionProvider" in _names(providers):
            return _Reported(cpu, ["CUDAExecutionProvider", "CPUExecutionProvider"])
        return cpu  # what ONNX Runtime does when libcudart/libcudnn do not load: a warning, the CPU

    _gpu_onnx(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], session)
    monkeypatch.setattr(ort, "preload_dlls", preload_dlls, raising=False)
    monkeypatch.setattr(onnx_mod, "_PRELOADED", [], raising=False)
    rt = OnnxRuntime(conv_onnx, device="cuda")
    assert rt.io_binding and rt.devices == (Device("cuda", 0),) and state["preloaded"] == 1


def test_onnx_tensorrt_fp16_that_does_not_start_converts_the_model_for_cuda(conv_onnx, monkeypatch):
    """With --providers tensorrt,cuda --precision fp16 the model is left in fp32 for TensorRT's own fp16 mode; when
    TensorRT does not start (libnvinfer missing: ONNX Runtime warns and goes on with CUDA), the CUDA provider must get
    the converted model, or the run is fp32 while -v says fp16."""
    from tilecast.runtimes.onnx import OnnxRuntime

    made: list[tuple[type, list[str]]] = []

    def session(source, providers, kw, real):
        names = _names(providers)
        made.append((type(source), names))
        cpu = real(source, providers=["CPUExecutionProvider"])
        return _Reported(cpu, [n for n in names if n != "TensorrtExecutionProvider"])

    trt = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    _gpu_onnx(monkeypatch, trt, session)
    rt = OnnxRuntime(conv_onnx, providers=["tensorrt", "cuda", "cpu"], device="cuda", precision="fp16")
    assert made[0] == (str, trt)  # TensorRT asked first, with the fp32 model and its fp16 mode
    assert made[-1][0] is bytes and "TensorrtExecutionProvider" not in made[-1][1]  # then CUDA, converted
    assert rt.session.get_providers()[0] == "CUDAExecutionProvider" and rt.precision == "fp16"


def test_cublas_allocation_failure_is_out_of_memory():
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))


def test_torch_staging_buffers_go_back_only_after_the_stream_finished_even_on_errors(scripts):
    """A call's copy from its pinned staging buffer is queued on the slot's stream; the buffer may be given back (and
    refilled by the next call) only once the stream is done with it: on success (the outputs' synchronize) and when
    the module fails after the copy was queued (here an out-of-memory error that the split then retries)."""
    import contextlib

    from tilecast.runtimes.torch import TorchRuntime, _Slot

    log: list[str] = []

    class FakeStream:  # stands in for torch.cuda.Stream: records when the host waits for it
        def synchronize(self) -> None:
            log.append("synchronize")

    rt = TorchRuntime(scripts["limited"], device="cpu", staging=True)
    rt._slots = Slots([_Slot(rt._slots.items[0].replica, FakeStream())])
    rt._stream = lambda slot: contextlib.nullcontext()  # the CPU build has no CUDA stream context
    release = rt._host.release
    rt._host.release = lambda buf: (log.append("release"), release(buf))
    x = _batch(n=3)
    np.testing.assert_array_equal(rt.run({"image": x})["output"], x * 2 + 1)  # 3 fails, then 2 + 1
    assert log[:2] == ["synchronize", "release"]  # the failed call too
    assert all(log[i - 1] == "synchronize" for i, e in enumerate(log) if e == "release")
