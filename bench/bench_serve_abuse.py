"""A soak of ``tilecast serve`` under abuse (issue 17): does it stay up, bounded and correct?

Against a real server on 127.0.0.1 (a separate process, default limits, ``--memory-budget 512``), one run:

  1  baseline: ``--baseline`` well-formed KServe v2 binary requests (one 64 px, 4-band tile each) from
     ``--connections`` concurrent clients (each sends its next request when the last is answered), alone;
  2  ``--requests`` (2,000) more the same way, while at the same time
     - amplification bodies: 62-byte ``:predict`` bodies declaring [3, 9000, 9000], v2 JSON declaring the same,
       and 8 MB JSON bodies, three at a time, that press the memory budget;
     - malformed requests (issue 17 item 7: nested JSON, string/float/overflowing dims, two -1 dims, non-list
       outputs, ``binary_data_size: "abc"``, an unknown input, null data, values that overflow float32);
     - ``--idle`` idle TCP sockets and ``--slow`` slow-header sockets (one byte every 0.5 s), from other loopback
       addresses (127.0.0.2 ...), as other hosts would;
     - a health probe every 50 ms.

It prints whether health answered throughout (and its worst latency), the server's RSS at start / peak / end
against a stated budget (1 GiB), the 5xx answers to malformed input (must be 0), and the p50 latency of the
well-formed requests under abuse against the baseline measured in the same run. Everything is bounded in count and
time; it stops by itself (one to two minutes on 2 shared cores).

    .venv/bin/python bench/bench_serve_abuse.py
    .venv/bin/python bench/bench_serve_abuse.py --requests 300 --idle 200 --slow 20 --rounds 2    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
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

from common import DATA_DIR, OUT_DIR, load_average, median
from models import build_io_bound

RSS_BUDGET = 1 << 30
SIDE = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path) -> None:
        import httpx
        import psutil

        self.port = free_port()
        self.log = open(OUT_DIR / f"serve-abuse-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tilecast.cli import main; main()", "serve", str(model), "--name", "net",
             "--port", str(self.port), "--memory-budget", "512", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                if httpx.get(self.base + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"tilecast serve did not start; see {self.log.name}")
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


PROBE = """
import json, sys, time, urllib.request
url, stop_file, every = sys.argv[1], sys.argv[2], float(sys.argv[3])
out, end = [], time.monotonic() + 600
while time.monotonic() < end:
    t0 = time.perf_counter()
    try:
        ok = urllib.request.urlopen(url, timeout=30).status == 200
    except OSError:
        ok = False
    out.append((time.perf_counter() - t0, ok))
    try:
        open(stop_file).close()
        break
    except OSError:
        time.sleep(every)
print(json.dumps(out))
"""


class Probe(threading.Thread):
    """Samples the server's RSS every ``every`` seconds; health is asked by a separate process (so the bench's own
    load does not count in its latency), until stopped."""

    def __init__(self, server: Server, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.server, self.every, self.stop = server, every, threading.Event()
        self.rss: list[int] = []
        self.health: list[float] = []
        self.failures = 0
        self.stop_file = OUT_DIR / f"probe-stop-{server.port}"
        self.stop_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, server.base + "/v2/health/live",
                                      str(self.stop_file), str(every)], stdout=subprocess.PIPE, text=True)

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                self.rss.append(self.server.rss())
            except psutil.Error:  # the server is gone: main() reports why
                return
            self.stop.wait(self.every)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.stop_file.touch()
        answers = json.loads(self.proc.communicate(timeout=60)[0])
        self.stop_file.unlink(missing_ok=True)
        self.health = [t for t, _ in answers]
        self.failures = sum(not ok for _, ok in answers)


def malformed_bodies() -> list[tuple[str, bytes, dict[str, str]]]:
    """(route, body, headers) of issue 17 item 7's malformed requests."""
    def v2j(**t: object) -> bytes:
        base = {"name": "x", "shape": [1, SIDE, SIDE, 4], "datatype": "FP32", "data": [0.5]}
        return json.dumps({"inputs": [{**base, **t}]}).encode()

    v2r, rest = "/v2/models/net/infer", "/v1/models/net:predict"
    bodies = [
        (rest, b"[" * 50_000 + b"]" * 50_000), (v2r, b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        (v2r, v2j(shape="1,64,64,4")), (v2r, v2j(shape=["1", "64", "64", "4"])), (v2r, v2j(shape=[1, 64.0, 64, 4])),
        (v2r, v2j(shape=[1, 1.5, 64, 4])), (v2r, v2j(shape=[1, 2**70, 64, 4])), (v2r, v2j(shape=[-1, -1, 64, 4])),
        (v2r, json.dumps({**json.loads(v2j()), "outputs": "y"}).encode()),
        (v2r, v2j(data=None, parameters={"binary_data_size": "abc"})), (v2r, v2j(name="bogus", shape=[1], data=[1])),
        (v2r, v2j(shape=[2], data=[None, 1])), (v2r, v2j(shape=[1], data=[1e39])),
        (rest, json.dumps({"inputs": {"bogus": np.zeros((1, 2, 2, 4)).tolist()}}).encode()),
        (rest, json.dumps({"instances": [[[[None, 1, 1, 1]]]]}).encode()),
        (rest, json.dumps({"instances": [[[[1e39, 1, 1, 1]]]]}).encode()),
    ]
    return [(r, b, {"Content-Type": "application/json"}) for r, b in bodies]


def amplification_bodies() -> list[tuple[str, bytes, dict[str, str]]]:
    from tilecast.payloads.protos import TensorProto

    p = TensorProto(dtype=1)
    p.tensor_shape.dim.extend(TensorProto().tensor_shape.Dim(size=d) for d in (3, 9000, 9000))
    p.float_val.append(1.0)
    tiny = json.dumps({"instances": [{"b64": base64.b64encode(p.SerializeToString()).decode()}]}).encode()
    declared = json.dumps({"inputs": [{"name": "x", "shape": [3, 9000, 9000], "datatype": "FP32",
                                       "data": [1.0]}]}).encode()
    x = np.random.default_rng(0).random((1, 512, 512, 4)).round(5)
    big = json.dumps({"inputs": {"x": x.tolist()}}).encode()  # ~8 MB of numbers, charged ~7x that
    headers = {"Content-Type": "application/json"}
    return [("/v1/models/net:predict", tiny, headers), ("/v2/models/net/infer", declared, headers),
            *[("/v1/models/net:predict", big, headers)] * 3]


RETRIED: list[int] = []
DROPPED: list[int] = []


async def well_formed(base: str, n: int, connections: int, body: bytes, headers: dict[str, str]) -> list[float]:
    """Latencies of ``n`` requests sent by ``connections`` concurrent clients, each back to back (a closed loop,
    so a latency is one request's, not the queue's); raises on any answer but 200."""
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        async def client(count: int) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                for _ in range(20):  # 503 + Retry-After says "busy": honour it, as tilecast's client does
                    try:
                        r = await c.post(base + "/v2/models/net/infer", content=body, headers=headers)
                    except httpx.TransportError:  # a kept-alive socket the server closed as it was reused
                        DROPPED.append(1)
                        continue
                    if r.status_code != 503:
                        break
                    RETRIED.append(1)
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                if r.status_code != 200:
                    raise RuntimeError(f"a well-formed request got {r.status_code}: {r.text[:200]}")
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client(n // connections + (i < n % connections)) for i in range(connections)))
    return latencies


async def hostile(base: str, rounds: int) -> dict[str, list[int]]:
    """Status codes of the malformed and amplification requests, ``rounds`` of each, a few at a time."""
    import httpx

    codes: dict[str, list[int]] = {"malformed": [], "amplification": []}
    kinds = [("malformed", b) for b in malformed_bodies()] + [("amplification", b) for b in amplification_bodies()]
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=8)) as c:
        for _ in range(rounds):
            answers = await asyncio.gather(*(c.post(base + route, content=body, headers=h)
                                             for _, (route, body, h) in kinds), return_exceptions=True)
            for (kind, _), r in zip(kinds, answers, strict=True):
                if isinstance(r, httpx.TransportError):
                    codes[kind].append(0)  # the connection closed without an answer
                elif isinstance(r, BaseException):
                    raise r
                else:
                    codes[kind].append(r.status_code)
    return codes


def open_sockets(base: str, n: int, first_host: int, per_host: int = 200) -> list[socket.socket]:
    host, port = base.removeprefix("http://").split(":")
    out = []
    for i in range(n):
        with contextlib.suppress(OSError):
            out.append(socket.create_connection((host, int(port)), timeout=5,
                                                source_address=(f"127.0.0.{first_host + i // per_host}", 0)))
    return out


def slow_headers(socks: list[socket.socket], seconds: float, stop: threading.Event) -> None:
    """Send one header byte per socket every 0.5 s; a socket the server closed drops out."""
    alive = list(socks)
    for s in alive:
        with contextlib.suppress(OSError):
            s.sendall(b"POST /v2/models/net/infer HTTP/1.1\r\nHost: x\r\n")
    end = time.monotonic() + seconds
    while alive and time.monotonic() < end and not stop.is_set():
        kept = []
        for s in alive:
            try:
                s.sendall(b"X")
                kept.append(s)
            except OSError:
                pass
        alive = kept
        stop.wait(0.5)


def closed_count(socks: list[socket.socket]) -> int:
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            closed += s.recv(1 << 16) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="Well-formed requests under abuse.")
    ap.add_argument("--baseline", type=int, default=400, help="Well-formed requests alone, for the baseline.")
    ap.add_argument("--connections", type=int, default=200, help="Well-formed requests in flight at once.")
    ap.add_argument("--idle", type=int, default=1100)
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5, help="Rounds of the malformed and amplification requests.")
    args = ap.parse_args()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    from tilecast.payloads import v2

    model = build_io_bound(DATA_DIR / "serve_io.onnx")
    print(f"{args.baseline} then {args.requests} well-formed v2 requests ({SIDE}px x 4 bands), {args.connections} "
          "in flight; "
          f"{args.idle} idle and {args.slow} slow-header sockets; {args.rounds} rounds of malformed and "
          f"amplification requests; {os.cpu_count()} cores, load {load_average():.1f}")
    server, probe = Server(model), None
    try:
        x = np.random.default_rng(1).random((1, SIDE, SIDE, 4)).astype(np.float32)
        body, headers = v2.encode_request({"x": x})
        asyncio.run(well_formed(server.base, 50, 10, body, headers))  # warm up
        probe = Probe(server)
        probe.start()
        t0 = time.perf_counter()
        alone = asyncio.run(well_formed(server.base, args.baseline, args.connections, body, headers))
        t_alone = time.perf_counter() - t0
        idle = open_sockets(server.base, args.idle, 2)
        slow = open_sockets(server.base, args.slow, 2 + (args.idle + 199) // 200)
        stop = threading.Event()
        slow_thread = threading.Thread(target=slow_headers, args=(slow, 30.0, stop), daemon=True)
        slow_thread.start()

        async def abuse() -> tuple[list[float], dict[str, list[int]]]:
            return await asyncio.gather(well_formed(server.base, args.requests, args.connections, body, headers),
                                        hostile(server.base, args.rounds))

        t0 = time.perf_counter()
        under, codes = asyncio.run(abuse())
        t_under = time.perf_counter() - t0
        stop.set()
        slow_thread.join()
        closed_idle, closed_slow = closed_count(idle), closed_count(slow)
        for s in idle + slow:
            s.close()
        time.sleep(2.0)  # let the server settle, then the end RSS
        probe.finish()
        end = server.rss()
    finally:
        if probe is not None:
            probe.kill()
        server.close()
    start, peak = probe.rss[0], max(probe.rss)
    mal, amp = codes["malformed"], codes["amplification"]
    print(f"\nhealth answered throughout: {'yes' if probe.failures == 0 else 'NO'} ({len(probe.health)} probes, "
          f"{probe.failures} failed, max latency {max(probe.health) * 1000:.0f} ms, "
          f"median {median(probe.health) * 1000:.1f} ms)")
    print(f"server RSS: start {start >> 20} MiB, peak {peak >> 20} MiB, end {end >> 20} MiB; "
          f"budget {RSS_BUDGET >> 20} MiB: {'within' if peak < RSS_BUDGET else 'OVER'}")
    print(f"malformed requests: {len(mal)}, 5xx: {sum(c >= 500 for c in mal)} (must be 0); codes (0: closed) "
          f"{ {c: mal.count(c) for c in sorted(set(mal))} }")
    print(f"amplification requests: {len(amp)}, codes { {c: amp.count(c) for c in sorted(set(amp))} } "
          "(400/413: refused before allocating; 503: memory budget spent, retry; 200: an 8 MB body that fit)")
    print(f"sockets closed by the server: idle {closed_idle}/{len(idle)}, slow-header {closed_slow}/{len(slow)}")
    p_alone, p_under = median(alone), median(under)
    print(f"well-formed requests: all {args.baseline + args.requests} answered 200 ({len(RETRIED)} after a 503 + "
          f"Retry-After, {len(DROPPED)} resent after the connection closed); "
          f"p50 latency alone {p_alone * 1000:.0f} ms ({args.baseline / t_alone:.0f} req/s), "
          f"under abuse {p_under * 1000:.0f} ms "
          f"({args.requests / t_under:.0f} req/s); ratio under/alone {p_under / p_alone:.2f}")


if __name__ == "__main__":
    main()
