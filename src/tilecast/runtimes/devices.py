"""Where a model runs: device names, precision, batch sizes from free device memory, staging buffers, routing.

The device-independent half of the GPU code paths of :class:`~tilecast.runtimes.onnx.OnnxRuntime` and
:class:`~tilecast.runtimes.torch.TorchRuntime`. Nothing here imports a framework at module level, and every decision
(which devices, how many tiles per call, which buffer, which device takes a call) is a plain function or a small class
that takes its allocator or memory reader as an argument, so it is tested on CPU-only machines.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..errors import DeviceError, SpecError

__all__ = [
    "NO_GPU_FIX", "PRECISIONS", "Device", "HostBuffers", "Placed", "Slots", "Staging", "cuda_device_count",
    "cuda_free_bytes", "cudart_pinned", "describe_placement", "interleave", "is_out_of_memory", "numpy_staging",
    "parse_devices", "parse_precision", "placed_of", "plan_batch", "run_in_chunks",
]

PRECISIONS = ("fp32", "fp16", "bf16")
"""What ``precision=`` / ``--precision`` accept: the model's float tensors in 32-bit, IEEE half or bfloat16."""

_PRECISION_ALIASES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "fp16": "fp16", "float16": "fp16",
                      "half": "fp16", "bf16": "bf16", "bfloat16": "bf16"}
_GPU_NAMES = ("cuda", "gpu")
NO_GPU_FIX = ("run with --device cpu, or on a machine with a GPU and a CUDA build of the framework "
              "(pip install onnxruntime-gpu, or torch with CUDA)")
T = TypeVar("T")


@dataclass(frozen=True, order=True)
class Device:
    """One device: ``kind`` is ``"cpu"`` or ``"cuda"``; ``index`` the GPU's number (0 for the CPU)."""

    kind: str
    index: int = 0

    @property
    def accelerator(self) -> bool:
        return self.kind != "cpu"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"


def parse_devices(text: str | Sequence[str | Device] | None,
                  gpus: int | Callable[[], int]) -> tuple[Device, ...] | None:
    """The devices ``text`` names: ``cpu``; ``cuda`` (the first GPU, as in PyTorch); ``cuda:1``; ``cuda:0,1``;
    ``cuda:all`` or ``all`` (every GPU); ``gpu`` is ``cuda``. None or empty: None, the runtime's own default.

    ``gpus``: how many GPUs this machine has (or a function that counts them, called only when a GPU is named). A
    sequence of names or :class:`Device` objects is taken as it is after the same checks.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    items = [text] if isinstance(text, str) else list(text)
    devices: list[Device] = []
    for item in items:
        devices.extend([item] if isinstance(item, Device) else _parse_one(str(item), gpus))
    kinds = {d.kind for d in devices}
    if len(kinds) > 1:
        raise SpecError(f"device {text!r} mixes the CPU and GPUs; give one kind, e.g. --device cuda:0,1 or cpu")
    gpu_list = [d for d in devices if d.accelerator]
    if len(set(gpu_list)) != len(gpu_list):
        raise SpecError(f"device {text!r} names a GPU twice; give each once, e.g. cuda:0,1")
    if gpu_list:
        count = gpus() if callable(gpus) else gpus
        missing = [str(d) for d in gpu_list if d.index >= count]
        if missing:
            found = f"{count} GPU(s) (cuda:0..cuda:{count - 1})" if count else "no GPU"
            raise DeviceError(f"device {', '.join(missing)} is not on this machine, which has {found}; "
                              + ("give one of those" if count else NO_GPU_FIX))
    return tuple(devices)


def _parse_one(text: str, gpus: int | Callable[[], int]) -> list[Device]:
    kind, _, rest = text.strip().lower().partition(":")
    if kind == "cpu" and not rest:
        return [Device("cpu")]
    if kind == "all" and not rest:
        kind, rest = "cuda", "all"
    if kind not in _GPU_NAMES:
        raise SpecError(f"unknown device {text!r}; use cpu, cuda, cuda:N, cuda:0,1 or cuda:all")
    if rest in ("", "all", "*"):
        if rest == "":
            return [Device("cuda", 0)]
        count = gpus() if callable(gpus) else gpus
        if count < 1:
            raise DeviceError(f"device {text!r}: this machine has no GPU; {NO_GPU_FIX}")
        return [Device("cuda", i) for i in range(count)]
    out = []
    for part in rest.split(","):
        if not part.strip().isdigit():
            raise SpecError(f"device {text!r}: {part!r} is not a GPU number; use e.g. cuda:0 or cuda:0,1")
        out.append(Device("cuda", int(part)))
    return out


def parse_precision(precision: str | None) -> str:
    """``fp32`` (the default, also for None), ``fp16`` or ``bf16``; ``float16``, ``half`` and ``bfloat16`` too."""
    if precision is None:
        return "fp32"
    canonical = _PRECISION_ALIASES.get(str(precision).strip().lower())
    if canonical is None:
        raise SpecError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return canonical


def plan_batch(free_bytes: int, tile_bytes: int, *, reserved_bytes: int = 0, safety: float = 0.8,
               min_batch: int = 1, max_batch: int = 4096) -> int:
    """How many tiles one call may take: ``safety`` of the free device memory, less ``reserved_bytes``, over
    ``tile_bytes`` (what one more tile costs, measured by a probe call or estimated), within ``[min_batch,
    max_batch]``. The safety margin leaves room for the framework's workspace and for other streams on the device."""
    if not 0 < safety <= 1:
        raise SpecError(f"safety must be in (0, 1], got {safety}")
    if min_batch < 1 or max_batch < min_batch:
        raise SpecError(f"need 1 <= min_batch <= max_batch, got {min_batch}, {max_batch}")
    usable = int(max(0, free_bytes) * safety) - max(0, reserved_bytes)
    fits = usable // max(1, tile_bytes)
    return int(min(max_batch, max(min_batch, fits)))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a framework's error says the device ran out of memory (CUDA, cuDNN, cuBLAS, ONNX Runtime's arena)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(k in text for k in ("out of memory", "outofmemory", "cudnn_status_alloc_failed",
                                   "cublas_status_alloc_failed", "failed to allocate memory",
                                   "cudaerrormemoryallocation"))


def run_in_chunks(call: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
                  batch: Mapping[str, np.ndarray], limit: int,
                  out_of_memory: Callable[[BaseException], bool] = is_out_of_memory,
                  ) -> tuple[dict[str, np.ndarray], int]:
    """``call`` over slices of at most ``limit`` rows of ``batch``, joined again; on an out-of-memory error the limit
    halves (rounded up) and the slice runs again. Returns the outputs and the limit that worked (kept by the caller)."""
    n = min((len(v) for v in batch.values()), default=0)
    limit = max(1, int(limit))
    if n <= limit:
        try:
            return dict(call(batch)), limit
        except Exception as exc:
            if not out_of_memory(exc) or n <= 1:
                raise
            limit = (n + 1) // 2
    parts: list[Mapping[str, np.ndarray]] = []
    start = 0
    while start < n:
        stop = min(n, start + limit)
        try:
            parts.append(call({k: v[start:stop] for k, v in batch.items()}))
        except Exception as exc:
            if not out_of_memory(exc) or stop - start <= 1:
                raise
            limit = (stop - start + 1) // 2
            continue
        start = stop
    names = list(parts[0])
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in names}, limit


@dataclass
class Staging:
    """A reusable host buffer: ``handle`` is what the framework copies from (a pinned tensor), ``array`` its numpy
    view that a batch is copied into."""

    handle: Any
    array: np.ndarray


def numpy_staging(shape: tuple[int, ...], dtype: np.dtype) -> Staging:
    """Plain (pageable) numpy memory: what a backend without pinned memory stages into."""
    a = np.empty(shape, dtype)
    return Staging(a, a)


class HostBuffers:
    """A pool of staging buffers, reused per ``(shape, dtype)``: a call :meth:`acquire`\\ s one, copies its batch in,
    starts the asynchronous copy to the device and :meth:`release`\\ s it once its stream is done. Pinned memory is
    slow to allocate, so it is allocated once per batch shape; the last (smaller) batch of a run adds one more shape.

    ``allocate(shape, dtype)`` makes a :class:`Staging` (pinned when the backend can pin). At most ``shapes`` batch
    shapes are kept; the least recently used one is dropped when a new one arrives.
    """

    def __init__(self, allocate: Callable[[tuple[int, ...], np.dtype], Staging] = numpy_staging,
                 shapes: int = 4) -> None:
        self._allocate = allocate
        self._free: OrderedDict[tuple, list[Staging]] = OrderedDict()
        self._shapes = max(1, shapes)
        self._lock = threading.Lock()
        self.allocated = 0
        """How many buffers were allocated so far (reuse keeps it at one per shape and concurrent call)."""

    def acquire(self, shape: Sequence[int], dtype: Any) -> Staging:
        key = (tuple(int(s) for s in shape), np.dtype(dtype).str)
        with self._lock:
            free = self._free.get(key)
            if free is not None:
                self._free.move_to_end(key)
                if free:
                    return free.pop()
        buf = self._allocate(key[0], np.dtype(dtype))
        with self._lock:
            self.allocated += 1
        return buf

    def release(self, buf: Staging) -> None:
        key = (tuple(buf.array.shape), buf.array.dtype.str)
        with self._lock:
            self._free.setdefault(key, []).append(buf)
            self._free.move_to_end(key)
            while len(self._free) > self._shapes:
                self._free.popitem(last=False)

    @contextlib.contextmanager
    def staged(self, arrays: Sequence[np.ndarray]) -> Iterator[list[Staging]]:
        """Buffers holding copies of ``arrays``, given back when the block ends."""
        bufs: list[Staging] = []
        try:
            for a in arrays:
                buf = self.acquire(a.shape, a.dtype)
                bufs.append(buf)
                np.copyto(buf.array, a, casting="no")
            yield bufs
        finally:
            for buf in bufs:
                self.release(buf)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


class Slots(Generic[T]):
    """Routes concurrent calls: each takes a free slot (one device and one stream on it) and gives it back. With
    slots ordered device by device (``d0 s0, d1 s0, d0 s1, d1 s1``), N calls at once go to N different devices."""

    def __init__(self, slots: Sequence[T]) -> None:
        if not slots:
            raise SpecError("a runtime needs at least one device")
        self.items = list(slots)
        self._free: queue.SimpleQueue[T] = queue.SimpleQueue()
        for s in self.items:
            self._free.put(s)

    def __len__(self) -> int:
        return len(self.items)

    @contextlib.contextmanager
    def lease(self) -> Iterator[T]:
        slot = self._free.get()
        try:
            yield slot
        finally:
            self._free.put(slot)


def interleave(per_device: Sequence[Sequence[T]]) -> list[T]:
    """Slots ordered stream by stream across devices: ``[[a0, a1], [b0, b1]]`` -> ``[a0, b0, a1, b1]``."""
    depth = max((len(s) for s in per_device), default=0)
    return [s[i] for i in range(depth) for s in per_device if i < len(s)]


@runtime_checkable
class Placed(Protocol):
    """A runtime that says where it runs: its devices, its precision and the tiles per call the devices allow
    (``device_batch``: None until planned, or when there is no limit; :meth:`batch_limit` plans it for a batch)."""

    devices: tuple[Device, ...]
    precision: str
    device_batch: int | None

    def batch_limit(self, batch: Mapping[str, np.ndarray]) -> int | None:
        """The most tiles like ``batch``'s one call takes on these devices; None: no limit is known."""


def placed_of(runtime: object) -> Placed | None:
    """The :class:`Placed` runtime inside ``runtime`` (through a card's value scaling around it); None if none."""
    from .scaled import ScaledRuntime

    while isinstance(runtime, ScaledRuntime):  # a card's value scaling around the model's own runtime
        runtime = runtime.runtime
    return runtime if isinstance(runtime, Placed) else None


def describe_placement(runtime: object, batch_size: int | None = None) -> str | None:
    """One line for ``-v``: devices, precision and batch size of a :class:`Placed` runtime; None for others."""
    runtime = placed_of(runtime)
    if runtime is None:
        return None
    devices = ",".join(str(d) for d in runtime.devices) or "cpu"
    line = f"device {devices}, precision {runtime.precision}"
    if batch_size is not None:
        line += f", batch {batch_size}"
    if runtime.device_batch is not None:
        line += f" (device memory allows {runtime.device_batch} per call)"
    return line


def cuda_device_count() -> int:
    """How many CUDA GPUs this process sees: PyTorch's count when a CUDA build is installed, else ``nvidia-smi``'s
    (which ONNX Runtime's CUDA provider would use); 0 on a CPU-only machine."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.device_count())
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def cuda_free_bytes(index: int) -> int | None:
    """Free memory on GPU ``index`` (PyTorch's reader; None when it cannot tell), cached blocks of PyTorch's own
    allocator counted as free."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(index)
        return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
    except Exception:  # no CUDA torch, or a driver that does not answer: no limit
        return None


def cudart_pinned() -> Callable[[tuple[int, ...], np.dtype], Staging] | None:
    """An allocator of page-locked host memory from the CUDA runtime library (``cudaHostAlloc``), for a backend
    without one of its own (ONNX Runtime's Python API); None when the library is not found. A failed allocation
    falls back to pageable memory, which is only slower to copy."""
    import ctypes
    import weakref

    lib = _cudart()
    if lib is None:
        return None

    def allocate(shape: tuple[int, ...], dtype: np.dtype) -> Staging:
        count = int(np.prod(shape, dtype=np.int64))
        size = max(1, count * np.dtype(dtype).itemsize)
        ptr = ctypes.c_void_p()
        if lib.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(size), ctypes.c_uint(1)) != 0 or not ptr.value:
            return numpy_staging(shape, dtype)  # 1: cudaHostAllocPortable, usable from every device
        raw = (ctypes.c_byte * size).from_address(ptr.value)
        staging = Staging(ptr, np.frombuffer(raw, dtype=dtype, count=count).reshape(shape))
        weakref.finalize(staging, lib.cudaFreeHost, ptr)
        return staging

    return allocate


def _cudart() -> Any:
    import ctypes
    import ctypes.util
    import glob
    import sys

    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12", "libcudart.so.11.0"]
    for root in sys.path:  # the pip wheels' copy (nvidia-cuda-runtime-cu12), which onnxruntime-gpu loads
        names += sorted(glob.glob(f"{root}/nvidia/cuda_runtime/lib/libcudart.so*"))
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudaHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
        lib.cudaFreeHost.argtypes = [ctypes.c_void_p]
        return lib
    return None
