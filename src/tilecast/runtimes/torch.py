"""PyTorch behind the runtime contract: TorchScript (``torch.jit.save``) and ``torch.export`` programs (``.pt2``).

The GPU is used when one is available (``device=None``). On a GPU each device holds its own copy of the module and
two CUDA streams: a call copies its batch into a pinned host buffer (reused per batch shape), sends it with a
non-blocking copy on its stream and brings the outputs back the same way, so the copy of one batch overlaps the
compute of the batch on the other stream. Calls larger than the device's free memory allows are split (planned from
a one-tile probe, halved on an out-of-memory error). On the CPU a call runs as it always did. Install with
``pip install 'tilecast[torch]'``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import DeviceError, ModelLoadError, TileSizeError
from .base import BaseRuntime, Signature, TensorSpec, rejected_batch
from .devices import (
    Device,
    HostBuffers,
    Slots,
    Staging,
    cuda_free_bytes,
    interleave,
    is_out_of_memory,
    numpy_staging,
    parse_devices,
    parse_precision,
    plan_batch,
    run_in_chunks,
)

__all__ = ["CARD_FILE", "TorchRuntime", "embed_card"]

CARD_FILE = "mlm:item"
"""The extra file, inside a TorchScript or torch.export archive, that holds the model card (JSON)."""

STREAMS_PER_GPU = 2
"""Calls in flight per GPU: while one call's batch is copied to the device, the other's runs."""
NO_LIMIT = 1 << 30  # tiles per call when the free memory is unknown: batches are never split


@dataclass
class _Replica:
    """The module on one device."""

    device: Any  # torch.device
    module: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    limits: dict[tuple, int] = field(default_factory=dict)


@dataclass
class _Slot:
    """One stream of calls on a replica (``stream`` is a CUDA stream, None on the CPU)."""

    replica: _Replica
    stream: Any = None


class TorchRuntime(BaseRuntime):
    """Run a TorchScript module or an exported program.

    ``fmt``: ``"torchscript"`` or ``"torch.export"`` (guessed from the file when None). ``outputs`` names the output
    tensors when the model does not (TorchScript forward arguments name the inputs; outputs default to ``output``
    or ``output_0``...). A model returning a dict keeps its keys as output names.

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"cuda:0,1"`` or ``"cuda:all"`` (see
    :func:`~tilecast.runtimes.devices.parse_devices`); None: the first GPU if there is one, else the CPU. With
    several GPUs, each holds a copy of the module and concurrent calls go to different GPUs. ``precision``:
    ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``: the module's weights and the inputs are cast, float outputs come
    back as float32. ``staging``: copy batches through reusable host buffers and split them to the device's free
    memory (None: on GPUs only).
    """

    def __init__(self, path: str | os.PathLike, *, device: str | Sequence[str | Device] | None = None,
                 fmt: str | None = None, outputs: list[str] | None = None, precision: str | None = None,
                 staging: bool | None = None) -> None:
        torch = require("torch", "torch")
        self._torch = torch
        p = Path(path)
        if not p.exists():
            raise ModelLoadError(f"model file not found: {p}; check the path")
        self.path = str(p)
        self.precision = parse_precision(precision)
        self._dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        self.devices = _torch_devices(torch, device)
        self.device = torch.device(str(self.devices[0]))
        self.fmt = fmt = fmt or ("torch.export" if p.suffix.lower() == ".pt2" else "torchscript")
        self._lock = threading.Lock()
        extra = {CARD_FILE: ""}
        replicas = []
        for d in self.devices:
            module, in_specs = self._load(torch.device(str(d)), extra)
            replicas.append(_Replica(torch.device(str(d)), module))
        self.module = replicas[0].module
        gpu = self.devices[0].kind == "cuda"  # CUDA streams and pinned memory; other accelerators run plainly
        per_device = STREAMS_PER_GPU if gpu else 1
        self._slots = Slots(interleave([[_Slot(r, torch.cuda.Stream(r.device) if gpu else None)
                                         for _ in range(per_device)] for r in replicas]))
        self.streams = len(self._slots)
        self._staging = gpu if staging is None else bool(staging)
        self.releases_inputs = self._staging  # staged batches are copied in, outputs copied out: nothing is kept
        self._host = HostBuffers(self._pinned if gpu else _torch_staging(torch), shapes=4)
        self.device_batch: int | None = None
        """The most tiles per call the device memory allowed so far (None: not planned, or no limit)."""
        self._out_names = outputs
        self.signature = Signature(in_specs, tuple(TensorSpec(n, None, None) for n in (outputs or ["output"])))
        card = extra.get(CARD_FILE)
        card = card.decode() if isinstance(card, bytes) else card
        self.metadata: dict[str, str] = {"mlm:item": card} if card else {}

    def _load(self, device: Any, extra: dict[str, Any]) -> tuple[Any, tuple[TensorSpec, ...]]:
        torch = self._torch
        try:
            if self.fmt == "torch.export":
                program = torch.export.load(self.path, extra_files=extra)
                module = program.module().to(device)
                in_specs = _export_input_specs(program, _export_input_names(program))
            else:
                module = torch.jit.load(self.path, map_location=device, _extra_files=extra)
                # TorchScript does not record dtypes; raster models take float32 (override with
                # input_type_override), so an integer raster is cast before it reaches the model.
                in_specs = tuple(TensorSpec(n, None, np.dtype(np.float32)) for n in _script_input_names(module))
        except Exception as exc:
            raise ModelLoadError(
                f"PyTorch could not load {self.path} as {self.fmt}: {type(exc).__name__}: {str(exc)[:300]}. "
                "Is the file complete? Save TorchScript with torch.jit.save or a program with torch.export.save."
            ) from None
        if self.fmt != "torch.export":  # exported programs are already in inference form (eval() is refused)
            module.eval()
        if self._dtype is not None:
            try:
                module = module.to(self._dtype)
            except Exception as exc:
                raise DeviceError(f"PyTorch could not cast {self.path} to {self.precision}: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}; run it with --precision fp32") from None
        return module, in_specs

    def free_memory(self, device: Device) -> int | None:
        """Free bytes on ``device`` for batch planning; None: no limit (the CPU)."""
        return cuda_free_bytes(device.index) if device.kind == "cuda" else None

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        names = self.signature.input_names
        try:
            arrays = {n: np.ascontiguousarray(batch[n]) for n in names}
        except KeyError as exc:
            raise TileSizeError(f"the batch has no input {exc}; the model takes {names}") from None
        with self._slots.lease() as slot:
            try:
                if self._staging:
                    return self._run_staged(slot, arrays)
                return self._to_numpy(self._call(slot, [torch.from_numpy(arrays[n]) for n in names]), slot)
            except DeviceError:
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise DeviceError(
                        f"{slot.replica.device} ran out of memory on one tile ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); use a smaller --tile, --precision fp16, or another device") from None
                raise rejected_batch("PyTorch", batch, exc) from None

    def _call(self, slot: _Slot, tensors: list[Any]) -> dict[str, Any]:
        """Send ``tensors`` to the slot's device (asynchronously from pinned memory on a GPU) and run the module on
        the slot's stream; the outputs stay on the device."""
        torch = self._torch
        with self._stream(slot), torch.inference_mode():
            args = [t.to(slot.replica.device, non_blocking=slot.stream is not None) for t in tensors]
            if self._dtype is not None:
                args = [a.to(self._dtype) if a.is_floating_point() else a for a in args]
            with slot.replica.lock:
                result = slot.replica.module(*args)
            return self._named(result)

    def _to_numpy(self, named: dict[str, Any], slot: _Slot) -> dict[str, np.ndarray]:
        """Outputs to host memory: on a GPU non-blocking copies (into pinned blocks of PyTorch's host cache) on the
        slot's stream, waited for once; reduced-precision floats come back as float32."""
        out = {}
        with self._stream(slot):
            for name, t in named.items():
                t = t.detach()
                if self._dtype is not None and t.dtype == self._dtype:
                    t = t.float()
                out[name] = t.to("cpu", non_blocking=slot.stream is not None)
        if slot.stream is not None:
            slot.stream.synchronize()
        return {name: t.numpy() for name, t in out.items()}

    def batch_limit(self, batch: Mapping[str, np.ndarray]) -> int | None:
        """The most tiles like ``batch``'s that one call on these devices takes (a one-tile probe against the free
        memory, planned once per tile shape): what a runner may use as its batch size when none is given. None: no
        limit is known (the CPU)."""
        if not self._staging:
            return None
        arrays = {n: np.ascontiguousarray(batch[n][:1]) for n in self.signature.input_names}
        key = tuple((a.shape[1:], a.dtype.str) for a in arrays.values())
        with self._slots.lease() as slot:
            limit = slot.replica.limits.get(key) or self._plan(slot, arrays, key)
        return None if limit >= NO_LIMIT else limit

    def _run_staged(self, slot: _Slot, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = tuple((a.shape[1:], a.dtype.str) for a in arrays.values())
        limit = slot.replica.limits.get(key) or self._plan(slot, arrays, key)
        out, used = run_in_chunks(lambda part: self._staged_call(slot, part), arrays, limit)
        if used < limit:
            slot.replica.limits[key] = used
            self.device_batch = used if self.device_batch is None else min(self.device_batch, used)
        return out

    def _staged_call(self, slot: _Slot, part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(part)
        with self._host.staged([part[n] for n in names]) as bufs:
            try:
                out = self._to_numpy(self._call(slot, [b.handle for b in bufs]), slot)  # synchronised: buffers free
            except BaseException:
                if slot.stream is not None:  # the copies from the buffers may still be queued: wait before they go
                    with contextlib.suppress(Exception):  # back to the pool (a sticky CUDA error raises here too)
                        slot.stream.synchronize()
                raise
            if slot.stream is None:  # on the CPU an output may be a view of the staging buffer that goes back
                out = {k: np.array(v) if any(np.shares_memory(v, b.array) for b in bufs) else v
                       for k, v in out.items()}
        return out

    def _plan(self, slot: _Slot, arrays: dict[str, np.ndarray], key: tuple) -> int:
        """Tiles per call on the slot's device: a one-tile probe (its peak device memory on a GPU, its input and
        output bytes at least) against the device's free memory shared by its streams, which each run a call at once
        (:func:`~tilecast.runtimes.devices.plan_batch`)."""
        torch = self._torch
        replica = slot.replica
        with self._lock:
            if key in replica.limits:
                return replica.limits[key]
            index = replica.device.index or 0
            device = Device(replica.device.type, index)
            free = self.free_memory(device)
            if free is None:
                replica.limits[key] = NO_LIMIT
                return NO_LIMIT
            cuda = device.kind == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats(index)
                base = torch.cuda.memory_allocated(index)
            out = self._staged_call(slot, {k: v[:1] for k, v in arrays.items()})
            peak = torch.cuda.max_memory_allocated(index) - base if cuda else 0
            io = sum(v[:1].nbytes for v in arrays.values()) + sum(v.nbytes for v in out.values())
            # The device's streams run a call each at once, each as large as planned: each gets its share.
            streams = sum(1 for s in self._slots.items if s.replica is replica)
            limit = plan_batch(free // max(1, streams), max(int(peak), io))
            replica.limits[key] = limit
            self.device_batch = limit if self.device_batch is None else min(self.device_batch, limit)
            return limit

    def _stream(self, slot: _Slot) -> contextlib.AbstractContextManager:
        return self._torch.cuda.stream(slot.stream) if slot.stream is not None else contextlib.nullcontext()

    def _pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> Staging:
        torch = self._torch
        t = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
        return Staging(t, t.numpy())

    def _named(self, result: Any) -> dict[str, Any]:
        torch = self._torch
        if isinstance(result, torch.Tensor):
            items = [result]
        elif isinstance(result, Mapping):
            return {str(k): v for k, v in result.items()}
        else:
            items = list(result)
        names = self._out_names or (["output"] if len(items) == 1 else [f"output_{i}" for i in range(len(items))])
        if self.signature.output_names != names:
            self.signature = Signature(self.signature.inputs, tuple(TensorSpec(n, None, None) for n in names))
        return dict(zip(names, items, strict=True))

    def close(self) -> None:
        self.module = None
        self._slots = Slots([None])  # type: ignore[list-item]
        self._host.clear()

    def __repr__(self) -> str:
        devices = ",".join(str(d) for d in self.devices)
        precision = "" if self.precision == "fp32" else f", precision={self.precision}"
        return f"TorchRuntime({self.path}, {self.fmt}, device={devices}{precision})"


def _torch_devices(torch: Any, device: str | Sequence[str | Device] | None) -> tuple[Device, ...]:
    """The devices a TorchRuntime uses; other PyTorch device types (``mps``, ``xpu``) are taken as one device."""
    def gpus() -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    if isinstance(device, str) and device.strip().lower().partition(":")[0] not in ("cpu", "cuda", "gpu", "all", ""):
        try:
            d = torch.device(device.strip())
        except Exception as exc:
            raise DeviceError(f"PyTorch does not know device {device!r} ({exc}); use cpu, cuda, cuda:N or "
                              "cuda:0,1") from None
        return (Device(d.type, d.index or 0),)
    parsed = parse_devices(device, gpus)
    if parsed:
        return parsed
    return (Device("cuda", 0),) if gpus() else (Device("cpu"),)


def _torch_staging(torch: Any) -> Any:
    """Pageable staging (for the CPU): numpy arrays that PyTorch shares."""
    def allocate(shape: tuple[int, ...], dtype: np.dtype) -> Staging:
        buf = numpy_staging(shape, dtype)
        return Staging(torch.from_numpy(buf.array), buf.array)

    return allocate


def _script_input_names(module: Any) -> list[str]:
    try:
        args = list(module.forward.schema.arguments)[1:]  # the first is the module itself
        names = [a.name for a in args]
    except Exception:
        names = []
    return names or ["input"]


def _export_input_names(program: Any) -> list[str]:
    from torch.export.graph_signature import InputKind

    return [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]


def _export_input_specs(program: Any, names: list[str]) -> tuple[TensorSpec, ...]:
    specs = []
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name in names:
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        shape, dtype = None, None
        if val is not None and hasattr(val, "shape"):
            shape = tuple(int(d) if isinstance(d, int) else None for d in val.shape)
            dtype = np.dtype(str(val.dtype).replace("torch.", ""))
        specs.append(TensorSpec(name, shape, dtype))
    return tuple(specs)


def embed_card(path: str | os.PathLike, card_json: str, fmt: str) -> None:
    """Store the card inside the archive as an extra file (rewritten atomically), as ONNX stores it in metadata."""
    torch = require("torch", "torch")
    tmp = str(path) + ".tmp"
    try:
        if fmt == "torch.export":
            extra: dict[str, Any] = {}
            program = torch.export.load(str(path), extra_files=extra)
            torch.export.save(program, tmp, extra_files={**extra, CARD_FILE: card_json})
        else:
            module = torch.jit.load(str(path), map_location="cpu")
            torch.jit.save(module, tmp, _extra_files={CARD_FILE: card_json})
    except Exception as exc:
        raise ModelLoadError(f"cannot embed the card in {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    os.replace(tmp, path)
