"""``tilecast serve``: host models over KServe v2, TF Serving REST / Earth Engine, and optionally gRPC."""

from __future__ import annotations

import errno
import math
import os
import socket

import click

from ..errors import SpecError
from .options import reports_errors


@click.command(short_help="Host models over HTTP (KServe v2, TF Serving) and gRPC.")
@click.argument("models", nargs=-1, metavar="MODEL...")
@click.option("-m", "--model", "more_models", multiple=True, metavar="[NAME=]PATH",
              help="Another model to host (repeatable); the same as a MODEL argument.")
@click.option("--name", "names", multiple=True,
              help="Name of the model at the same position (repeatable; default: the file name without suffix).")
@click.option("--host", help="Interface to bind [default: 127.0.0.1, local clients only; 0.0.0.0 (all) when "
                             "$AIP_HTTP_PORT is set, as in a Vertex AI container].")
@click.option("--port", type=click.IntRange(0, 65535),
              help="HTTP port (0: any free port, as the log says) [default: $AIP_HTTP_PORT, else 8500].")
@click.option("--grpc-port", type=click.IntRange(0, 65535),
              help="Also serve TF Serving's gRPC PredictionService on this port (0: any free port, as the log "
                   "says).")
@click.option("--token-env", metavar="VAR",
              help="Require 'Authorization: Bearer TOKEN', TOKEN read from this environment variable.")
@click.option("--max-body-bytes", type=int, default=32 << 20, show_default=True,
              help="Largest request body; bigger ones get HTTP 413 (gRPC: RESOURCE_EXHAUSTED).")
@click.option("--max-batch", type=int, default=32, show_default=True,
              help="Dynamic batching: merge concurrent requests into model calls of up to this many instances "
                   "(1 disables it).")
@click.option("--batch-timeout-ms", type=float, default=5.0, show_default=True,
              help="Dynamic batching: how long the first request of a batch waits for others.")
@click.option("--threads", type=int, help="Intra-op threads per model (default: the resource policy's model "
                                         "threads, split evenly between the models).")
@click.option("--max-connections", type=int, default=1024, show_default=True,
              help="Open connections; beyond it requests get HTTP 503 with Retry-After (health still answers).")
@click.option("--max-connections-per-client", type=int, default=256, show_default=True,
              help="Open connections from one client address; beyond it, the same 503.")
@click.option("--memory-budget", "memory_mib", type=int, default=512, show_default=True, metavar="MIB",
              help="MiB that requests in flight may take in all (decoded bodies, tensors); beyond it HTTP 503 with "
                   "Retry-After (gRPC UNAVAILABLE).")
@click.option("--header-timeout", type=float, default=10.0, show_default=True,
              help="Seconds a client has to send a request's headers; slower or idle new sockets are closed.")
@click.option("--keep-alive-timeout", type=float, default=5.0, show_default=True,
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--graceful-timeout", type=float, default=30.0, show_default=True,
              help="Seconds to let in-flight requests (HTTP and gRPC together) finish on SIGINT/SIGTERM; then "
                   "they get HTTP 503 (gRPC UNAVAILABLE).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Log level of the JSON log lines on stderr.")
@reports_errors
def serve(models: tuple[str, ...], more_models: tuple[str, ...], names: tuple[str, ...], host: str | None,
          port: int | None,
          grpc_port: int | None, token_env: str | None, max_body_bytes: int, max_batch: int,
          batch_timeout_ms: float, threads: int | None, max_connections: int, max_connections_per_client: int,
          memory_mib: int, header_timeout: float, keep_alive_timeout: float, graceful_timeout: float,
          log_level: str) -> None:
    """Host models until interrupted: any MODEL tilecast loads (.onnx, TorchScript .pt, .keras, a SavedModel
    directory), as PATH or NAME=PATH, or a directory holding several.

    \b
    Routes (NAME is the model's name):
      KServe v2:   GET /v2/health/live|ready, GET /v2, GET /v2/models/NAME[/ready], POST /v2/models/NAME/infer
                   (JSON and the binary tensor extension)
      TF Serving:  GET /v1/models/NAME[/metadata], POST /v1/models/NAME:predict ("instances" or "inputs",
                   Earth Engine's base64 TensorProto strings, RAW_JSON, ND_ARRAYS, {"b64": ...})
      Vertex AI:   POST /v1/projects/P/locations/L/endpoints/E:predict and $AIP_PREDICT_ROUTE (first model),
                   GET $AIP_HEALTH_ROUTE; TorchServe's rows too: {"b64": PNG/JPEG/TIFF or TensorProto}, objects,
                   nested lists. In a Vertex AI container it listens on 0.0.0.0:$AIP_HTTP_PORT
      AI Platform: POST /v1/projects/P/models/M[/versions/V]:predict
      Prometheus:  GET /metrics
    \b
    Example:
      tilecast serve unet.onnx --name landcover --port 8500
      tilecast predict scene.tif --endpoint http://127.0.0.1:8500/v2/models/landcover --tile 256 -o out.tif
    """
    from ..serve.app import vertex_routes
    from ..serve.limits import ServerLimits
    from ..serve.models import load_models
    from ..serve.server import listen_address
    from ..serve.server import serve as run_server

    port_flag = "$AIP_HTTP_PORT" if port is None and os.environ.get("AIP_HTTP_PORT", "").strip() else "--port"
    host, port = listen_address(host, port)
    vertex_routes()  # a malformed $AIP_*_ROUTE fails here, before the models load

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise SpecError(f"--token-env {token_env}: that environment variable is not set or empty")
        if token != token.strip() or not token.isascii() or not token.isprintable():
            raise SpecError(f"--token-env {token_env}: the token has surrounding spaces, a line break (a token file's "
                            "trailing newline?) or characters that are not printable ASCII, which no client can send "
                            "in an Authorization header; strip it")
    for flag, value in (("--batch-timeout-ms", batch_timeout_ms), ("--graceful-timeout", graceful_timeout),
                        ("--header-timeout", header_timeout), ("--keep-alive-timeout", keep_alive_timeout)):
        if math.isnan(value):  # passes every comparison below, then fails inside the event loop
            raise SpecError(f"{flag} nan: not a duration; give a number")
    if max_body_bytes <= 0 or max_batch < 1 or batch_timeout_ms < 0 or graceful_timeout < 0:
        raise SpecError("--max-body-bytes and --max-batch must be positive, --batch-timeout-ms and "
                        "--graceful-timeout not negative")
    if threads is not None and threads < 1:
        raise SpecError(f"--threads {threads}: give a positive number of threads per model (or leave it out)")
    if min(max_connections, max_connections_per_client, memory_mib) < 1 or min(header_timeout,
                                                                               keep_alive_timeout) <= 0:
        raise SpecError("--max-connections, --max-connections-per-client, --memory-budget, --header-timeout and "
                        "--keep-alive-timeout must be positive")
    limits = ServerLimits(max_body_bytes=max_body_bytes, memory_bytes=memory_mib << 20,
                          max_connections=max_connections, max_connections_per_client=max_connections_per_client,
                          header_timeout_s=header_timeout, keep_alive_s=keep_alive_timeout)
    paths = list(models) + list(more_models)
    if not paths:
        raise SpecError("give at least one model: tilecast serve MODEL [MODEL...] (or --model PATH)")
    if grpc_port == port and port:
        raise SpecError(f"--grpc-port {grpc_port} is the HTTP {port_flag} too; give gRPC a port of its own")
    for flag, number in ((port_flag, port), ("--grpc-port", grpc_port)):
        if number is not None:
            _check_port(host, number, flag)
    runtimes, bands = load_models(paths, list(names) or None, threads)
    try:
        run_server(runtimes, host=host, port=port, grpc_port=grpc_port, token=token, max_batch=max_batch,
                   batch_timeout_ms=batch_timeout_ms, graceful_s=graceful_timeout, log_level=log_level, bands=bands,
                   limits=limits)
    except (KeyboardInterrupt, SystemExit) as exc:
        # uvicorn has already drained in-flight requests; it re-raises the signal it caught when it returns
        if isinstance(exc, SystemExit) and exc.code not in (None, 0, 128 + 2, 128 + 15):
            raise


def _check_port(host: str, port: int, flag: str) -> None:
    """Fail before the models load, in one line, when ``host:port`` cannot be listened on (taken, or not an address
    of this machine): uvicorn would log its own error and exit 3, and a gRPC port's failure is a traceback."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise SpecError(f"--host {host}: not an address or name this machine resolves ({exc}); use e.g. 127.0.0.1 "
                        "(local clients) or 0.0.0.0 (all)") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind(address)
        except OSError as exc:
            hint = ("another process listens there: stop it or pick another port" if exc.errno == errno.EADDRINUSE else
                    "is --host an address of this machine?")
            raise SpecError(f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror}); {hint}") from None
