"""Earth Engine's ``earthengine model prepare``: wrap a SavedModel so it takes and returns tensor strings.

The wrapped ``serving_default`` signature takes, per Earth Engine name, a ``[N]`` string tensor of web-safe base64
serialized TensorProtos (one per instance), decodes them with the original input's dtype, runs the original
signature, and returns each output the same way, keyed by its Earth Engine name. Earth Engine builds this in TF1
graph mode; here it is a ``tf.function`` over the loaded TF2 signature, which keeps the variables of the original.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._extras import require
from .._files import current_umask
from ..errors import ModelLoadError, OutputError, OutputExistsError, SpecError

__all__ = ["parse_names", "prepare_model"]

EE_INPUT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
"""The input names a tf.function signature keeps as they are (TensorFlow rewrites any other)."""


def parse_names(text: str | Mapping[str, str], flag: str) -> dict[str, str]:
    """``--input``/``--output``: a JSON object ``{graph_name: ee_name}`` or a comma-separated list of names."""
    if isinstance(text, Mapping):
        mapping = dict(text)
    elif text.strip().startswith("{"):
        try:
            mapping = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"{flag}: not valid JSON ({exc}); use '{{\"graph_name\": \"ee_name\"}}'") from None
    else:
        mapping = {n.strip(): n.strip() for n in text.split(",") if n.strip()}
    if not mapping or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise SpecError(f"{flag} must be a JSON object of strings or a comma-separated list of names")
    return mapping


def _resolve(mapping: Mapping[str, str], keys: list[str], kind: str) -> dict[str, str]:
    """Map graph tensor names (``serving_default_x:0``, ``StatefulPartitionedCall:1``, or signature keys) to the
    signature's keys. A key named twice, or an Earth Engine name given twice, is refused: either would silently
    lose one of them."""
    out: dict[str, str] = {}
    for name, ee in mapping.items():
        base = name.split(":")[0]
        index = int(name.split(":")[1]) if ":" in name and name.split(":")[1].isdigit() else 0
        candidates = [base, base.removeprefix("serving_default_")]
        key = next((c for c in candidates if c in keys), None)
        if key is None and base.startswith(("StatefulPartitionedCall", "Identity")) and index < len(keys):
            key = sorted(keys)[index]
        if key is None:
            raise SpecError(f"Specified {kind} ops were missing from graph: [{name!r}]; the signature's {kind}s "
                            f"are {sorted(keys)}")
        if key in out:
            raise SpecError(f"--{kind}: the signature's {kind} {key!r} is named more than once ({name!r} is one of "
                            "them); name each once")
        if ee in out.values():
            raise SpecError(f"--{kind}: the Earth Engine name {ee!r} is given to more than one {kind}; use each "
                            "name once")
        if kind == "input" and not EE_INPUT_NAME.fullmatch(ee):
            # TensorFlow renames such an input (a-b -> a_b), so Earth Engine's requests would not match it
            raise SpecError(f"--input: the Earth Engine name {ee!r} cannot name a TensorFlow signature input; use "
                            "a letter followed by letters, digits or underscores (e.g. 'array')")
        out[key] = ee
    return out


def prepare_model(source_dir: str | os.PathLike, dest_dir: str | os.PathLike, inputs: str | Mapping[str, str],
                  outputs: str | Mapping[str, str], *, tag: str = "serve", signature: str = "serving_default",
                  overwrite: bool = False) -> Path:
    """Write the Earth Engine-ready SavedModel to ``dest_dir`` (through a temporary directory, then renamed)."""
    tf = require("tensorflow", "tf")
    src, dest = Path(source_dir), Path(dest_dir)
    if not (src / "saved_model.pb").exists():
        raise ModelLoadError(f"{src} is not a SavedModel directory (no saved_model.pb)")
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} exists; pass --overwrite to replace it")
    parent = dest.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"the output folder {parent} does not exist; create it first")
    try:
        loaded = tf.saved_model.load(str(src), tags=[tag])
    except Exception as exc:
        raise ModelLoadError(f"TensorFlow could not load {src} with tag {tag!r}: {exc}") from None
    if signature not in loaded.signatures:
        raise SpecError(f"the SavedModel has no signature {signature!r}; it has {sorted(loaded.signatures)}")
    fn = loaded.signatures[signature]
    in_specs: dict[str, Any] = dict(fn.structured_input_signature[1])
    out_specs: dict[str, Any] = dict(fn.structured_outputs)
    in_map = _resolve(parse_names(inputs, "--input"), list(in_specs), "input")
    out_map = _resolve(parse_names(outputs, "--output"), list(out_specs), "output")
    missing = sorted(set(in_specs) - set(in_map))
    if missing:
        raise SpecError(f"every input of the signature needs an Earth Engine name; missing {missing}")
    order = list(in_map.items())

    def decoder(dtype: Any, shape: Any):
        return lambda x: tf.ensure_shape(tf.io.parse_tensor(tf.io.decode_base64(x), dtype), shape)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=ee) for _, ee in order])
    def serve(*strings: Any) -> dict[str, Any]:
        feeds = {}
        for (key, _), s in zip(order, strings, strict=True):
            spec = in_specs[key]
            elem = tf.TensorSpec(spec.shape[1:], spec.dtype)
            feeds[key] = tf.map_fn(decoder(spec.dtype, spec.shape[1:]), s, fn_output_signature=elem)
        result = fn(**feeds)
        return {ee: tf.map_fn(lambda x: tf.io.encode_base64(tf.io.serialize_tensor(x)), result[key],
                              fn_output_signature=tf.string)
                for key, ee in out_map.items()}

    module = tf.Module()
    module.original = loaded
    module.serve = serve
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=parent))  # beside dest: a rename, never a copy
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": serve.get_concrete_function()})
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the model from a server's other user
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
