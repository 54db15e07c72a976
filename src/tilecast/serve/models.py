"""The models a server hosts, and the dynamic batcher that merges concurrent requests into one runtime call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError, ModelLoadError, OutputShapeError
from ..resources import Resources
from ..runtimes.base import Runtime
from .adapt import adapt_inputs
from .metrics import ARRIVING

__all__ = ["DEFAULT_SIGNATURE", "Batcher", "NamedSignature", "ServedModel", "card_bands", "load_models",
           "load_runtime", "models_from_paths"]

DEFAULT_SIGNATURE = "serving_default"
"""TF Serving's default signature key: every model is served under it (and under its own signature name)."""


@runtime_checkable
class NamedSignature(Protocol):
    """Runs one named signature of its model (a SavedModel's, a ``.tflite``'s); None: the model names none."""

    signature_name: str | None


def load_runtime(path: str | os.PathLike, threads: int | None = None) -> Runtime:
    """Any model tilecast can load (ONNX, TorchScript, SavedModel, Keras: see :func:`tilecast.card.open_runtime`)."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}; check the path")
    try:
        from ..card import open_runtime
    except ImportError:  # a build without the loaders: ONNX only
        if p.suffix.lower() != ".onnx":
            raise ModelLoadError(f"{p}: this build of tilecast serve hosts .onnx models only") from None
        from ..runtimes.onnx import OnnxRuntime

        return OnnxRuntime(p, threads=threads)
    return open_runtime(p, threads=threads)


def card_bands(path: str | os.PathLike, runtime: Runtime) -> tuple[tuple[str, ...], dict[str, str]]:
    """The band order and ``eo:common_name`` of each band from the model's card (sidecar or embedded), if any: what
    lets the server stack bands sent as separate tensors by name (gRPC maps have no order)."""
    try:
        from ..card import read_card, runtime_metadata
    except ImportError:  # a build without the card module
        return (), {}
    card = read_card(path, runtime_metadata(runtime), runtime.signature)
    if card is None:
        return (), {}
    cp = card.to_params()
    return tuple(cp.bands), dict(cp.common_names)


def models_from_paths(specs: list[str], names: list[str] | None = None, threads: int | None = None
                      ) -> dict[str, Runtime]:
    """``MODEL`` paths (files, or directories of models), each named by ``names`` or its file stem."""
    return load_models(specs, names, threads)[0]


def load_models(specs: list[str], names: list[str] | None = None, threads: int | None = None
                ) -> tuple[dict[str, Runtime], dict[str, tuple[tuple[str, ...], dict[str, str]]]]:
    """Like :func:`models_from_paths`, with each model's :func:`card_bands` by name.

    Thread policy: ``threads`` intra-op threads per model; by default one model takes the resource policy's
    ``model_threads`` (:class:`~tilecast.resources.Resources`, with its streams), and several split them evenly.
    The batcher then keeps each model's declared streams busy (:class:`Batcher`)."""
    paths: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        p = Path(rest if sep else spec)
        if p.is_dir() and not (p / "saved_model.pb").exists():
            from ..card import MODEL_SUFFIXES

            found = sorted(x for x in p.iterdir() if x.suffix.lower() in MODEL_SUFFIXES
                           or (x / "saved_model.pb").exists())
            if not found:
                raise ModelLoadError(f"no models in directory {p}")
            paths.extend((x.stem, x) for x in found)
        else:
            paths.append((name if sep else p.stem, p))
    if names:
        if len(names) > len(paths):
            raise ModelLoadError(f"{len(names)} --name values for {len(paths)} models")
        paths = [(n, p) for n, (_, p) in zip(names, paths, strict=False)] + paths[len(names):]
    for name, p in paths:
        if name in ("", ".", "..") or any(c in name for c in "/:?#") or not name.isprintable():
            raise ModelLoadError(f"model name {name!r} (for {p}) cannot be part of a URL such as "
                                 "/v2/models/NAME/infer; name it with NAME=PATH or --name, without / : ? # or control "
                                 "characters")
    if threads is None and len(paths) > 1:  # the models share the CPUs instead of each taking them all
        threads = max(1, Resources.detect().model_threads // len(paths))
    out: dict[str, Runtime] = {}
    bands: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {}
    for name, p in paths:
        if name in out:
            raise ModelLoadError(f"two models are named {name!r}; name them with NAME=PATH or --name")
        out[name] = load_runtime(p, threads)
        try:
            bands[name] = card_bands(p, out[name])
        except BaseException:
            for rt in out.values():
                rt.close()
            raise
    return out, bands


def _key(arrays: Mapping[str, np.ndarray]) -> tuple:
    return tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(arrays.items()))


@dataclass
class _Item:
    arrays: dict[str, np.ndarray]
    n: int
    future: asyncio.Future


class Batcher:
    """Merges requests that arrive within ``timeout_s`` of each other (up to ``max_batch`` instances) into one
    runtime call. ``max_batch`` <= 1 runs each request on its own. The runtime sees at most ``streams`` calls at a
    time (:func:`~tilecast.runtimes.base.streams_of`); while they all run, requests queue up for the next batch."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], max_batch: int,
                 timeout_s: float, observe: Callable[[int], None] | None = None,
                 arriving: Callable[[], int] | None = None, streams: int = 1) -> None:
        self.run, self.max_batch, self.timeout_s = run, max_batch, timeout_s
        self.arriving = arriving
        """Requests accepted but not yet queued; when none is on its way, a batch does not wait for company."""
        self.observe = observe or (lambda n: None)
        self.executor = ThreadPoolExecutor(streams, thread_name_prefix="tilecast-model")
        self.slots = asyncio.Semaphore(streams)
        self.queue: asyncio.Queue[_Item] | None = None
        self.task: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()
        self._carry: _Item | None = None

    def _run(self, arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        self.observe(n)
        return self.run(arrays)

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(arrays.values())))
        loop = asyncio.get_running_loop()
        if self.max_batch <= 1 or n >= self.max_batch:
            return await loop.run_in_executor(self.executor, self._run, arrays, n)
        if self.task is None:
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._loop())
        item = _Item(arrays, n, loop.create_future())
        await self.queue.put(item)  # type: ignore[union-attr]
        return await item.future

    async def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self.queue.get()  # type: ignore[union-attr]
        try:
            return await asyncio.wait_for(self.queue.get(), max(timeout, 0))  # type: ignore[union-attr]
        except TimeoutError:
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()  # a stream is free: collect its batch
            first = await self._next(None)
            assert first is not None
            group, total = [first], first.n
            key = _key(first.arrays)
            deadline = time.monotonic() + self.timeout_s
            while total < self.max_batch:
                if (self.arriving is not None and self._carry is None and self.queue.empty()  # type: ignore[union-attr]
                        and self.arriving() <= 0):
                    break
                item = await self._next(deadline - time.monotonic())
                if item is None:
                    break
                if _key(item.arrays) != key or total + item.n > self.max_batch:
                    self._carry = item
                    break
                group.append(item)
                total += item.n
            live = [g for g in group if not g.future.done()]
            if not live:
                self.slots.release()
                continue
            task = loop.create_task(self._dispatch(live))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _dispatch(self, live: list[_Item]) -> None:
        """Run one merged batch and hand each request its rows; frees the stream when done."""
        try:
            merged = (live[0].arrays if len(live) == 1 else  # one request: its arrays as they are, no copy
                      {k: np.concatenate([g.arrays[k] for g in live]) for k in live[0].arrays})
            out = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._run, merged, sum(g.n for g in live)
            )
            start = 0
            for g in live:
                part = {k: v[start : start + g.n] for k, v in out.items()}
                start += g.n
                if not g.future.done():
                    g.future.set_result(part)
        except Exception as exc:
            for g in live:
                if not g.future.done():
                    g.future.set_exception(exc)
        finally:
            self.slots.release()

    async def close(self) -> None:
        for task in (self.task, *self.running):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.executor.shutdown(wait=True)


@dataclass
class ServedModel:
    name: str
    runtime: Runtime
    version: str = "1"
    platform: str = "tilecast"
    batcher: Batcher | None = field(default=None)
    bands: tuple[str, ...] = ()
    """The model card's band order: bands sent as separate tensors are stacked in it, by name."""
    common_names: dict[str, str] = field(default_factory=dict)

    @property
    def signature(self):
        return self.runtime.signature

    @property
    def signature_names(self) -> tuple[str, ...]:
        """The ``signature_name`` values a request may give: TF Serving's default key, and the model's own."""
        own = self.runtime.signature_name if isinstance(self.runtime, NamedSignature) else None
        return tuple(dict.fromkeys(n for n in (DEFAULT_SIGNATURE, own) if n))

    def check_signature(self, name: Any) -> None:
        """Refuse a request for a signature this model is not served with (TF Serving's ``signature_name``; empty
        or absent: the default), instead of silently running another one."""
        if name is None or name == "":
            return
        if not isinstance(name, str):
            raise InputError(f'"signature_name" must be a string, got {type(name).__name__}; leave it out for the '
                             "default")
        if name not in self.signature_names:
            raise InputError(f"model {self.name!r} has no signature {name[:100]!r}; it is served as "
                             f"{', '.join(map(repr, self.signature_names))} (or leave signature_name out)")

    def call(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(arrays.values())))
        out = dict(self.runtime.run(arrays))
        for k, v in out.items():
            v = np.asarray(v)
            if v.ndim == 0 or v.shape[0] != n:
                raise OutputShapeError(f"the model's output {k!r} has shape {list(v.shape)} for {n} instances")
            out[k] = v
        return out

    async def infer(self, arrays: Mapping[str, np.ndarray], outputs: list[str] | None = None,
                    ordered: bool = True) -> dict[str, Any]:
        if not arrays:
            raise InputError("the request has no inputs")
        adapted = adapt_inputs(self.signature, arrays, ordered, self.bands, self.common_names)
        scalars = sorted(k for k, v in adapted.items() if np.ndim(v) == 0)
        if scalars:  # a model of unknown rank (TorchScript) or without a signature lets them through to here
            raise InputError(f"inputs {scalars} are scalars; send each input with its instances on the first axis "
                             "(shape [N, ...])")
        sizes = {len(v) for v in adapted.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise InputError(f"inputs must share a non-zero batch size, got {sorted(sizes)}")
        assert self.batcher is not None
        ticket = ARRIVING.get()
        if ticket is not None:
            ticket.arrive()
        out = await self.batcher.infer(adapted)
        if outputs:
            missing = [o for o in outputs if o not in out]
            if missing:
                raise InputError(f"unknown outputs {missing}; the model's outputs are {sorted(out)}")
            out = {o: out[o] for o in outputs}
        return out
