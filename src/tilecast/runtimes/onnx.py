"""ONNX Runtime, the embedded default.

On the CPU a batch goes to ``InferenceSession.run`` as it always did. On GPUs (the CUDA and TensorRT execution
providers) each device has its own session and :data:`STREAMS_PER_GPU` calls in flight; a call copies its batch into a
pinned host buffer, updates a device tensor kept per batch shape from it and runs with IO binding, so inputs are not
copied again inside the session and outputs come back in one copy each.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import DeviceError, MissingExtraError, ModelLoadError, SpecError, TilecastWarning, TileSizeError
from ..resources import Resources
from .base import BaseRuntime, Signature, TensorSpec
from .devices import (
    Device,
    HostBuffers,
    Slots,
    cuda_device_count,
    cudart_pinned,
    interleave,
    is_out_of_memory,
    numpy_staging,
    parse_devices,
    parse_precision,
    run_in_chunks,
)

__all__ = ["GPU_PROVIDERS", "STREAMS_PER_GPU", "OnnxRuntime", "to_fp16"]

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
"""The execution providers that run on a CUDA device (``device_id`` per session)."""

STREAMS_PER_GPU = 2
"""Calls in flight per GPU: while one call's batch is copied to the device, the other's runs."""

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(uint32)": np.uint32,
    "tensor(int32)": np.int32,
    "tensor(uint64)": np.uint64,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
_ALIASES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider",
            "openvino": "OpenVINOExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
            "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider"}


def _spec(arg) -> TensorSpec:  # onnxruntime.NodeArg
    shape = None if arg.shape is None else tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    dtype = _ORT_DTYPES.get(arg.type)
    return TensorSpec(arg.name, shape, np.dtype(dtype) if dtype is not None else None)


@dataclass
class _Slot:
    """One stream of calls: a device's session and the device tensors it reuses per input shape."""

    session: Any
    device: Device
    inputs: dict[tuple, Any] = field(default_factory=dict)


class OnnxRuntime(BaseRuntime):
    """An ``onnxruntime.InferenceSession`` behind the runtime contract.

    ``providers`` picks execution providers (``"cuda"``, ``"tensorrt"``, ``"openvino"``, ``"cpu"`` or full ORT names);
    unavailable ones are skipped so the same call works on a CPU-only machine. ``threads``: CPU threads for the model
    in all, by default the resource policy's ``model_threads`` (an explicit, affinity-aware count, so ONNX Runtime
    does not pin them). ``streams``: how many calls runners keep in flight at once, each with ``threads // streams``
    intra-op threads (ONNX Runtime sessions run concurrent calls safely); by default
    :meth:`~tilecast.resources.Resources.streams_for` on the CPU, :data:`STREAMS_PER_GPU` per GPU. ``resources``: the
    policy those defaults come from (:meth:`Resources.detect() <tilecast.resources.Resources.detect>` when None).

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"cuda:0,1"`` or ``"cuda:all"`` (one session per GPU, concurrent
    calls routed to different GPUs); None: the providers decide (the first GPU when the CUDA provider is there).
    ``precision``: ``"fp32"`` (default) or ``"fp16"`` (the model's float tensors converted, inputs and outputs kept
    in their dtypes; with TensorRT, its fp16 mode).
    """

    releases_inputs = True
    """Once ``run`` returns, ONNX Runtime holds no reference to the batch and its outputs are copies (an Identity
    graph included), so a runner may stack the next batch into the same arrays."""

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        streams: int | None = None,
        resources: Resources | None = None,
        *,
        device: str | Sequence[str | Device] | None = None,
        precision: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        if not isinstance(model, bytes):
            path = Path(model)
            if not path.exists():
                raise ModelLoadError(f"model file not found: {path}; check the path")
            self.path: str | None = str(path)
        else:
            self.path = None
        self.precision = parse_precision(precision)
        chosen, self.devices = _placement(ort, providers, device)
        gpu = chosen[0] in GPU_PROVIDERS
        if self.precision == "bf16":
            raise SpecError("ONNX Runtime runs tilecast's models in fp32 or fp16, not bf16; use --precision fp16 "
                            "(on a GPU) or fp32, or a TorchScript export of the model for bf16")
        policy = resources or Resources.detect()
        threads = threads or policy.model_threads
        self._rebuild = (model, providers, threads, resources, device, precision) if streams is None else None
        """How to open this model again with one stream (:meth:`one_stream`); None when the streams were given."""
        if streams is None:
            streams = (STREAMS_PER_GPU * len(self.devices) if gpu else
                       policy.streams_for(threads) if len(self.devices) == 1 and chosen == ["CPUExecutionProvider"]
                       else len(self.devices))
        if streams < 1:
            raise SpecError(f"streams must be at least 1, got {streams}")
        self.streams = streams
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = max(1, threads // streams)
        opts.log_severity_level = 3
        # Spinning intra-op threads would take the cores that tilecast's reads and writes need between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        trt_half = self.precision == "fp16" and "TensorrtExecutionProvider" in chosen
        source: str | bytes = self.path or model  # type: ignore[assignment]
        if self.precision == "fp16" and not trt_half:
            source = to_fp16(source)
        self._gpu_error: str | None = None
        """What the GPU provider raised when it did not start (None: it started, or fell back with a warning)."""
        sessions, chosen = self._start(source, opts, chosen, trt_half, gpu)
        if gpu and not _on_gpus(sessions):
            said = f" ({self._gpu_error})" if self._gpu_error else ""
            if device is not None:
                raise DeviceError(
                    f"ONNX Runtime could not start {chosen[0]} for --device {device}{said}. It fell back to the CPU: "
                    "are the CUDA and cuDNN libraries it needs installed? pip install 'onnxruntime-gpu[cuda,cudnn]' "
                    "brings them; or run with --device cpu")
            warnings.warn(f"ONNX Runtime could not start {chosen[0]}{said or ' (CUDA or cuDNN libraries missing?)'}; "
                          "the model runs on the CPU", TilecastWarning, stacklevel=2)
            self.__init__(model, ["cpu"], threads, None, resources, precision=precision)  # type: ignore[misc]
            return
        self.session = sessions[0]
        self._slots: Slots[_Slot] | None = None
        if gpu or len(sessions) > 1:  # one session per device, streams spread over them
            per = max(1, streams // len(sessions))
            self._slots = Slots(interleave([[_Slot(s, d) for _ in range(per)]
                                            for s, d in zip(sessions, self.devices, strict=True)]))
            self.streams = len(self._slots)
        self.io_binding = gpu
        """Whether calls go through IO binding and staging buffers (on GPUs; any provider can, which the tests use)."""
        self._host = HostBuffers((cudart_pinned() or numpy_staging) if gpu else numpy_staging)
        self.device_batch: int | None = None
        """The most tiles per call after an out-of-memory error split a batch (None: none did; ONNX Runtime's
        memory arena grows to what a batch needs)."""
        self.signature = Signature(
            tuple(_spec(a) for a in self.session.get_inputs()),
            tuple(_spec(a) for a in self.session.get_outputs()),
        )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def _start(self, source: str | bytes, opts: Any, chosen: list[str], trt_half: bool,
               gpu: bool) -> tuple[list[Any], list[str]]:
        """One session per device, and the providers they were asked for. On GPUs a provider that did not start is
        tried again once ``preload_dlls`` has run, and TensorRT that did not start leaves its fp16 to CUDA (with the
        model converted)."""

        def open_sessions(providers: list[str], trt: bool, model: str | bytes) -> list[Any]:
            return [self._session(model, opts, _device_providers(providers, d, trt)) for d in self.devices]

        sessions = open_sessions(chosen, trt_half, source)
        if gpu and not _on_gpus(sessions) and self._gpu_error is None and _preload_cuda(self._ort):
            sessions = open_sessions(chosen, trt_half, source)  # CUDA and cuDNN from pip packages load once preloaded
        if trt_half and _on_gpus(sessions) and "TensorrtExecutionProvider" not in sessions[0].get_providers():
            # TensorRT did not start (ONNX Runtime warns and goes on with CUDA): CUDA gets the model in fp16.
            chosen = [p for p in chosen if p != "TensorrtExecutionProvider"]
            sessions = open_sessions(chosen, False, to_fp16(source))
        return sessions, chosen

    def one_stream(self) -> OnnxRuntime:
        """This model in a new session with all the threads in one stream (see
        :func:`~tilecast.runtimes.base.one_stream_of`); itself when it runs one stream already, on accelerators, or
        when the streams were given explicitly."""
        if self.streams == 1 or self._rebuild is None or self._slots is not None:
            return self
        model, providers, threads, resources, device, precision = self._rebuild
        return OnnxRuntime(model, providers, threads, 1, resources, device=device, precision=precision)

    def _session(self, source: str | bytes, opts: Any, providers: list) -> Any:
        """One session. With a GPU provider ONNX Runtime's own fallback is off (it retries without the provider
        options, so on cuda:0 whatever ``device_id`` said); a GPU provider that raises while the model loads on the
        CPU gives the CPU session, and :attr:`_gpu_error` says why."""
        gpu = any((p[0] if isinstance(p, tuple) else p) in GPU_PROVIDERS for p in providers)
        try:
            return self._ort.InferenceSession(source, sess_options=opts, providers=providers,
                                              **({"enable_fallback": 0} if gpu else {}))
        except Exception as exc:
            if gpu:
                try:
                    cpu = self._ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
                except Exception:
                    cpu = None
                if cpu is not None:  # the model is fine: the GPU provider is what failed
                    self._gpu_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                    return cpu
            if self.precision != "fp32":
                raise SpecError(
                    f"ONNX Runtime's {providers[0] if isinstance(providers[0], str) else providers[0][0]} cannot run "
                    f"{self.path or 'the model'} in {self.precision}: {str(exc)[:300]}. Run it on a GPU "
                    "(--device cuda, with onnxruntime-gpu) or with --precision fp32"
                ) from None
            raise ModelLoadError(
                f"ONNX Runtime could not load {self.path or 'the model bytes'}: {exc}. "
                "Is it a valid .onnx file? Re-export the model, or check the file is complete."
            ) from None

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(batch)

    def run_released(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`run`, then shrink ONNX Runtime's memory arena back (on the CPU): for a probe at a size the run may
        not use, which would otherwise keep its activations' memory for the life of the session."""
        if self._slots is not None:
            return self._run(batch)
        options = self._ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return self._run(batch, options)

    def _run(self, batch: Mapping[str, np.ndarray], options: Any = None) -> dict[str, np.ndarray]:
        try:
            if self._slots is None:
                values = self.session.run(None, dict(batch), run_options=options)
            else:
                with self._slots.lease() as slot:
                    return self._run_split(slot, batch)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise DeviceError(f"the device ran out of memory on one tile ({str(exc)[:200]}); use a smaller "
                                  "--tile, --precision fp16, or another device") from None
            shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in batch.items())
            expected = "; ".join(t.describe() for t in self.signature.inputs)
            raise TileSizeError(
                f"the model rejected the batch ({shapes}); it expects {expected}. "
                f"Match --tile/--overlap (and the layout and dtype) to the model's input. ONNX Runtime said: {exc}"
            ) from None
        return dict(zip(self.signature.output_names, values, strict=True))

    def batch_limit(self, batch: Mapping[str, np.ndarray]) -> int | None:
        """The most tiles per call the device took (after an out-of-memory split); None: no limit is known (ONNX
        Runtime's arena grows to what a batch needs, and nothing reads its free memory)."""
        return self.device_batch

    def _run_split(self, slot: _Slot, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A call on one device; on an out-of-memory error the batch is split in halves until the parts fit, and
        later calls start from the size that fitted (:attr:`device_batch`)."""
        def call(part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(self.signature.output_names, self._run_on(slot, part), strict=True))

        n = min((len(v) for v in batch.values()), default=0)
        limit = self.device_batch or max(1, n)
        out, used = run_in_chunks(call, batch, limit)
        if used < limit:
            self.device_batch = used
        return out

    def _run_on(self, slot: _Slot, batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One call on one device: ``session.run`` on the CPU; on a GPU, the batch through pinned staging buffers
        into device tensors reused per shape, then IO binding (outputs allocated on the device, copied back once)."""
        if not self.io_binding:
            return slot.session.run(None, dict(batch))
        ort, kind, index = self._ort, slot.device.kind, slot.device.index
        binding = slot.session.io_binding()
        arrays = [np.ascontiguousarray(v) for v in batch.values()]
        with self._host.staged(arrays) as bufs:
            for name, buf in zip(batch, bufs, strict=True):
                key = (name, buf.array.shape, buf.array.dtype.str)
                value = slot.inputs.get(key)
                if value is None:
                    if len(slot.inputs) >= 8:  # a run has one shape, plus its last batch's
                        slot.inputs.clear()
                    value = slot.inputs[key] = ort.OrtValue.ortvalue_from_shape_and_type(
                        buf.array.shape, buf.array.dtype, kind, index)
                value.update_inplace(buf.array)
                binding.bind_ortvalue_input(name, value)
            for name in self.signature.output_names:
                binding.bind_output(name, kind, index)
            slot.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
        self._slots = None
        self._host.clear()

    def __repr__(self) -> str:
        extra = "" if len(self.devices) == 1 else f", devices={','.join(str(d) for d in self.devices)}"
        extra += "" if self.precision == "fp32" else f", precision={self.precision}"
        providers = self.session.get_providers() if self.session is not None else []
        return f"OnnxRuntime({self.path or '<bytes>'}, providers={providers}, streams={self.streams}{extra})"


def _on_gpus(sessions: Sequence[Any]) -> bool:
    """Whether every session has a GPU provider (ONNX Runtime leaves one out, with a warning, when it does not load)."""
    return all(any(p in GPU_PROVIDERS for p in s.get_providers()) for s in sessions)


_PRELOADED: list[bool] = []  # preload_dlls is tried once per process


def _preload_cuda(ort: Any) -> bool:
    """``onnxruntime.preload_dlls()`` (ONNX Runtime >= 1.21), once: the CUDA and cuDNN libraries that pip installs
    (``onnxruntime-gpu[cuda,cudnn]``, the ``nvidia-*`` wheels) are not on the loader's path, and ONNX Runtime finds
    them only so (or after ``import torch``). Its messages go to stdout, which tilecast may be writing; they are
    dropped. True when it ran."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or _PRELOADED:
        return False
    _PRELOADED.append(True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            preload()
    except Exception:  # a missing library is printed, not raised; anything else: the sessions say the rest
        return False
    return True


def _provider_names(ort, names: Sequence[str]) -> list[str]:
    """ONNX Runtime's names for ``names`` (``cuda`` -> ``CUDAExecutionProvider``). A provider missing from this
    build is left out later, so that one command runs everywhere; a name ONNX Runtime does not know at all is a typo,
    which would otherwise run on the CPU without a word."""
    out = [_ALIASES.get(p.strip().lower(), p.strip()) for p in names]
    unknown = [n for n, p in zip(names, out, strict=True) if p not in ort.get_all_providers()]
    if unknown:
        raise SpecError(f"unknown ONNX Runtime provider {', '.join(map(repr, unknown))}; use {', '.join(_ALIASES)} "
                        "or ONNX Runtime's own names (e.g. CUDAExecutionProvider)")
    return out


def _placement(ort, providers: Sequence[str] | None, device: str | Sequence[str | Device] | None
               ) -> tuple[list[str], tuple[Device, ...]]:
    """The providers and devices for ``providers`` and ``device``: without a device, the providers decide as before
    (the first GPU when a GPU provider leads); ``device="cpu"`` means the CPU provider alone; a GPU device needs a
    GPU provider (onnxruntime-gpu) and the GPU."""
    available = ort.get_available_providers()
    # Names first (a typo may be why no GPU provider shows); those this build lacks are left out.
    chosen = [p for p in _provider_names(ort, providers or ["cuda", "cpu"]) if p in available]

    def gpus() -> int:
        if not any(p in available for p in GPU_PROVIDERS):
            raise MissingExtraError(
                f"--device {device} needs ONNX Runtime's CUDA execution provider, and this onnxruntime has only "
                f"{', '.join(available)}. Install the GPU build: pip uninstall onnxruntime && pip install "
                "onnxruntime-gpu (or run with --device cpu)")
        return cuda_device_count()

    devices = parse_devices(device, gpus)
    if devices is None:
        chosen = chosen or ["CPUExecutionProvider"]
        return chosen, ((Device("cuda", 0),) if chosen[0] in GPU_PROVIDERS else (Device("cpu"),))
    if not devices[0].accelerator:
        return ["CPUExecutionProvider"], devices
    if not any(p in GPU_PROVIDERS for p in chosen):
        raise SpecError(f"--device {device} runs on a GPU, but --providers {','.join(providers or [])} names no GPU "
                        "provider; add cuda (or tensorrt,cuda) or leave --providers out")
    return [*chosen, *(["CPUExecutionProvider"] if "CPUExecutionProvider" not in chosen else [])], devices


def _device_providers(chosen: list[str], device: Device, trt_half: bool) -> list:
    """``chosen`` with each GPU provider pinned to ``device`` (and TensorRT's fp16 mode when asked)."""
    out: list = []
    for p in chosen:
        if p not in GPU_PROVIDERS or not device.accelerator:
            out.append(p)
            continue
        options: dict[str, Any] = {"device_id": device.index}
        if p == "TensorrtExecutionProvider" and trt_half:
            options["trt_fp16_enable"] = True
        out.append((p, options))
    return out


def to_fp16(source: str | bytes) -> bytes:
    """The model with its float tensors in fp16 (ONNX Runtime's converter), float inputs and outputs kept."""
    onnx = require("onnx", "card")
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise MissingExtraError(f"--precision fp16 needs onnxruntime.transformers ({exc}); reinstall onnxruntime, "
                                "or use --precision fp32") from None
    try:
        proto = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert_float_to_float16(proto, keep_io_types=True).SerializeToString()
    except Exception as exc:
        raise DeviceError(f"could not convert {source if isinstance(source, str) else 'the model'} to fp16: "
                          f"{type(exc).__name__}: {str(exc)[:300]}; use --precision fp32") from None
