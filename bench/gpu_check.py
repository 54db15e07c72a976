"""The GPU acceptance check of issue 16, in one run: ``tilecast predict`` end to end against the model alone.

The network is ``bench_predict.py``'s compute-bound FCN (3x3 conv 4->32, three 3x3 32->32, 1x1 32->1, ReLU between,
a 1e-4 input scale; ~29k multiply-adds per pixel), built twice from the same weights (``models.fcn_weights``): as
ONNX by ``models.build_compute_bound`` and as TorchScript here. For TorchScript CUDA and ONNX Runtime CUDA, fp32 and
fp16, one GPU and all GPUs (when there are several), one run measures, medians over repeats:

  model alone  the framework on the tiles ``predict`` feeds it (batches of 8 x 4 x 288 x 288 float32 from host
               memory, outputs back to host memory, as many batches as the raster has tiles): the faster of the
               plain framework (one thread per GPU: tensor to the device, module, result to the host) and
               tilecast's runtime with its own streams
  predict      ``Model.from_torch/from_onnx(..., device, precision).predict_image(raster).to_geotiff(out)`` on a
               generated 4-band uint16 raster (model loaded and warmed up once, outside the timing)

and the ratio predict / model alone (target >= 0.50). CPU rows (fp32) come from the same measurements on the CPU,
and the CPU acceptance figure, compute-bound d/a (target >= 0.90), from ``bench_predict.py --only compute,a,d`` run
as a subprocess. One table at the end carries every figure with the hardware (``nvidia-smi`` names, CPU count).
Without a GPU only the CPU rows run; without the ``onnx`` package (which builds the ONNX model) the ONNX rows and the
CPU d/a are skipped with a note and the TorchScript rows still run.

Each configuration runs in a child process, killed after 240 s or at ``--deadline`` (480 s by default, counted from
the start), so a hang, a crash or a sticky CUDA error costs that row only. ``--budget`` (330 s) stops starting new
GPU configurations; past ``--deadline`` nothing new starts.

    python bench/gpu_check.py              # 4096 x 4096 GPU raster, 3 repeats; CPU d/a at 6144 x 6144, 3 repeats
    python bench/gpu_check.py --quick      # 1024 x 1024, 1 repeat, CPU d/a at 1024 (a smoke run, < 1 minute)

Results go to ``$OUT/gpu_check.json`` when ``OUT`` is set (the device machine's output folder), and to ``--json``,
rewritten after every row (``"complete": false`` until the run ends), so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import models  # noqa: E402

TILE, HALO, BATCH, SEED = 256, 16, 8, 0
TARGET_GPU, TARGET_CPU = 0.50, 0.90
CHILD_LIMIT_S = 240  # the most one configuration may take (it runs in a child process, killed past this)

HAVE_ONNX = importlib.util.find_spec("onnx") is not None
"""``bench/models.py`` imports ``onnx`` in its builders only: without it (often so on a GPU machine: neither torch nor
onnxruntime brings it) the TorchScript twin still gets its weights (:func:`models.fcn_weights` is numpy), and the
ONNX rows are skipped with a note."""

INPUT_SCALE, compute_layers, fcn_weights = models.INPUT_SCALE, models.compute_layers, models.fcn_weights


def build_torchscript(path: Path, seed: int = SEED) -> Path:
    """The TorchScript twin of :func:`models.build_compute_bound`, from the same weights."""
    import torch

    layers, weights = compute_layers(), fcn_weights(seed)

    class FCN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = INPUT_SCALE
            self.convs = torch.nn.ModuleList(torch.nn.Conv2d(ci, co, k, padding=k // 2) for ci, co, k in layers)
            with torch.no_grad():
                for conv, (w, b) in zip(self.convs, weights, strict=True):
                    conv.weight.copy_(torch.from_numpy(w))
                    conv.bias.copy_(torch.from_numpy(b))

        def forward(self, x):
            h = x * self.scale
            n = len(self.convs)
            for i, conv in enumerate(self.convs):
                h = conv(h)
                if i < n - 1:
                    h = torch.relu(h)
            return h

    torch.jit.save(torch.jit.script(FCN().eval()), str(path))
    return path


def make_raster(path: Path, size: int) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000, 4600000, 10, 10), tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 512):
            h = min(512, size - r)
            dst.write(rng.integers(0, 10000, (4, h, size), dtype=np.uint16),
                      window=rasterio.windows.Window(0, r, size, h))
    return path


# --- hardware ---------------------------------------------------------------------------------------------------------

def gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def hardware() -> dict:
    info = {"gpus": gpu_names(), "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__, "onnx": HAVE_ONNX}
    try:
        import onnxruntime as ort

        info["onnxruntime"], info["ort_providers"] = ort.__version__, ort.get_available_providers()
    except ImportError:
        info["onnxruntime"], info["ort_providers"] = None, []
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        info["torch"] = None
        info["torch_cuda"] = 0
    return info


# --- the model alone --------------------------------------------------------------------------------------------------

def batches(tiles: int) -> list[np.ndarray]:
    """The padded tiles ``predict`` sends for ``tiles`` tiles, as float32 batches of :data:`BATCH` (the last one may
    be smaller); a few distinct arrays, reused, so host memory stays small."""
    p = TILE + 2 * HALO
    rng = np.random.default_rng(1)
    pool = [rng.integers(0, 10000, (BATCH, 4, p, p)).astype(np.float32) for _ in range(4)]
    sizes = [BATCH] * (tiles // BATCH) + ([tiles % BATCH] if tiles % BATCH else [])
    return [pool[i % len(pool)][:n] for i, n in enumerate(sizes)]


def raw_torch(path: Path, devices: list[str], precision: str):
    """The plain framework: a module per device, one thread per device, each batch to the device and back."""
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    modules = [torch.jit.load(str(path), map_location=d).eval().to(dtype) for d in devices]

    def work(i: int, part: list[np.ndarray]) -> None:
        with torch.inference_mode():
            for b in part:
                x = torch.from_numpy(b).to(devices[i]).to(dtype)
                modules[i](x).float().cpu()

    return work, len(devices)


def raw_onnx(path: Path, devices: list[str], precision: str):
    import onnxruntime as ort

    from tilecast.runtimes.onnx import to_fp16

    source = to_fp16(str(path)) if precision == "fp16" else str(path)
    sessions = []
    for d in devices:
        providers = ["CPUExecutionProvider"] if d == "cpu" else [
            ("CUDAExecutionProvider", {"device_id": int(d.split(":")[1])}), "CPUExecutionProvider"]
        sessions.append(ort.InferenceSession(source, providers=providers))
    name = sessions[0].get_inputs()[0].name

    def work(i: int, part: list[np.ndarray]) -> None:
        for b in part:
            sessions[i].run(None, {name: b})

    return work, len(devices)


def timed_threads(work, n: int, items: list[np.ndarray]) -> float:
    """``work(i, share)`` on ``n`` threads, the items dealt round-robin; wall seconds."""
    shares = [items[i::n] for i in range(n)]
    for i in range(n):  # warm-up of every device and stream (CUDA context, cuDNN autotune, TorchScript's
        work(i, items[:3])  # profiling runs, ONNX Runtime's arena growth)
    t = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i, shares[i])) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def runtime_work(rt):
    name = rt.signature.input_names[0]

    def work(i: int, part: list[np.ndarray]) -> None:
        for b in part:
            rt.run({name: b})

    return work, rt.streams


def model_alone(kind: str, path: Path, devices: list[str], precision: str, rt, items, repeats: int) -> dict:
    raw_fn, n = (raw_torch if kind == "torchscript" else raw_onnx)(path, devices, precision)
    work, streams = runtime_work(rt)
    raw = statistics.median(timed_threads(raw_fn, n, items) for _ in range(repeats))
    ours = statistics.median(timed_threads(work, streams, items) for _ in range(repeats))
    return {"raw_s": raw, "runtime_s": ours, "runtime_streams": streams, "best_s": min(raw, ours)}


# --- one configuration ------------------------------------------------------------------------------------------------

def load(kind: str, path: Path, device: str, precision: str):
    import tilecast

    params = dict(input_tile_size=TILE, input_overlap_size=HALO, layout="NCHW", batch_size=BATCH,
                  output_bands={"y": {"type": "float32"}})
    if kind == "torchscript":
        return tilecast.Model.from_torch(path, device=device, precision=precision, **params)
    providers = ["cpu"] if device == "cpu" else ["cuda", "cpu"]
    return tilecast.Model.from_onnx(path, providers=providers, device=device, precision=precision, **params)


def measure(kind: str, path: Path, device: str, precision: str, raster: Path, out_dir: Path, size: int,
            repeats: int) -> dict:
    from tilecast.runtimes.devices import describe_placement

    model = load(kind, path, device, precision)
    rt = model.runtime
    devices = [str(d) for d in rt.devices]
    items = batches(((size + TILE - 1) // TILE) ** 2)
    alone = model_alone(kind, path, devices, precision, rt, items, repeats)
    times = []
    for i in range(repeats):
        out = out_dir / f"p_{kind}_{precision}_{i}.tif"
        t = time.perf_counter()
        model.predict_image(str(raster)).to_geotiff(out, overwrite=True, progress=False)
        times.append(time.perf_counter() - t)
        out.unlink()
    placement = describe_placement(rt, BATCH)
    model.close()
    px = size * size
    pred = statistics.median(times)
    return {"runtime": kind, "precision": precision, "device": device, "devices": devices, "placement": placement,
            "model_alone_mpx_s": px / alone["best_s"] / 1e6, "model_raw_mpx_s": px / alone["raw_s"] / 1e6,
            "model_runtime_mpx_s": px / alone["runtime_s"] / 1e6, "runtime_streams": alone["runtime_streams"],
            "predict_s": pred, "predict_runs_s": times, "predict_mpx_s": px / pred / 1e6,
            "ratio": alone["best_s"] / pred}


def configurations(info: dict, cpu_only: bool) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The (runtime, device, precision) rows to measure, and why GPU rows are missing."""
    rows = [("onnx", "cpu", "fp32"), ("torchscript", "cpu", "fp32")]
    notes = []
    if not HAVE_ONNX or not info["onnxruntime"]:
        rows = rows[1:]
        notes.append("ONNX rows and CPU d/a: " + ("the onnx package is missing (pip install onnx; bench/models.py "
                                                   "builds the ONNX model with it)" if not HAVE_ONNX
                                                   else "onnxruntime is missing (pip install onnxruntime)"))
    if not info["torch"]:
        rows = [r for r in rows if r[0] != "torchscript"]
    if cpu_only:
        return rows, [*notes, "GPU rows: not asked for (--cpu-only)"]
    gpus = max(info["torch_cuda"], len(info["gpus"]))
    devices = ["cuda:0"] + (["cuda:all"] if gpus > 1 else [])
    kinds = []
    if not gpus:
        notes.append("GPU rows: no GPU here (nvidia-smi lists none and torch sees none)")
    if gpus and info["torch_cuda"]:
        kinds.append("torchscript")
    elif gpus:
        notes.append(f"TorchScript CUDA rows: torch {info['torch']} has no CUDA (install a CUDA build of torch)")
    if gpus and HAVE_ONNX and "CUDAExecutionProvider" in info["ort_providers"]:
        kinds.append("onnx")
    elif gpus and HAVE_ONNX:
        notes.append("ONNX Runtime CUDA rows: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    return [(k, d, p) for k in kinds for p in ("fp32", "fp16") for d in devices] + rows, notes


# --- the CPU acceptance figure ----------------------------------------------------------------------------------------

def cpu_da(work: Path, quick: bool, size: int | None, repeats: int | None, timeout: float) -> dict:
    extra = ["--only", "compute,a,d", *(["--quick"] if quick else []), *(["--size", str(size)] if size else []),
             *(["--repeats", str(repeats)] if repeats else [])]
    cmd = [sys.executable, str(ROOT / "bench" / "bench_predict.py"), *extra,
           "--data-dir", str(work / "data"), "--out-dir", str(work / "bp")]
    command = " ".join(["python", "bench/bench_predict.py", *extra])
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"command": command, "seconds": time.perf_counter() - t, "error": f"timed out after {timeout:.0f} s"}
    out = {"command": command, "seconds": time.perf_counter() - t,
           "returncode": done.returncode, "stdout_tail": done.stdout[-3000:]}
    results = work / "bp" / "results.json"
    if done.returncode or not results.exists():
        out["error"] = (done.stderr or done.stdout)[-2000:]
        return out
    summary = json.loads(results.read_text())
    ratio = next((r for r in summary["ratios"] if r["model"] == "compute" and r["variant"] == "d"
                  and r["baseline"] == "a"), None)
    out.update(size=summary.get("size"), repeats=summary.get("repeats"), rows=summary.get("rows"),
               ratio=ratio and ratio["ratio"])
    return out


# --- report -----------------------------------------------------------------------------------------------------------

def report(results: dict) -> None:
    info, size = results["hardware"], results["size"]
    gpus = "; ".join(info["gpus"]) or "none"
    print(f"\nhardware: GPUs: {gpus}; {info['cpus']} CPUs ({info['cpus_usable']} usable); Python {info['python']}, "
          f"onnxruntime {info['onnxruntime']}, torch {info['torch']}")
    print(f"raster {size} x {size} x 4 uint16 -> float32 COG; tiles {TILE} + 2 x {HALO} px, batch {BATCH}; "
          f"medians of {results['repeats']}; ratios measured in this run\n")
    head = (f"{'runtime':12s} {'prec':5s} {'device':9s} {'model alone':>12s} {'(raw':>8s} {'tilecast rt)':>13s} "
            f"{'predict':>9s} {'predict/model':>14s}  target")
    print(head)
    print("-" * len(head))
    for r in results["rows"]:
        if "error" in r:
            print(f"{r['runtime']:12s} {r['precision']:5s} {r['device']:9s} error: {r['error']}")
            continue
        gpu = r["device"] != "cpu"
        verdict = (f">= {TARGET_GPU:.2f} {'PASS' if r['ratio'] >= TARGET_GPU else 'MISS'}" if gpu else "(CPU)")
        print(f"{r['runtime']:12s} {r['precision']:5s} {r['device']:9s} {r['model_alone_mpx_s']:9.1f} Mpx/s "
              f"{r['model_raw_mpx_s']:7.1f} {r['model_runtime_mpx_s']:8.1f} (x{r['runtime_streams']}) "
              f"{r['predict_mpx_s']:7.1f} Mpx/s {r['ratio']:8.2f}        {verdict}")
    for note in results.get("notes", []):
        print(f"  {note}")
    for r in results["rows"]:
        if r.get("placement"):
            print(f"  {r['runtime']} {r['precision']} {r['device']}: {r['placement']}")
    da = results.get("cpu_da")
    if da:
        if da.get("ratio") is None:
            print(f"\nCPU compute-bound d/a: failed ({da.get('error', '')[-300:]})")
        else:
            ok = "PASS" if da["ratio"] >= TARGET_CPU else "MISS"
            print(f"\nCPU compute-bound d/a ({da['command']}, {da['size']}^2, {da['repeats']} repeat(s)): "
                  f"{da['ratio']:.2f} (target >= {TARGET_CPU:.2f}: {ok})")
    print(f"total {results['seconds']:.0f} s")


def save(results: dict, targets: list[Path]) -> None:
    """Write the results so far (atomically): a run cut short by the device's time limit keeps what it measured."""
    text = json.dumps(results, indent=2, default=str)
    for target in targets:
        try:
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, target)
        except OSError as exc:
            print(f"cannot write {target}: {exc}", file=sys.stderr)


def run_child(kind: str, device: str, precision: str, work: Path, size: int, repeats: int, timeout: float) -> dict:
    """One configuration in a child process, killed after ``timeout`` seconds: a hang, a crash or a sticky CUDA
    error there (which would fail every later call in the process) costs that configuration only, and each
    configuration starts with all of the device's memory free."""
    row = {"runtime": kind, "precision": precision, "device": device}
    out = work / f"row_{kind}_{precision}_{device.replace(':', '_')}.json"
    spec = json.dumps({"kind": kind, "device": device, "precision": precision, "work": str(work), "size": size,
                       "repeats": repeats, "out": str(out)})
    t = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec], capture_output=True,
                              text=True, timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-300:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {**row, "error": f"timed out after {timeout:.0f} s; stderr: {tail}"}
    if done.returncode or not out.exists():
        return {**row, "error": f"exit {done.returncode}: {(done.stderr or done.stdout)[-600:]}"}
    return {**json.loads(out.read_text()), "child_s": time.perf_counter() - t}


def child(spec: str) -> None:
    """``--child``: measure one configuration (see :func:`run_child`) and write its row as JSON."""
    a = json.loads(spec)
    work = Path(a["work"])
    path = work / ("fcn.onnx" if a["kind"] == "onnx" else "fcn.pt")
    try:
        row = measure(a["kind"], path, a["device"], a["precision"], work / "scene.tif", work, a["size"],
                      a["repeats"])
    except Exception as exc:  # the error as a row, so the table says what failed
        row = {"runtime": a["kind"], "precision": a["precision"], "device": a["device"],
               "error": f"{type(exc).__name__}: {str(exc)[:600]}"}
    Path(a["out"]).write_text(json.dumps(row, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1024^2, 1 repeat, CPU d/a at 1024^2")
    ap.add_argument("--size", type=int, help="raster side for the GPU and CPU rows (default 4096; 1024 --quick)")
    ap.add_argument("--repeats", type=int, help="repeats per figure (default 3; 1 --quick)")
    ap.add_argument("--cpu-size", type=int, help="raster side for bench_predict's d/a (default: its own, 6144)")
    ap.add_argument("--no-cpu-da", action="store_true", help="skip bench_predict.py's d/a")
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU rows, even on a GPU machine")
    ap.add_argument("--budget", type=float, default=330, help="seconds after which no new GPU configuration starts")
    ap.add_argument("--deadline", type=float, default=480,
                    help="seconds after which nothing new starts and anything running is stopped (default 480)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    sys.stdout.reconfigure(line_buffering=True)
    size, repeats = args.size or (1024 if args.quick else 4096), args.repeats or (1 if args.quick else 3)
    start = time.perf_counter()
    targets = [t for t in (args.json, Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
               if t is not None]
    info = hardware()
    results: dict = {"hardware": info, "size": size, "repeats": repeats, "tile": TILE, "halo": HALO,
                     "batch": BATCH, "rows": [], "command": " ".join(["python", "bench/gpu_check.py", *sys.argv[1:]]),
                     "complete": False}
    save(results, targets)

    def left() -> float:
        return args.deadline - (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        configs, results["notes"] = configurations(info, args.cpu_only)
        if HAVE_ONNX:
            build_compute_bound = models.build_compute_bound
            build_compute_bound(d / "fcn.onnx", seed=SEED)
        if info["torch"]:
            build_torchscript(d / "fcn.pt", SEED)
        make_raster(d / "scene.tif", size)
        for kind, device, precision in configs:
            late = (f"past --budget {args.budget:.0f} s" if device != "cpu" and time.perf_counter() - start
                    > args.budget else f"past --deadline {args.deadline:.0f} s" if left() < 10 else None)
            if late:
                results["rows"].append({"runtime": kind, "precision": precision, "device": device,
                                        "error": f"skipped: {late}"})
                save(results, targets)
                continue
            print(f"measuring {kind} {precision} on {device} ...", file=sys.stderr, flush=True)
            reps = repeats if device != "cpu" else min(repeats, 2)  # the CPU rows are context, not the target
            row = run_child(kind, device, precision, d, size, reps, min(CHILD_LIMIT_S, left()))
            results["rows"].append(row)
            if "error" in row:
                print(f"  {row['error'][:300]}", file=sys.stderr, flush=True)
            save(results, targets)
        if args.no_cpu_da or not HAVE_ONNX:
            pass
        elif left() < 30:
            results["cpu_da"] = {"error": f"skipped: past --deadline {args.deadline:.0f} s"}
        else:
            print("measuring CPU d/a with bench_predict.py ...", file=sys.stderr, flush=True)
            results["cpu_da"] = cpu_da(d, args.quick, args.cpu_size, None if not args.quick else 1, left())
    results["seconds"] = time.perf_counter() - start
    results["complete"] = True
    save(results, targets)
    report(results)


if __name__ == "__main__":
    main()
