"""How close does ``predict_properties`` get to ONNX Runtime itself on a tabular model?

1,000,000 point features with 10 float properties, scored by a small scikit-learn RandomForest converted with
skl2onnx (one ``(N, 10)`` float input; outputs ``label`` and ``probabilities``). One run measures, each variant in a
fresh process so peak RSS is its own, with repeats interleaved and medians reported:

  a  ONNX Runtime ``session.run`` on the same in-memory ``(N, 10)`` float32 array, in one call, with ONNX
     Runtime's default session options (every core for the one call)
  a2 the same array in slices of 65,536 rows, tilecast's batch size, through tilecast's own session and as many
     calls at a time as it makes (its ``streams``). The limit is the faster of a and a2
  b  tilecast: ``predict_properties(runtime, gdf, ...)`` on an in-memory GeoDataFrame of the same values,
     returning a new GeoDataFrame with the predicted class ``cls`` (int32) merged in
  b2 the same, also returning the class probabilities as a list column ``p`` (one numpy array per feature)
  c  tilecast streaming: ``predict_features_file`` GeoParquet -> GeoParquet (read, score, write, row groups of
     65,536); reported for information, it includes the file I/O

Targets: b / a >= 0.7 features/s, and peak RSS of b and c < 1.5 GiB.

    .venv/bin/python bench/bench_features.py            # 1,000,000 features, 3 repeats
    .venv/bin/python bench/bench_features.py --quick    # 100,000 features, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_PROPS = 10
TARGET_RATIO = 0.7
TARGET_RSS = 1.5 * 2**30
LABELS = {
    "a": "a  ORT session.run, one call on in-memory arrays",
    "a2": "a2 ORT session.run, 65,536-row slices",
    "b": "b  tilecast predict_properties (GeoDataFrame)",
    "b2": "b2 tilecast, + probabilities as a list column",
    "c": "c  tilecast GeoParquet -> GeoParquet (streamed)",
}


def make_values(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_PROPS)).astype(np.float32)


def make_gdf(n: int):
    import geopandas as gpd
    import shapely

    values = make_values(n)
    rng = np.random.default_rng(1)
    geoms = shapely.points(rng.uniform(500_000, 600_000, n), rng.uniform(4_500_000, 4_600_000, n))
    data = {f"p{i}": values[:, i] for i in range(N_PROPS)}
    return gpd.GeoDataFrame(data, geometry=geoms, crs="EPSG:32633")


def make_model(path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tabular_models import tabular_classifier

    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, N_PROPS)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int) + (x[:, 3] > 1)
    _, onx = tabular_classifier(x, y, kind="forest", n_estimators=20, max_depth=8)
    path.write_bytes(onx)


def worker(variant: str, model: str, n: int, data: str) -> dict:
    from tilecast.runtimes.onnx import OnnxRuntime

    rt = OnnxRuntime(model)
    props = [f"p{i}" for i in range(N_PROPS)]
    outputs = ["cls=label:int32", "p=probabilities:float32:1"]
    if variant in ("a", "a2"):
        from concurrent.futures import ThreadPoolExecutor

        import onnxruntime

        x = make_values(n)
        if variant == "a":
            session, step, streams = onnxruntime.InferenceSession(model), n, 1
        else:
            session, step, streams = rt.session, 65_536, rt.streams
        session.run(None, {"input": x[:1]})  # warm-up, as tilecast's first call also pays it
        t = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            labels = list(pool.map(lambda i: session.run(None, {"input": x[i:i + step]})[0], range(0, n, step)))
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "check": int(sum(int(lab.sum()) for lab in labels))}
    if variant in ("b", "b2"):
        from tilecast.features import predict_properties

        gdf = make_gdf(n)
        t = time.perf_counter()
        out = predict_properties(rt, gdf, input_properties=props,
                                 output_properties=outputs if variant == "b2" else outputs[:1])
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "check": int(out["cls"].sum())}
    from tilecast.features import predict_features_file

    with tempfile.TemporaryDirectory(dir=Path(data).parent) as tmp:
        t = time.perf_counter()
        predict_features_file(rt, data, Path(tmp) / "out.parquet", input_properties=props,
                              output_properties=outputs)
        seconds = time.perf_counter() - t
        import pyarrow.parquet as pq

        check = int(pq.read_table(Path(tmp) / "out.parquet", columns=["cls"])["cls"].to_numpy().sum())
    return {"seconds": seconds, "check": check}


def peak_rss() -> int:
    """This process's own peak RSS (VmHWM). Unlike a child's ru_maxrss it does not include the parent's at fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(args: list[str]) -> tuple[dict, int]:
    """Run this script as a worker in a fresh process; returns its JSON result and its peak RSS (bytes)."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, int(result.pop("peak_rss"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", choices=list(LABELS), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps({**worker(args.worker, args.model, args.n, args.data), "peak_rss": peak_rss()}))
        return
    if args.quick:
        args.n, args.repeats = 100_000, 1
    with tempfile.TemporaryDirectory(prefix="tilecast-bench-features-") as tmp:
        model = Path(tmp) / "forest.onnx"
        make_model(model)
        data = Path(tmp) / "points.parquet"
        make_gdf(args.n).to_parquet(data, row_group_size=65_536)
        results: dict[str, list[tuple[float, int]]] = {v: [] for v in LABELS}
        checks: dict[str, int] = {}
        for _ in range(args.repeats):
            for v in LABELS:
                res, rss = run_child(["--worker", v, "--model", str(model), "--n", str(args.n), "--data", str(data)])
                results[v].append((res["seconds"], rss))
                checks[v] = res["check"]
    if len(set(checks.values())) != 1:
        raise SystemExit(f"the variants disagree on the predictions: {checks}")
    print(f"{args.n:,} point features x {N_PROPS} properties, RandomForest(20 trees, depth 8) via skl2onnx; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; median of {args.repeats}")
    print(f"{'variant':50s} {'seconds':>8s} {'features/s':>12s} {'ratio':>6s} {'peak RSS':>9s}")
    limit = args.n / min(statistics.median(s for s, _ in results[v]) for v in ("a", "a2"))
    rates = {}
    for v, label in LABELS.items():
        sec = statistics.median(s for s, _ in results[v])
        rss = statistics.median(r for _, r in results[v])
        rates[v] = args.n / sec
        print(f"{label:50s} {sec:8.2f} {rates[v]:12,.0f} {rates[v] / limit:6.2f} {rss / 2**20:7.0f} MiB")
    ok_ratio = rates["b"] / limit >= TARGET_RATIO
    ok_rss = all(statistics.median(r for _, r in results[v]) < TARGET_RSS for v in ("b", "b2", "c"))
    print(f"target b/a >= {TARGET_RATIO}: {'met' if ok_ratio else 'MISSED'}; "
          f"peak RSS < 1.5 GiB: {'met' if ok_rss else 'MISSED'}")


if __name__ == "__main__":
    main()
