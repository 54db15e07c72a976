"""Train the demo's land-cover model on the Landsat 7 sample and export it to ONNX.

    python examples/train_landsat.py                      # writes models/landsat_landcover.onnx
    python examples/train_landsat.py --epochs 1 --out /tmp/m.onnx

The model is a tiny fully-convolutional network (three 3x3 convolutions, a 7x7 receptive field, ~5k weights) that
classifies every pixel of a 5-band (B1-B5) Landsat tile into the sample's 7 land-cover classes. It is trained on 7x7
patches around the labelled pixels, with the same raw values tilecast feeds it (nodata and the area beyond the
raster edge sent as 0), and normalises its input itself, so the ONNX file takes raw reflectance counts.

Training is reproducible on CPU: fixed seeds, one thread, deterministic algorithms. Accuracy is measured on
spatially separate labels (whole held-out polygons, see ``landsat.split_labels``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import landsat

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "models" / "landsat_landcover.onnx"
SEED = 0
RADIUS = 3
"""Half the receptive field: three 3x3 convolutions see 7x7 pixels, so a tile overlap of 3 or more is exact."""
NUM_CLASSES = len(landsat.CLASSES)
OPSET = 17


class LandcoverNet(nn.Module):
    """Logits ``(N, 7, H, W)`` from raw bands ``(N, C, H, W)``; ``padding=0`` trims the 3-px border (training)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, width: int = 16, padding: int = 1) -> None:
        super().__init__()
        c = len(mean)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, c, 1, 1))
        self.register_buffer("scale", torch.as_tensor(1.0 / np.asarray(std), dtype=torch.float32).reshape(1, c, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=padding),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=padding),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=padding),
            nn.ReLU(),
            nn.Conv2d(width, NUM_CLASSES, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) * self.scale)

    def set_padding(self, padding: int) -> LandcoverNet:
        """1: output the input's size (export); 0: trim the border, as on 7x7 training patches."""
        for layer in self.features:
            if isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1):
                layer.padding = (padding, padding)
        return self


class Classifier(nn.Module):
    """What the ONNX file holds: ``landcover`` (class codes 1..7, int64) and ``probabilities`` (float32)."""

    def __init__(self, net: LandcoverNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image)
        codes = torch.argmax(logits, dim=1) + 1
        return codes, torch.softmax(logits, dim=1)


def build_model(mean: np.ndarray | None = None, std: np.ndarray | None = None, padding: int = 1) -> LandcoverNet:
    """An untrained network; without statistics it normalises nothing (for tests of the architecture)."""
    c = len(landsat.MODEL_BANDS)
    mean = np.zeros(c, np.float32) if mean is None else mean
    std = np.ones(c, np.float32) if std is None else std
    return LandcoverNet(mean, std, padding=padding)


def export_onnx(net: LandcoverNet, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Export with dynamic batch, height and width: input ``image`` (N, C, H, W) float32, raw band values."""
    model = Classifier(copy.deepcopy(net).set_padding(1)).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, len(landsat.MODEL_BANDS), 32, 32)
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; the dynamo one needs onnxscript
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["landcover", "probabilities"],
            dynamic_axes={"image": dims, "landcover": {0: "batch", 1: "height", 2: "width"}, "probabilities": dims},
            opset_version=OPSET,
            dynamo=False,
        )
    if metadata:
        import onnx

        proto = onnx.load(str(path))
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(path))
    return path


def model_inputs() -> tuple[np.ndarray, np.ndarray]:
    """The model bands as tilecast sends them (``(C, H, W)`` float32, nodata -> 0), and the valid-pixel mask."""
    stack, _ = landsat.read_stack()
    idx = [list(landsat.BANDS).index(b) for b in landsat.MODEL_BANDS]
    bands = stack[idx]
    valid = (bands != landsat.NODATA).all(axis=0)
    return np.where(bands == landsat.NODATA, 0, bands).astype(np.float32), valid


def patches(image: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(2R+1)-px patches around every labelled pixel, zero beyond the raster edge, and their 0-based classes."""
    padded = np.pad(image, ((0, 0), (RADIUS, RADIUS), (RADIUS, RADIUS)))
    rows, cols = np.nonzero(labels)
    k = 2 * RADIUS + 1
    x = np.stack([padded[:, r : r + k, c : c + k] for r, c in zip(rows, cols, strict=True)])
    return torch.from_numpy(x), torch.from_numpy(labels[rows, cols].astype(np.int64) - 1)


def predict(net: LandcoverNet, image: np.ndarray) -> np.ndarray:
    """Class codes for the whole raster, the way tilecast computes them (raw zeros beyond the edge)."""
    trimmed = copy.deepcopy(net).set_padding(0).eval()
    x = torch.from_numpy(np.pad(image, ((0, 0), (RADIUS, RADIUS), (RADIUS, RADIUS))))[None]
    with torch.no_grad():
        return (trimmed(x)[0].argmax(0) + 1).numpy().astype(np.uint8)


def confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Rows: true class, columns: predicted class, over the labelled (non-zero) pixels of ``truth``."""
    sel = truth > 0
    m = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(m, (truth[sel].astype(int) - 1, predicted[sel].astype(int) - 1), 1)
    return m


def format_confusion(m: np.ndarray) -> str:
    names = [landsat.CLASSES[c][:6] for c in sorted(landsat.CLASSES)]
    lines = ["true \\ predicted " + " ".join(f"{n:>6}" for n in names) + "  recall"]
    for i, row in enumerate(m):
        recall = row[i] / row.sum() if row.sum() else float("nan")
        lines.append(f"{landsat.CLASSES[i + 1]:<16} " + " ".join(f"{v:>6}" for v in row) + f"  {recall:6.1%}")
    return "\n".join(lines)


def train(epochs: int = 60, seed: int = SEED, log: bool = True) -> tuple[LandcoverNet, dict]:
    """Train on the training split; returns the network (``padding=1``) and a report of accuracies."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    image, valid = model_inputs()
    labels = landsat.usable_labels()
    train_labels, test_labels = landsat.split_labels(labels, seed=seed, buffer=RADIUS)
    mean = image[:, valid].mean(axis=1)
    std = image[:, valid].std(axis=1)
    net = build_model(mean, std, padding=0)
    x, y = patches(image, train_labels)
    counts = torch.bincount(y, minlength=NUM_CLASSES).float()
    weights = (counts.sum() / (NUM_CLASSES * counts.clamp(min=1))).sqrt()
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=0.1)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    steps_per_epoch = max(1, len(y) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * 128 : (step + 1) * 128]
            xb = _augment(x[idx], int(torch.randint(8, (1,), generator=gen)))
            opt.zero_grad()
            loss = loss_fn(net(xb).flatten(1), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if log and (epoch + 1) % max(1, epochs // 6) == 0:
            print(f"epoch {epoch + 1:>4}/{epochs}  loss {total / steps_per_epoch:.3f}", file=sys.stderr)
    codes = predict(net, image)
    report = {}
    for name, truth in (("train", train_labels), ("held_out", test_labels)):
        m = confusion(truth, codes)
        report[name] = {"pixels": int(m.sum()), "accuracy": float(np.trace(m) / m.sum()), "confusion": m.tolist()}
    return net.set_padding(1), report


def _augment(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 rotations/flips: land cover has no preferred orientation."""
    x = torch.rot90(x, k % 4, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if k >= 4 else x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"ONNX file (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    net, report = train(args.epochs, args.seed)
    for name in ("train", "held_out"):
        r = report[name]
        print(f"{name}: {r['accuracy']:.1%} of {r['pixels']} labelled pixels")
        print(format_confusion(np.asarray(r["confusion"])))
    metadata = {
        "bands": ",".join(landsat.MODEL_BANDS),
        "classes": json.dumps({str(k): v for k, v in landsat.CLASSES.items()}),
        "receptive_field": str(2 * RADIUS + 1),
        "held_out_accuracy": f"{report['held_out']['accuracy']:.4f}",
        "trained_with": f"python examples/train_landsat.py --epochs {args.epochs} --seed {args.seed}",
    }
    path = export_onnx(net, args.out, metadata)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
