"""``tilecast card MODEL``: write or update a model card, then prove it by running one synthetic tile."""

from __future__ import annotations

import json
import warnings
from typing import Any

import click
import numpy as np

from ..errors import OutputShapeError, SpecError, TilecastWarning
from .options import SIZE, csv_list, reports_errors

__all__ = ["card", "check_with_tile", "receptive_radius"]


@click.command(short_help="Write or update a model card (STAC MLM) and check it.")
@click.argument("model_path", metavar="MODEL")
@click.option("--bands", help="Input bands in model order, comma-separated; NAME or NAME=COMMON (e.g. B04=red).")
@click.option("--tile", type=SIZE, help="Core tile W[,H] (Earth Engine's inputTileSize).")
@click.option("--overlap", type=SIZE, help="Overlap W[,H] per edge (inputOverlapSize).")
@click.option("--overlap-mode", type=click.Choice(["per_edge", "total"]), help="How --overlap is counted.")
@click.option("--output-tile", type=SIZE, help="Output tile W[,H] (outputTileSize).")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC", "bands", "pixels"]),
              help="How bands feed the model (pixels: a tabular model fed (pixels, bands) rows).")
@click.option("--input-name", help="The model input the bands feed (default: the model's first input).")
@click.option("--input-dtype", help="dtype the model takes after scaling (default: the model's, or float32).")
@click.option("--scaling", "scalings", multiple=True, metavar="TYPE:ARGS",
              help="Value scaling, once for all bands or once per band in order: scale:V, offset:V, "
                   "z-score:MEAN:STD, min-max:MIN:MAX, clip:MIN:MAX, none.")
@click.option("--output-band", "output_bands", multiple=True, metavar="NAME:DTYPE[:DIMS]",
              help="Declare an output band (repeatable), e.g. landcover:uint8 or probs:float32:1.")
@click.option("--classes", help="Class names of the first output band: 1=water,2=forest (or water,forest for 0, 1).")
@click.option("--colors", help="Class colours as hex, comma-separated (e.g. 00ff00,0000ff).")
@click.option("--argmax/--no-argmax", default=None,
              help="Reduce the first output's class scores to a class index (channel axis 1 for NCHW, else last).")
@click.option("--crs", help="The CRS the model expects (Earth Engine's proj).")
@click.option("--gsd", type=float, nargs=2, metavar="X Y", help="Pixel size the model was trained at, in CRS units.")
@click.option("--gsd-tolerance", type=float, help="Relative GSD difference still accepted (default 0.01).")
@click.option("--fix-input-proj/--no-fix-input-proj", default=None, help="Warp inputs whose grid differs.")
@click.option("--fill-value", type=float, help="Value sent for masked input pixels.")
@click.option("--nodata", type=float, help="Output nodata.")
@click.option("--blend", type=click.Choice(["crop", "cosine", "hann"]), help="Recommended merge of overlapping tiles.")
@click.option("--padding", type=click.Choice(["zero", "reflect"]), help="Padding beyond the raster edge.")
@click.option("--name", help="Model name (mlm:name).")
@click.option("--architecture", help="Architecture (mlm:architecture), e.g. U-Net.")
@click.option("--task", "tasks", multiple=True, help="MLM task (repeatable), e.g. semantic-segmentation.")
@click.option("--embed/--no-embed", default=None,
              help="Also embed the card in the model (ONNX metadata_props, Torch archive extra file; default yes).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run one synthetic tile and measure the receptive field.")
@click.option("--print", "show", is_flag=True, help="Print the card JSON.")
@reports_errors
def card(model_path: str, show: bool, check: bool, embed: bool | None, **opts: Any) -> None:
    """Write MODEL's card (sidecar MODEL.json; embedded too for ONNX), starting from the existing card if any.

    \b
    Example:
      tilecast card unet.onnx --bands B02=blue,B03=green,B04=red --tile 224 --overlap 16 \\
          --scaling z-score:1200:300 --output-band landcover:uint8 --classes water,forest,urban --argmax
    """
    from ..card import validate_card, write_card
    from ..loading import detect_format, open_runtime

    fmt = detect_format(model_path)
    runtime = open_runtime(model_path, fmt)
    try:
        new = build_from_options(model_path, fmt, runtime, opts)
        problems = validate_card(new)
        if problems:
            raise SpecError("the card does not validate: " + "; ".join(problems[:5]))
        if check:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TilecastWarning)  # printed below as lines
                report = check_with_tile(model_path, new)
            for line in report["lines"]:
                click.echo(line, err=True)
            _record_result_shapes(new, report["outputs"])
    finally:
        runtime.close()
    from ..card import _embeddable, _importable

    kind = _embeddable(model_path)
    embedded = kind is not None and (embed or (embed is None and (kind == "torch" or _importable("onnx"))))
    side = write_card(new, model_path, embed=embed)
    click.echo(f"wrote {side}" + (" (and embedded it in the model)" if embedded else ""), err=True)
    if show:
        click.echo(json.dumps(new.item, indent=2))


def _record_result_shapes(card_obj: Any, outputs: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """MLM's result shape is what the model returns (batch as -1), as measured on the synthetic tile."""
    extras = card_obj.properties.get("tilecast:outputs", {})
    layout = card_obj.properties.get("tilecast:layout")
    for out in card_obj.outputs:
        src = extras.get(out["name"], {}).get("source", out["name"])
        if src not in outputs and len(outputs) == 1:
            src = next(iter(outputs))
        if src not in outputs:
            continue
        shape, _ = outputs[src]
        if layout == "pixels":
            out["result"]["shape"] = [-1, *shape[1:]]
            out["result"]["dim_order"] = ["batch", "channel"][:len(shape)]
            continue
        dims = {4: ["batch", "channel", "height", "width"] if layout == "NCHW" else
                ["batch", "height", "width", "channel"], 3: ["batch", "height", "width"], 2: ["batch", "channel"],
                1: ["batch"]}.get(len(shape))
        if dims is None:
            continue
        out["result"]["shape"] = [-1, *shape[1:]]
        out["result"]["dim_order"] = dims


def build_from_options(model_path: str, fmt: str, runtime: Any, opts: dict[str, Any]) -> Any:
    """Merge the flags over the existing card (sidecar/embedded/Deepness), then build the new card."""
    from ..card import build_card, read_card
    from ..runtimes.scaled import parse_scaling
    from ..spec import parse_output_bands

    sig = runtime.signature
    old = read_card(model_path, getattr(runtime, "metadata", None), sig)
    base = _kwargs_from_card(old) if old is not None else {}
    kw: dict[str, Any] = dict(base)
    if opts.get("bands"):
        names, common = [], {}
        for item in csv_list(opts["bands"]) or []:
            name, _, cn = item.partition("=")
            names.append(name)
            if cn:
                common[name] = cn
        kw["bands"], kw["common_names"] = names, common
    if not kw.get("bands"):
        raise SpecError("the card needs the input bands: pass --bands B04=red,B03=green,B02=blue (model order)")
    for flag, key in (("tile", "input_tile_size"), ("overlap", "input_overlap_size"), ("overlap_mode", "overlap_mode"),
                      ("output_tile", "output_tile_size"), ("layout", "layout"), ("crs", "crs"),
                      ("gsd_tolerance", "gsd_tolerance"), ("fix_input_proj", "fix_input_proj"),
                      ("fill_value", "fill_value"), ("nodata", "nodata"), ("blend", "blend"), ("padding", "padding"),
                      ("name", "name"), ("architecture", "architecture"), ("input_dtype", "input_dtype")):
        if opts.get(flag) is not None:
            kw[key] = opts[flag]
    if opts.get("gsd"):
        kw["resolution"] = tuple(opts["gsd"])
    if opts.get("tasks"):
        kw["tasks"] = list(opts["tasks"])
    kw.setdefault("name", _stem(model_path))
    kw["artifact"] = fmt
    kw["model_href"] = _basename(model_path)
    kw.setdefault("input_overlap_size", (0, 0))
    if kw.get("layout") is None:
        kw["layout"] = _guess_layout(sig, len(kw["bands"]))
    if opts.get("input_name"):
        kw["input_names"] = [opts["input_name"]]
    elif kw["layout"] != "bands" and sig.inputs:
        kw["input_names"] = [sig.inputs[0].name]
    if kw.get("input_tile_size") is None:
        kw["input_tile_size"] = _tile_from_signature(sig, kw["layout"], kw["input_overlap_size"])
    if "input_dtype" not in kw:
        t = sig.inputs[0] if sig.inputs else None
        kw["input_dtype"] = str(t.dtype) if t is not None and t.dtype is not None and t.dtype.kind in "biuf" \
            else "float32"
    if opts.get("scalings"):
        sc = [None if s.lower() == "none" else parse_scaling(s) for s in opts["scalings"]]
        if len(sc) not in (1, len(kw["bands"])):
            raise SpecError(f"{len(sc)} --scaling for {len(kw['bands'])} bands; give one for all, or one per band")
        kw["scaling"] = sc
    if opts.get("output_bands"):
        kw["output_bands"] = list(parse_output_bands(list(opts["output_bands"])))
        kw["output_names"] = None
    outs = list(kw.get("output_bands") or [])
    if not outs:
        outs = list(parse_output_bands({t.name: (str(t.dtype) if t.dtype is not None and t.dtype.kind in "biuf"
                                                 else "float32") for t in sig.outputs[:1]})) if sig.outputs else []
    if opts.get("classes") or opts.get("colors"):
        if not outs:
            raise SpecError("--classes needs an --output-band to attach to")
        from dataclasses import replace

        from .predict import parse_classes

        classes = outs[0].classes
        if opts.get("classes"):
            parsed = parse_classes(opts["classes"])
            classes = tuple(sorted(parsed.items() if isinstance(parsed, dict) else enumerate(parsed)))
        colors = None
        if opts.get("colors"):
            values = [v for v, _ in classes] if classes else list(range(len(csv_list(opts["colors"]) or [])))
            colors = tuple(zip(values, (tuple(int(h.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))
                                        for h in csv_list(opts["colors"]) or []), strict=False))
        outs[0] = replace(outs[0], classes=classes, colors=colors or outs[0].colors)
    kw["output_bands"] = outs
    argmax = dict(kw.get("argmax") or {})
    if opts.get("argmax") is not None and outs:
        if opts["argmax"]:
            argmax[outs[0].name] = 1 if kw["layout"] == "NCHW" else -1
        else:
            argmax.pop(outs[0].name, None)
    kw["argmax"] = argmax
    if argmax and not kw.get("output_names") and sig.outputs:
        kw["output_names"] = [sig.outputs[0].name]
    return build_card(**kw)


def _kwargs_from_card(old: Any) -> dict[str, Any]:
    """build_card keywords that reproduce an existing card (so flags only change what they name)."""
    cp = old.to_params()
    p = cp.params
    from ..spec import parse_output_bands

    kw: dict[str, Any] = {
        "name": old.properties.get("mlm:name"),
        "architecture": old.properties.get("mlm:architecture", "unknown"),
        "tasks": old.properties.get("mlm:tasks", ["semantic-segmentation"]),
        "bands": cp.bands,
        "common_names": cp.common_names,
        "input_tile_size": p.get("input_tile_size"),
        "input_overlap_size": p.get("input_overlap_size", (0, 0)),
        "overlap_mode": p.get("overlap_mode", "per_edge"),
        # An output tile equal to the old input tile follows a new --tile.
        "output_tile_size": p.get("output_tile_size") if p.get("output_tile_size") != p.get("input_tile_size")
        else None,
        "layout": p.get("layout"),
        "input_names": [i["name"] for i in old.inputs],
        "input_dtype": old.inputs[0].get("input", {}).get("data_type", "float32"),
        "gsd_tolerance": cp.gsd_tolerance,
        "argmax": {},
    }
    for k in ("crs", "resolution", "fix_input_proj", "resampling", "fill_value", "nodata", "blend", "padding",
              "batch_size"):
        if k in p:
            kw[k] = p[k]
    if cp.scaling and p.get("layout") == "bands":  # one input per band, each with its own scaling
        kw["scaling"] = [(cp.scaling.get(i["name"]) or [None])[0] for i in old.inputs]
    elif cp.scaling:
        kw["scaling"] = next(iter(cp.scaling.values()))
    if "output_bands" in p:
        kw["output_bands"] = list(parse_output_bands(p["output_bands"]))
    extras = old.properties.get("tilecast:outputs", {})
    names = []
    for b in kw.get("output_bands", []):
        e = extras.get(b.name, {})
        names.append(e.get("source", b.name))
        if "argmax" in e:
            kw["argmax"][b.name] = e["argmax"]
    kw["output_names"] = names or None
    return kw


def _stem(path: str) -> str:
    from pathlib import Path

    return Path(str(path).rstrip("/")).stem


def _basename(path: str) -> str:
    from pathlib import Path

    return Path(str(path).rstrip("/")).name


def _guess_layout(sig: Any, nbands: int) -> str:
    if len(sig.inputs) > 1:
        return "bands"
    t = sig.inputs[0] if sig.inputs else None
    if t is not None and t.shape is not None and len(t.shape) == 2:
        return "pixels"
    if t is None or t.shape is None or len(t.shape) != 4:
        return "NCHW"
    if t.shape[1] == nbands and t.shape[3] != nbands:
        return "NCHW"
    if t.shape[3] == nbands:
        return "NHWC"
    return "NCHW"


def _tile_from_signature(sig: Any, layout: str, overlap: Any) -> tuple[int, int]:
    from ..card import _xy

    ox, oy = _xy(overlap)
    if layout == "pixels":
        return 256, 256  # any block size works for a per-pixel model
    t = sig.inputs[0] if sig.inputs else None
    if t is not None and t.shape is not None and len(t.shape) == 4:
        h, w = (t.shape[2], t.shape[3]) if layout == "NCHW" else (t.shape[1], t.shape[2])
        if h is not None and w is not None:
            return w - 2 * ox, h - 2 * oy
    raise SpecError("the model accepts any tile size: pass --tile (e.g. --tile 256)")


# ----------------------------------------------------------------------------------------------- synthetic tile


def _synthetic(card_obj: Any, bands: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Values in each band's raw range as far as the card's scaling tells it (else 0..1)."""
    cp = card_obj.to_params()
    chains = next(iter(cp.scaling.values()), []) if cp.scaling else []
    out = np.empty((bands, h, w), np.float32)
    for c in range(bands):
        s = chains[0 if len(chains) == 1 else c] if chains and (len(chains) == 1 or c < len(chains)) else None
        lo, hi = 0.0, 1.0
        if s is not None:
            if s.type in ("min-max", "clip"):
                lo, hi = s.minimum, s.maximum
            elif s.type == "z-score":
                lo, hi = s.mean - 2 * s.stddev, s.mean + 2 * s.stddev
            elif s.type == "scale":
                lo, hi = 0.0, float(s.value)
        out[c] = rng.uniform(lo, hi, (h, w))
    return out


def check_with_tile(model_path: str, card_obj: Any) -> dict[str, Any]:
    """Run one synthetic tile through the carded model; check outputs; estimate the receptive field.

    Raises :class:`OutputShapeError` when what the model returns contradicts the declared outputs. Returns the
    measured radius (input pixels; None when the probe was inconclusive) and human-readable lines.
    """
    from ..card import check_card_signature
    from ..loading import load_model
    from ..runtimes.scaled import ScaledRuntime
    from ..tensors import bind_inputs, bind_outputs

    model = load_model(model_path, card=card_obj)
    try:
        check_card_signature(card_obj, model.runtime.signature)
        spec = model.spec
        g = spec.geometry
        names = [str(b) for b in card_obj.band_names()]
        binding = bind_inputs(spec, model.runtime.signature, names, np.dtype("float32"), {})
        rng = np.random.default_rng(0)
        tile = _synthetic(card_obj, len(names), g.padded.y, g.padded.x, rng)
        batch = binding.pack([tile])
        out = model.runtime.run(batch)
        ob = bind_outputs(spec, model.runtime.signature, binding.layout, probe=out)
        arr, padded = ob.unpack(out, 1, g)
        lines = [f"checked one {g.padded.x} x {g.padded.y} tile: outputs "
                 + ", ".join(f"{k} {tuple(np.asarray(v).shape)} {np.asarray(v).dtype}" for k, v in out.items())]
        for band, (src, _) in zip(ob.bands, ob.sources, strict=True):
            got = np.asarray(out[src]).dtype
            if band.dtype.kind in "iub" and got.kind == "f":
                warnings.warn(
                    f"output {band.name!r} is declared {band.dtype} but the model returns {got}; values are cast "
                    "(use --argmax for class scores, or declare a float dtype)", TilecastWarning, stacklevel=2)
                lines.append(f"warning: output {band.name!r} declared {band.dtype}, model returns {got}")
        # Receptive field: perturb the centre pixel of the raw (un-reduced) scores.
        probe_rt = model.runtime
        if isinstance(probe_rt, ScaledRuntime) and probe_rt.argmax:
            probe_rt = ScaledRuntime(probe_rt.runtime, probe_rt.scaling, probe_rt.channel_axis)
        radius = 0 if binding.layout == "pixels" else receptive_radius(probe_rt, binding, tile, g,
                                                                       padded_hint=padded)
        overlap = min(g.overlap)
        if binding.layout == "pixels":
            lines.append("per-pixel (tabular) model: no receptive field, no overlap needed")
        elif radius is None:
            lines.append("receptive field: the centre pixel did not change any output (inconclusive)")
        else:
            lines.append(f"receptive field: about {radius} px from the centre pixel; overlap {overlap} px per edge")
            if overlap < radius:
                msg = (f"overlap {overlap} px is smaller than the measured receptive-field radius {radius} px: "
                       f"tile seams may show; use --overlap {radius} (or more)")
                warnings.warn(msg, TilecastWarning, stacklevel=2)
                lines.append("warning: " + msg)
        shapes = {k: (tuple(np.asarray(v).shape), str(np.asarray(v).dtype)) for k, v in out.items()}
        return {"radius": radius, "lines": lines, "shape": tuple(arr.shape), "outputs": shapes,
                "sources": {b.name: src for b, (src, _) in zip(ob.bands, ob.sources, strict=True)}}
    except OutputShapeError as exc:
        raise OutputShapeError(f"the card's declared outputs do not fit what the model returns: {exc}") from None
    finally:
        model.close()


def receptive_radius(runtime: Any, binding: Any, tile: np.ndarray, g: Any, padded_hint: bool = True) -> int | None:
    """How far (Chebyshev, input pixels) one perturbed centre pixel changes the model's outputs."""
    cy, cx = tile.shape[1] // 2, tile.shape[2] // 2
    base = runtime.run(binding.pack([tile]))
    bumped = tile.copy()
    spread = float(np.nanstd(tile)) or 1.0
    bumped[:, cy, cx] += 10 * spread
    moved = runtime.run(binding.pack([bumped]))
    radius = None
    for k, a in base.items():
        a, b = np.asarray(a, np.float64), np.asarray(moved[k], np.float64)
        if a.ndim != 4:
            continue
        diff = np.abs(a - b)
        # channel axis: whichever is not spatial
        if a.shape[2:] in ((tile.shape[1], tile.shape[2]), (g.out.y, g.out.x)) or a.shape[1] < a.shape[3]:
            changed = diff.max(axis=1)[0]
        else:
            changed = diff.max(axis=3)[0]
        tol = 1e-5 * (np.abs(a).max() + 1.0)
        ys, xs = np.nonzero(changed > tol)
        if len(ys) == 0:
            continue
        oh, ow = changed.shape
        sy, sx = tile.shape[1] / oh, tile.shape[2] / ow
        if (oh, ow) != (tile.shape[1], tile.shape[2]) and (oh, ow) == (g.out.y, g.out.x) and sy == 1:
            ys, xs = ys + g.overlap.y, xs + g.overlap.x
            sy = sx = 1
        r = int(np.ceil(max(np.abs((ys + 0.5) * sy - (cy + 0.5)).max(), np.abs((xs + 0.5) * sx - (cx + 0.5)).max())))
        radius = max(radius or 0, r)
    return radius
