"""Local prediction vs the same prediction through ``tilecast serve`` on loopback, and server throughput.

One run measures, on a generated 4-band uint16 raster and the compute-bound network of ``bench/models.py``:

  a  local: ``tilecast predict IMAGE --model net.onnx --tile 256 --overlap 16`` (a new process each time, start-up
     included, as a user runs it)
  b  the same command with ``--endpoint`` against ``tilecast serve`` (a separate process on 127.0.0.1, started once,
     as a hosted model is) with KServe v2 binary (``V2_BINARY``) and Earth Engine's ``SERIALIZED_TF_TENSORS``: the
     ratio of each to (a), medians of interleaved repeats, measured in the same run. Outputs are checked equal to
     (a). Targets (issue 16): V2_BINARY >= 0.80, SERIALIZED_TF_TENSORS >= 0.60.
  c  (``--throughput``) server throughput: concurrent clients each posting one-tile v2 binary requests, with dynamic
     batching (``--max-batch 16``) and without (``--max-batch 1``), for the compute-bound network (288 px tiles)
     and for a per-pixel model on 64 px tiles, where per-call overhead dominates and batching pays most.

Client and server share the machine's cores, as on one host (``taskset -c 0,1`` for the 2-core figure).

    taskset -c 0,1 .venv/bin/python bench/bench_serve.py --size 4096 --repeats 3     # issue 16's figure
    .venv/bin/python bench/bench_serve.py --size 512 --repeats 1                     # smoke run
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from common import DATA_DIR, OUT_DIR, load_average, make_raster, median, mpx_per_s
from models import build_compute_bound, build_io_bound, macs_per_pixel

TILE, OVERLAP, BATCH = 256, 16, 8
FORMATS = [("V2_BINARY", "/v2/models/net"), ("SERIALIZED_TF_TENSORS", "/v1/models/net:predict")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, *extra: str) -> None:
        import httpx

        self.port = free_port()
        self.log = open(OUT_DIR / f"serve-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tilecast.cli import main; main()", "serve", str(model), "--name", "net",
             "--port", str(self.port), "--max-body-bytes", str(256 << 20), "--log-level", "warning", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                if httpx.get(self.base + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"tilecast serve did not start; see {self.log.name}")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


def predict_cli(image: Path, out: Path, *source: str) -> float:
    """Seconds for one ``tilecast predict`` process (start-up included) writing ``out``."""
    cmd = [sys.executable, "-c", "from tilecast.cli import main; main()", "predict", str(image), *source,
           "--tile", str(TILE), "--overlap", str(OVERLAP), "--batch-size", str(BATCH), "-o", str(out),
           "--overwrite", "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


def throughput(base: str, clients: int, seconds: float, side: int) -> float:
    """Tiles per second answered to ``clients`` threads posting one ``side`` x ``side`` tile each, back to back."""
    import httpx

    from tilecast.payloads import v2

    x = np.random.default_rng(0).normal(size=(1, 4, side, side)).astype(np.float32)
    name = httpx.get(base + "/v2/models/net").json()["inputs"][0]["name"]
    body, headers = v2.encode_request({name: x})
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            while time.perf_counter() < stop:
                r = c.post(base + "/v2/models/net/infer", content=body, headers=headers)
                r.raise_for_status()
                done[i] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--throughput", action="store_true", help="Also measure server throughput (c).")
    ap.add_argument("--max-payload-bytes", type=int, default=4_000_000,
                    help="Client request limit; a batch larger than this goes out as concurrent requests.")
    args = ap.parse_args()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    image = make_raster(DATA_DIR / f"serve_{args.size}.tif", args.size, progress=False)
    model = build_compute_bound(DATA_DIR / "serve_net.onnx")
    pixels = args.size * args.size
    print(f"raster {args.size} x {args.size} x 4, tile {TILE} + {OVERLAP} overlap, batch {BATCH}, "
          f"max_payload_bytes {args.max_payload_bytes:,}, "
          f"{macs_per_pixel() / 1000:.0f}k MACs/px, {os.cpu_count()} cores, load {load_average():.1f}")

    times: dict[str, list[float]] = {"local": []} | {f: [] for f, _ in FORMATS}
    outs = {name: OUT_DIR / f"serve_{args.size}_{name.lower()}.tif" for name in times}
    sources = {"local": ("--model", str(model))} | {
        f: ("--endpoint", "http://127.0.0.1:{port}" + route, "--payload-format", f,
            "--max-payload-bytes", str(args.max_payload_bytes)) for f, route in FORMATS}
    server = Server(model)
    try:
        def run(name: str) -> float:
            src = tuple(a.format(port=server.port) for a in sources[name])
            return predict_cli(image, outs[name], *src)

        warm = make_raster(DATA_DIR / "serve_512.tif", 512, progress=False)
        for name in times:  # warm up the server (first runs of a shape are slow) on a small raster
            src = tuple(a.format(port=server.port) for a in sources[name])
            predict_cli(warm, OUT_DIR / "serve_warm.tif", *src)
        reference = None
        for _ in range(args.repeats):
            for name in times:
                times[name].append(run(name))
                if name == "local" and reference is None:
                    reference = read(outs["local"])
                if name != "local" and not np.array_equal(read(outs[name]), reference):
                    raise SystemExit(f"{name}: the endpoint's prediction differs from the local one")
    finally:
        server.close()
    local = median(times["local"])
    print(f"\n{'tilecast predict':<24}{'median s':>10}{'Mpx/s':>10}{'vs local':>10}{'per round':>11}{'target':>9}")
    targets = {"V2_BINARY": 0.80, "SERIALIZED_TF_TENSORS": 0.60}
    for name, values in times.items():
        t = median(values)
        rounds = median([a / b for a, b in zip(times["local"], values, strict=True)])
        target = f">= {targets[name]:.2f}" if name in targets else ""
        print(f"{name:<24}{t:>10.2f}{mpx_per_s(pixels, t):>10.2f}{local / t:>10.2f}{rounds:>11.2f}{target:>9}")
    print(f"load average after: {load_average():.1f}")
    if not args.throughput:
        return

    io_model = build_io_bound(DATA_DIR / "serve_io.onnx")
    for net, side, label in ((model, TILE + 2 * OVERLAP, "compute-bound network"),
                             (io_model, 64, "per-pixel 1x1 model (per-call overhead dominates)")):
        print(f"\nserver throughput, {label}, {args.clients} concurrent clients, one {side}px tile per request:")
        variants = (("no batching (--max-batch 1)", ("--max-batch", "1")),
                    ("dynamic batching (--max-batch 16, 5 ms)", ("--max-batch", "16")))
        servers = [Server(net, *extra) for _, extra in variants]  # both up; rounds alternate between them
        rates: list[list[float]] = [[] for _ in variants]
        try:
            for server in servers:
                throughput(server.base, args.clients, 1.0, side)  # warm up
            for _ in range(max(1, args.repeats)):
                for i, server in enumerate(servers):
                    rates[i].append(throughput(server.base, args.clients, args.seconds, side))
        finally:
            for server in servers:
                server.close()
        for (name, _), r in zip(variants, rates, strict=True):
            rate = median(r)
            print(f"  {name:<42}{rate:>9.1f} tiles/s{mpx_per_s(int(rate * side * side), 1.0):>8.2f} Mpx/s")


if __name__ == "__main__":
    main()
