"""CPU vs GPU throughput for ONNX Runtime (CUDA provider) and TorchScript on the benchmark's compute-bound FCN.

The network is the one ``bench_predict.py`` uses (3x3 conv 4->32, three 3x3 32->32, 1x1 32->1, ReLU between, a 1e-4
input scale; ~29k multiply-adds per pixel), built twice from the same deterministic weights (``models.fcn_weights``):
as ONNX by ``models.build_compute_bound`` and as a TorchScript module here. One run measures, medians over repeats:

  runtime   ``run()`` on in-memory batches of 8 padded 288 x 288 tiles (256 core + 16 halo), per runtime and device
  predict   ``load_model(...).predict_image(raster).to_geotiff(...)`` end to end on a generated 4-band uint16 raster

and prints GPU / CPU ratios measured in the same run, plus the largest CPU-GPU output difference. Without a GPU only
the CPU rows are printed. Needs the ``torch`` extra and, for the GPU, ``onnxruntime-gpu`` and a CUDA torch build.

    python bench/gpu_check.py              # 4096 x 4096 raster, 5 repeats
    python bench/gpu_check.py --quick      # 1024 x 1024, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from models import INPUT_SCALE, build_compute_bound, compute_layers, fcn_weights  # noqa: E402

TILE, HALO, BATCH, SEED = 256, 16, 8, 0


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


def runtimes(onnx_path: Path, ts_path: Path) -> dict[str, object]:
    import onnxruntime as ort
    import torch

    from tilecast.runtimes.onnx import OnnxRuntime
    from tilecast.runtimes.torch import TorchRuntime

    out: dict[str, object] = {"onnx cpu": OnnxRuntime(onnx_path, providers=["cpu"]),
                              "torchscript cpu": TorchRuntime(ts_path, device="cpu")}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        out["onnx cuda"] = OnnxRuntime(onnx_path, providers=["cuda"])
    if torch.cuda.is_available():
        out["torchscript cuda"] = TorchRuntime(ts_path, device="cuda")
    return out


def time_runtime(rt, batch: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    name = rt.signature.input_names[0]
    y = rt.run({name: batch})  # warm-up (CUDA context, cuDNN autotune)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        y = rt.run({name: batch})
        times.append(time.perf_counter() - t)
    return statistics.median(times), next(iter(y.values()))


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


def time_predict(model_path: Path, raster: Path, out_dir: Path, repeats: int, **kw) -> float:
    from tilecast.loading import load_model

    times = []
    for i in range(repeats):
        model = load_model(model_path, input_tile_size=TILE, input_overlap_size=HALO, layout="NCHW",
                           batch_size=BATCH, **kw)
        out = out_dir / f"p_{time.monotonic_ns()}_{i}.tif"
        t = time.perf_counter()
        model.predict_image(str(raster)).to_geotiff(out)
        times.append(time.perf_counter() - t)
        model.close()
        out.unlink()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    size, repeats = (1024, 2) if args.quick else (4096, 5)
    results: dict[str, object] = {"size": size, "tile": TILE, "halo": HALO, "batch": BATCH}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        onnx_path, ts_path = build_compute_bound(d / "fcn.onnx", seed=SEED), build_torchscript(d / "fcn.pt", SEED)
        p = TILE + 2 * HALO
        batch = np.random.default_rng(1).integers(0, 10000, (BATCH, 4, p, p)).astype(np.float32)
        px = BATCH * TILE * TILE
        rows = {}
        outputs = {}
        for name, rt in runtimes(onnx_path, ts_path).items():
            t, y = time_runtime(rt, batch, repeats * 4)
            rows[name] = {"batch_s": t, "mpx_s": px / t / 1e6}
            outputs[name] = y
        ref = outputs["onnx cpu"]
        for name, y in outputs.items():
            rows[name]["max_abs_diff_vs_onnx_cpu"] = float(np.abs(np.asarray(y) - ref).max())
        results["runtime"] = rows
        print(f"runtime.run, batches of {BATCH} x {p} x {p} (core {TILE} px), median of {repeats * 4}:")
        for name, r in rows.items():
            base = rows[f"{name.split()[0]} cpu"]["batch_s"]
            print(f"  {name:18s} {r['batch_s'] * 1e3:8.1f} ms/batch  {r['mpx_s']:8.2f} Mpx/s  "
                  f"x{base / r['batch_s']:.2f} vs CPU  max|diff| {r['max_abs_diff_vs_onnx_cpu']:.2e}")
        raster = make_raster(d / "scene.tif", size)
        pred = {"onnx cpu": time_predict(onnx_path, raster, d, repeats, providers=["cpu"]),
                "torchscript cpu": time_predict(ts_path, raster, d, repeats, device="cpu")}
        if "onnx cuda" in rows:
            pred["onnx cuda"] = time_predict(onnx_path, raster, d, repeats, providers=["cuda"])
        if "torchscript cuda" in rows:
            pred["torchscript cuda"] = time_predict(ts_path, raster, d, repeats, device="cuda")
        results["predict_s"] = pred
        print(f"tilecast predict, {size} x {size} x 4 uint16 -> float32 COG, median of {repeats}:")
        for name, t in pred.items():
            base = pred[f"{name.split()[0]} cpu"]
            print(f"  {name:18s} {t:8.2f} s  {size * size / t / 1e6:8.2f} Mpx/s  x{base / t:.2f} vs CPU")
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, "gpu_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
