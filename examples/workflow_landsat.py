"""The training-data workflow end to end, on the real Landsat 7 sample (``python -m tilecast.datasets fetch``); it also
makes the demo model.

    python examples/workflow_landsat.py --out models/landsat_landcover.onnx    # the committed demo model (~1 min)
    python examples/workflow_landsat.py --out /tmp/m.onnx --small              # CI size (tests/test_workflow.py)

0. Stack the six Landsat bands into one GeoTIFF (band names B1..B7) and split the labelled pixels into spatially
   separate train and held-out sets (``landsat.split_labels``: whole polygons held out per class, training pixels
   within 3 px of a held-out one dropped), written as two label rasters.
1. ``tilecast export patches``: stratified 7x7 patches of B1-B5 around the training pixels (``--per-class``), and
   around every held-out pixel, as GZIP TFRecord in Earth Engine's layout (plus ``spec.json``).
2. Train a small CNN with PyTorch on CPU, reading those TFRecords with ``tilecast.training.TFRecordDataset``
   (no TensorFlow).
3. Export it to ONNX: input ``image`` (N, 5, H, W) raw B1-B5, outputs ``landcover`` (N, H, W) int64 class codes 1-7
   and ``probabilities`` (N, 7, H, W) (``models/README.md``).
4. ``tilecast predict`` the scene with it.
5. Accuracy and a confusion matrix on the held-out pixels, read from the predicted map.
6. The batch route: ``tilecast export image`` (patch + kernel margin) -> run the ONNX model on every TFRecord patch
   outside tilecast -> ``tilecast import`` with the mixer; it gives the same raster as ``tilecast predict``.

Band 7 is not used: in this sample it has no data in a frame that holds every ``agriculture`` label.
Reproducible: fixed seeds, one thread, deterministic algorithms; a rerun writes the same ONNX bytes.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import landsat

CLASSES = [landsat.CLASSES[c] for c in sorted(landsat.CLASSES)]
BANDS = list(landsat.MODEL_BANDS)
RADIUS = 3
"""Three 3x3 convolutions see 7x7 pixels: patches of 2*RADIUS+1, and a tile overlap of RADIUS is exact."""
SEED = 0
FULL = {"per_class": 700, "epochs": 60, "width": 16, "tile": 128}
SMALL = {"per_class": 300, "epochs": 20, "width": 16, "tile": 64}


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
            c = len(BANDS)
            self.register_buffer("mean", torch.zeros(1, c, 1, 1))
            self.register_buffer("scale", torch.ones(1, c, 1, 1))
            self.features = nn.Sequential(
                nn.Conv2d(c, width, 3),
                nn.ReLU(),
                nn.Conv2d(width, width, 3),
                nn.ReLU(),
                nn.Conv2d(width, width, 3),
                nn.ReLU(),
                nn.Conv2d(width, len(CLASSES), 1),
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


def load_patches(spec: Path) -> dict[str, np.ndarray]:
    """Every record of an export, stacked: ``x`` (N, 5, 7, 7), ``y`` (N,) class codes, and the sample ``xy``."""
    from tilecast.training import TFRecordDataset

    items = TFRecordDataset(spec).to_numpy()
    x = np.stack([items[b] for b in BANDS], axis=1).astype(np.float32)
    return {"x": x, "y": items["label"][:, 0].astype(np.int64), "xy": np.stack([items["x"][:, 0], items["y"][:, 0]], 1)}


def train(data: dict[str, np.ndarray], epochs: int, seed: int, width: int):
    """Cross-entropy on the centre pixel of each patch; the 8 rotations/flips, class weights, one-cycle AdamW."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    net = build_net(width)
    x = torch.from_numpy(data["x"])
    y = torch.from_numpy(data["y"] - 1)
    c = len(BANDS)
    valid = x != 0  # nodata and the area beyond the raster edge are sent as 0; leave them out of the statistics
    flat = x.permute(1, 0, 2, 3).reshape(c, -1)
    vmask = valid.permute(1, 0, 2, 3).reshape(c, -1)
    net.mean.copy_(torch.stack([flat[i][vmask[i]].mean() for i in range(c)]).reshape(1, c, 1, 1))
    net.scale.copy_(1.0 / torch.stack([flat[i][vmask[i]].std() for i in range(c)]).reshape(1, c, 1, 1))
    counts = torch.bincount(y, minlength=len(CLASSES)).float()
    weights = (counts.sum() / (len(CLASSES) * counts.clamp(min=1))).sqrt()
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=0.1)
    batch = 128
    steps = max(1, len(x) // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = perm[i * batch : (i + 1) * batch]
            k = int(torch.randint(0, 8, (1,), generator=gen))  # land cover has no preferred orientation
            xb = torch.rot90(x[idx], k % 4, dims=(2, 3))
            xb = torch.flip(xb, dims=(3,)) if k >= 4 else xb
            loss = loss_fn(net(xb)[:, :, 0, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if epoch in (0, epochs - 1) or (epoch + 1) % 10 == 0:
            print(f"  epoch {epoch + 1:3d}/{epochs}: loss {total / steps:.3f}", flush=True)
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
            model,
            torch.zeros(1, len(BANDS), 32, 32),
            str(path),
            input_names=["image"],
            output_names=["landcover", "probabilities"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"image": dims, "landcover": {0: "batch", 1: "height", 2: "width"}, "probabilities": dims},
        )
    return path


def add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """The bands, classes and how the model was made, in the ONNX ``metadata_props`` (the graph is unchanged)."""
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


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
    cli(
        "export",
        "image",
        str(scene),
        "--bands",
        ",".join(BANDS),
        "--patch",
        str(tile),
        "--kernel",
        str(2 * RADIUS),
        "--max-file-size",
        "2MB",
        "--prefix",
        "scene",
        "-o",
        str(tiles),
        "--overwrite",
        "-q",
    )
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    # Patches arrive in export order (row-major, across sorted shards) and must be written back in that order.
    with ShardedWriter(preds, "scene-pred", max_file_size=1 << 20, overwrite=True) as writer:
        for ex in TFRecordDataset(tiles / "scene.spec.json"):
            x = np.stack([ex[b] for b in BANDS])[None].astype(np.float32)
            landcover = session.run(["landcover"], {"image": x})[0][0]
            # Uncropped (tile + kernel): the import detects the margin from the length and crops it.
            writer.write(example_bytes({"landcover": landcover.astype(np.int64)}))
        files = writer.close()
    out = work / "landcover_batch.tif"
    cli(
        "import",
        *map(str, files),
        "--mixer",
        str(tiles / "scene-mixer.json"),
        "--dtype",
        "uint8",
        "-o",
        str(out),
        "--overwrite",
        "-q",
    )
    return out


def command(out: Path, small: bool, seed: int, epochs: int | None) -> str:
    """The command line that reproduces a run (written into the model's metadata)."""
    args = ["python examples/workflow_landsat.py", "--out", str(out)]
    args += ["--small"] * small + (["--seed", str(seed)] if seed != SEED else [])
    return " ".join(args + (["--epochs", str(epochs)] if epochs else []))


def run(out: Path, work: Path, small: bool = False, seed: int = SEED, epochs: int | None = None) -> dict:
    import rasterio

    t0 = time.perf_counter()
    size = dict(SMALL if small else FULL)
    size["epochs"] = epochs or size["epochs"]

    print("0. stack the bands; split the labelled pixels into spatially separate train and held-out sets", flush=True)
    scene = landsat.write_stack(work / "landsat_stack.tif", overwrite=True)
    labels = landsat.usable_labels()
    train_labels, test_labels = landsat.split_labels(labels, seed=seed, buffer=RADIUS)
    for name, codes in (("train", train_labels), ("test", test_labels)):
        landsat.write_labels(work / f"{name}_labels.tif", overwrite=True, labels=codes)
        print(f"   {name}: {int((codes > 0).sum())} labelled pixels", flush=True)

    print("1. export stratified training patches, and patches at every held-out pixel", flush=True)
    common = [
        "--bands",
        ",".join(BANDS),
        "--patch",
        str(2 * RADIUS + 1),
        "--seed",
        str(seed),
        "--geometries",
        "--overwrite",
        "-q",
    ]
    cli(
        "export",
        "patches",
        str(scene),
        "--label-raster",
        str(work / "train_labels.tif"),
        "--per-class",
        str(size["per_class"]),
        *common,
        "-o",
        str(work / "train") + "/",
    )
    cli(
        "export",
        "patches",
        str(scene),
        "--label-raster",
        str(work / "test_labels.tif"),
        *common,
        "-o",
        str(work / "test") + "/",
    )
    train_set, test_set = load_patches(work / "train" / "spec.json"), load_patches(work / "test" / "spec.json")
    print(f"   {len(train_set['y'])} training and {len(test_set['y'])} held-out patches", flush=True)

    print("2. train a small CNN on the TFRecords (PyTorch, CPU)", flush=True)
    net = train(train_set, size["epochs"], seed, size["width"])

    print(f"3. export ONNX -> {out}", flush=True)
    export_onnx(net, out)

    print("4. tilecast predict", flush=True)
    predicted = work / "landcover.tif"
    cli(
        "predict",
        str(scene),
        "-m",
        str(out),
        "--bands",
        ",".join(BANDS),
        "--layout",
        "NCHW",
        "--tile",
        str(size["tile"]),
        "--overlap",
        str(RADIUS),
        "--output-band",
        "landcover:uint8",
        "--classes",
        ",".join(CLASSES),
        "-o",
        str(predicted),
        "--overwrite",
        "-q",
    )

    print("5. accuracy on the held-out, spatially separate pixels", flush=True)
    with rasterio.open(predicted) as ds:
        pred_map, nodata = ds.read(1), ds.nodata
        rows, cols = rasterio.transform.rowcol(ds.transform, test_set["xy"][:, 0], test_set["xy"][:, 1])
    got = pred_map[np.asarray(rows), np.asarray(cols)].astype(np.int64)
    scored = got != nodata
    truth, got = test_set["y"][scored], got[scored]
    matrix = confusion(truth, got)
    acc = float((truth == got).mean())
    acc_all, n_all = landsat.accuracy(pred_map, labels)
    print(format_confusion(matrix))
    print(f"   overall accuracy {acc:.1%} on {len(truth)} held-out pixels ({acc_all:.1%} on all {n_all} labelled)")

    metadata = {
        "bands": ",".join(BANDS),
        "classes": json.dumps({str(i + 1): c for i, c in enumerate(CLASSES)}),
        "receptive_field": str(2 * RADIUS + 1),
        "held_out_accuracy": f"{acc:.4f}",
        "trained_with": command(out, small, seed, epochs),
    }
    add_metadata(out, metadata)

    print("6. batch route: export image -> predict patches outside tilecast -> import", flush=True)
    batch = batch_route(scene, out, work, size["tile"])
    with rasterio.open(batch) as b:
        batch_map = b.read(1)
    h, w = batch_map.shape  # whole patches only: the export drops the partial edge patches
    online = pred_map[:h, :w]
    valid = online != nodata  # tilecast masks pixels with nodata input; the batch route predicts them from 0s
    same = int((batch_map[valid] == online[valid]).sum())
    print(f"   batch route equals tilecast predict on {same}/{int(valid.sum())} valid pixels ({w} x {h})", flush=True)
    report = {
        "model": str(out),
        "accuracy": acc,
        "held_out": len(truth),
        "train": len(train_set["y"]),
        "accuracy_all": acc_all,
        "labelled": n_all,
        "confusion": matrix.tolist(),
        "classes": CLASSES,
        "batch_equal": same,
        "batch_valid": int(valid.sum()),
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
    p.add_argument("--seed", type=int, default=SEED, help="seed of the held-out split, sampling and training")
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
