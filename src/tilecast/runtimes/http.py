"""Hosted models behind the runtime contract: KServe v2, TF Serving REST, Vertex AI and TF Serving gRPC.

The engine hands :class:`EndpointRuntime` a batch of tiles; it packs them into as many requests as
``max_payload_bytes`` (one of its :class:`~tilecast.remote.options.EndpointOptions`) needs, sends them
``concurrency`` at a time with retries, and reassembles the outputs in order. Nothing is returned, so nothing is
written, unless every request succeeded.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from ..errors import OutputShapeError, SpecError
from ..payloads.formats import GRPC_FORMATS, V2_FORMATS
from ..remote.batching import Packer
from ..remote.endpoints import Endpoint, parse_endpoint
from ..remote.options import EndpointOptions
from ..remote.retry import RetryPolicy
from ..remote.transport import make_transport
from .base import Runtime, Signature

__all__ = ["EndpointRuntime", "endpoint_runtime"]


class EndpointRuntime:
    """A hosted model. ``run`` may be called from :attr:`streams` threads at once; the requests of all calls share
    ``concurrency`` request threads (and connections)."""

    streams = 2
    """Batches a runner keeps in flight: while the endpoint computes one, the runner reads, encodes, decodes and
    writes the other, so the model never waits on the network or on the client (Earth Engine's pipelining). One
    with ``concurrency=1``: requests then go strictly one after another, batch by batch."""
    releases_inputs = True
    """A batch is encoded into request bodies before ``run`` returns, and answers are decoded from the response
    bodies, so a runner may stack its next batch into the same arrays."""

    def __init__(self, endpoint: Endpoint, options: EndpointOptions | None = None) -> None:
        opts = options or EndpointOptions()
        self.endpoint = endpoint
        self.options = opts
        self.concurrency = opts.concurrency
        self.streams = min(EndpointRuntime.streams, opts.concurrency)
        self.transport = make_transport(endpoint, dict(opts.headers), opts.timeout, opts.concurrency,
                                        opts.max_payload_bytes, opts.retry or RetryPolicy(), opts.token)
        text = endpoint.payload_format not in GRPC_FORMATS and endpoint.payload_format != "V2_BINARY"
        self.packer = Packer(opts.max_payload_bytes, opts.output_multiplier, self._measure, endpoint.payload_format,
                             text)
        self._pool = ThreadPoolExecutor(opts.concurrency, thread_name_prefix="tilecast-endpoint")
        self._lock = threading.Lock()
        self._active = 0
        self._failure: BaseException | None = None
        """The error that ended a request while calls were in flight: the other stream's requests not yet sent are
        not sent, and end with it (cleared when a call starts with none in flight)."""
        # closes connections and threads even when the runtime is dropped without close() (e.g. by a CLI run)
        self._finalizer = weakref.finalize(self, _shutdown, self._pool, self.transport)
        try:
            self.signature: Signature = self.transport.signature()
        except BaseException:
            self.close()
            raise

    def _measure(self, batch: Mapping[str, np.ndarray], start: int, stop: int) -> int:
        return self.transport.size(self.transport.encode(batch, start, stop))

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        if not batch:
            raise SpecError("the batch has no inputs")
        n = len(next(iter(batch.values())))
        if any(len(v) != n for v in batch.values()):
            raise SpecError(f"inputs differ in batch size: { {k: len(v) for k, v in batch.items()} }")
        if n == 0:  # nothing to send, and no answer to take the outputs' names and shapes from
            raise SpecError("the batch has no instances; an endpoint is asked for one tile at least (skip empty "
                            "batches)")
        slices = self.packer.slices(batch)
        with self._lock:
            if self._active == 0:
                self._failure = None
            self._active += 1
        futures: list[Future[list[tuple[int, dict[str, np.ndarray]]]]] = []
        try:
            for a, b in slices:
                futures.append(self._pool.submit(self._guarded, batch, a, b))
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    for g in futures:
                        g.cancel()
                    wait(futures)
                    raise f.exception()  # type: ignore[misc]
            parts = [p for f in futures for p in f.result()]
        except BaseException:
            for f in futures:  # interrupted (Ctrl-C): the requests not yet sent are dropped, not sent afterwards
                f.cancel()
            raise
        finally:
            with self._lock:
                self._active -= 1
        return _concat(parts, n)

    def _guarded(self, batch: Mapping[str, np.ndarray], start: int, stop: int) -> list[tuple[int, dict]]:
        """:meth:`_request`, unless a request of any call in flight failed (then its error, nothing sent): a failed
        run stops sending at once, as with one stream."""
        failure = self._failure
        if failure is not None:
            raise failure
        try:
            return self._request(batch, start, stop)
        except BaseException as exc:
            with self._lock:
                if self._failure is None:
                    self._failure = exc
            raise

    def _request(self, batch: Mapping[str, np.ndarray], start: int, stop: int) -> list[tuple[int, dict]]:
        request = self.transport.encode(batch, start, stop)
        if self.transport.size(request) > self.packer.limit:
            if stop - start > 1:  # the estimate was short (text formats vary with the values): split
                mid = (start + stop) // 2
                return self._request(batch, start, mid) + self._request(batch, mid, stop)
            per, fixed = self.packer.sizes(batch)
            raise self.packer.too_big(batch, max(per, self.transport.size(request) - fixed), fixed)
        return [(start, self.transport.send(request, stop - start, start))]

    def close(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"EndpointRuntime({self.endpoint.describe()}, concurrency={self.concurrency})"


def _shutdown(pool: ThreadPoolExecutor, transport: Any) -> None:
    transport.stop.set()  # first: a request thread waiting to retry ends now, so the pool's threads can be joined
    # The queued requests are not cancelled here but fail at once on ``stop`` (nothing is sent): a future cancelled
    # by the pool's shutdown never wakes ``wait``, so a run in flight on another thread would wait forever.
    pool.shutdown(wait=True)
    transport.close()


def _concat(parts: list[tuple[int, dict[str, np.ndarray]]], n: int) -> dict[str, np.ndarray]:
    parts.sort(key=lambda p: p[0])
    names = list(parts[0][1])
    for start, out in parts[1:]:
        if set(out) != set(names):
            raise OutputShapeError(
                f"the answer for instances from {start} on has outputs {sorted(out)}, but the first had {names}"
            )
    result = {}
    for k in names:
        arrays = [out[k] for _, out in parts]
        first = arrays[0]
        for (start, _), a in zip(parts, arrays, strict=True):
            if a.shape[1:] != first.shape[1:]:
                raise OutputShapeError(
                    f"instance {start}: output {k!r} has shape {list(a.shape[1:])} per instance, but instance 0 "
                    f"has {list(first.shape[1:])}"
                )
        result[k] = np.concatenate(arrays) if len(arrays) > 1 else first
        if len(result[k]) != n:
            raise OutputShapeError(f"output {k!r} has {len(result[k])} instances for a batch of {n}")
    return result


def endpoint_runtime(url: str, options: EndpointOptions | None = None, **keywords: Any) -> Runtime:
    """A runtime for the model at ``url``; ``options`` (an :class:`~tilecast.remote.options.EndpointOptions`) or
    its fields as ``keywords`` (``protocol``, ``payload_format``, ``max_payload_bytes``, ``output_multiplier``,
    ``concurrency``, ``headers``, ``token``, ``timeout``, ``retry``) say how requests are sent.

    ``protocol`` is inferred from the URL when omitted. ``payload_format`` defaults to ``V2_BINARY`` for KServe v2,
    ``SERIALIZED_TF_TENSORS`` (Earth Engine's default) for TF Serving and Vertex AI, and ``GRPC_TF_TENSORS`` for
    gRPC.
    """
    opts = EndpointOptions.create(options, **keywords)
    endpoint = parse_endpoint(url, opts.protocol, opts.payload_format)
    if endpoint.payload_format in V2_FORMATS and endpoint.protocol != "v2":
        raise SpecError(f"{endpoint.payload_format} needs a KServe v2 URL (/v2/models/NAME)")
    return EndpointRuntime(endpoint, opts)
