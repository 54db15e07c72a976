"""``make demo``: map land cover on a real Landsat 7 scene with the small model that ships in ``models/``.

1. Stacks the six Landsat bands of the sample (fetched once by ``python -m tilecast.datasets fetch``, which
   ``make demo`` runs) into ``out/landsat_stack.tif`` (band names B1..B7).
2. Runs the CLI, exactly as a user would::

       tilecast predict out/landsat_stack.tif --model models/landsat_landcover.onnx --bands B1,B2,B3,B4,B5 \\
           --tile 128 --overlap 4 --output-band landcover:uint8 --classes 1=developed,...,7=sediment \\
           --mask-halo -o out/landcover.tif --overwrite

3. Scores the map against the sample's labelled pixels and draws ``out/landcover.png`` with a legend.

Only the ONNX model runs here. It was made by the end-to-end TFRecord workflow (``tilecast export patches`` ->
PyTorch -> ONNX); PyTorch is needed only to remake it:
``python examples/workflow_landsat.py --out models/landsat_landcover.onnx``. The held-out labels scored here are the
ones that run held out (``landsat.split_labels``, seed 0).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import landsat

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
MODEL = ROOT / "models" / "landsat_landcover.onnx"
TILE = 128
OVERLAP = 4
"""The model sees 7x7 pixels, so 3 px of overlap per edge already makes the tiled map equal an untiled run."""


def predict_args(stack: str | Path, output: str | Path, model: str | Path = MODEL) -> list[str]:
    """The ``tilecast predict`` arguments the demo runs (the tests run the same ones)."""
    classes = ",".join(f"{c}={landsat.CLASSES[c]}" for c in sorted(landsat.CLASSES))
    return [
        "predict",
        str(stack),
        "--model",
        str(model),
        "--bands",
        ",".join(landsat.MODEL_BANDS),
        "--tile",
        str(TILE),
        "--overlap",
        str(OVERLAP),
        "--output-band",
        "landcover:uint8",
        "--classes",
        classes,
        "--mask-halo",  # no rim of guesses along the scene's nodata edge
        "-o",
        str(output),
        "--overwrite",
    ]


def tilecast_executable() -> str:
    """The ``tilecast`` entry point installed next to this Python (the venv's ``bin``)."""
    exe = Path(sys.executable).parent / ("tilecast.exe" if sys.platform == "win32" else "tilecast")
    if not exe.exists():
        raise SystemExit(f"{exe} is missing: install tilecast into this environment first (make install)")
    return str(exe)


def scores(landcover: Path) -> dict[str, tuple[float, int]]:
    """Accuracy of the map on all usable labelled pixels and on the ones held out from training."""
    with rasterio.open(landcover) as src:
        predicted = src.read(1)
        nodata = src.nodata
    labels = landsat.usable_labels()
    labels[predicted == nodata] = 0  # --mask-halo leaves pixels next to the scene's nodata unpredicted: not scored
    _, held_out = landsat.split_labels(landsat.usable_labels())
    held_out[predicted == nodata] = 0
    return {"all labels": landsat.accuracy(predicted, labels), "held-out labels": landsat.accuracy(predicted, held_out)}


def quicklook(stack: Path, landcover: Path, png: Path, title: str = "") -> Path:
    """The input in natural colour beside the land-cover map, with a legend of class names and colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with rasterio.open(stack) as src:
        rgb = src.read([list(landsat.BANDS).index(b) + 1 for b in ("B3", "B2", "B1")], masked=True)
        bounds = src.bounds
    with rasterio.open(landcover) as src:
        classes = src.read(1, masked=True)
    lo, hi = (np.array([np.percentile(b.compressed(), q) for b in rgb])[:, None, None] for q in (2, 98))
    natural = np.clip((rgb - lo) / (hi - lo), 0, 1).filled(1).transpose(1, 2, 0)  # white where no data
    codes = sorted(landsat.CLASSES)
    cmap = ListedColormap([landsat.CLASS_COLORS[c] for c in codes]).with_extremes(bad="white")
    extent = (bounds.left / 1000, bounds.right / 1000, bounds.bottom / 1000, bounds.top / 1000)

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), constrained_layout=True)
    axes[0].imshow(natural, extent=extent)
    axes[0].set_title("Landsat 7, 2000 (bands 3-2-1)")
    axes[1].imshow(
        classes, cmap=cmap, vmin=codes[0] - 0.5, vmax=codes[-1] + 0.5, extent=extent, interpolation="nearest"
    )
    axes[1].set_title("Predicted land cover (tilecast + ONNX model)")
    for ax in axes:
        ax.set_xlabel("easting (km, EPSG:32119)")
    axes[0].set_ylabel("northing (km)")
    total = classes.count()
    handles = [
        Patch(
            facecolor=landsat.CLASS_COLORS[c],
            edgecolor="0.3",
            label=f"{c} {landsat.CLASSES[c]} ({(classes == c).sum() / total:.0%})",
        )
        for c in codes
    ]
    axes[1].legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=11,
        title="class (share of map)",
    )
    if title:
        fig.suptitle(title)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(out: Path = OUT) -> int:
    try:
        landsat.sample_dir()
    except FileNotFoundError as exc:  # tilecast's SourceNotFoundError, naming the command that fetches the sample
        raise SystemExit(f"error: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    stack = landsat.write_stack(out / "landsat_stack.tif", overwrite=True)
    landcover = out / "landcover.tif"
    args = predict_args(_short(stack), _short(landcover), _short(MODEL))
    print("$ tilecast " + " ".join(args), flush=True)
    subprocess.run([tilecast_executable(), *args], check=True, cwd=ROOT)
    result = scores(landcover)
    lines = [f"accuracy on {name}: {acc:.1%} of {n} pixels" for name, (acc, n) in result.items()]
    held = result["held-out labels"][0]
    png = quicklook(
        stack, landcover, out / "landcover.png", title=f"Land cover, {held:.0%} correct on held-out labelled pixels"
    )
    print("\n".join(lines))
    print(f"input stack: {stack}")
    print(f"land cover (COG): {landcover}")
    print(f"quicklook (PNG): {png}")
    return 0


def _short(path: Path) -> Path:
    """``path`` relative to the repository when inside it, so the printed command reads like the README's."""
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path.resolve()


if __name__ == "__main__":
    sys.exit(main())
