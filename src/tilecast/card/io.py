"""Read and write cards: the sidecar JSON, the copy embedded in the model, or Deepness/GeoDeep metadata keys."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._extras import require
from ..errors import ModelLoadError, OutputExistsError, SpecError, TilecastWarning
from ..runtimes.base import Signature
from .deepness import DEEPNESS_KEYS, card_from_deepness
from .files import card_path, detect_format, embeddable
from .schema import MLM_SCHEMA, ONNX_KEY, Card

__all__ = ["embed_onnx", "read_card", "will_embed", "write_card"]


def read_card(model_path: str | os.PathLike, metadata: Mapping[str, str] | None = None,
              signature: Signature | None = None) -> Card | None:
    """The card for a model: the sidecar, else the one embedded in ONNX metadata, else Deepness/GeoDeep keys."""
    side = card_path(model_path)
    if side.is_file():
        try:
            item = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model card {side} is not valid JSON ({exc}); fix it or replace it with "
                                 "`tilecast card MODEL --overwrite --bands ...`") from None
        return Card(_check_item(item, str(side)), "sidecar")
    metadata = metadata or {}
    if ONNX_KEY in metadata:
        try:
            item = json.loads(metadata[ONNX_KEY])
        except ValueError as exc:
            raise ModelLoadError(f"the model card embedded in {model_path} ({ONNX_KEY!r}) is not valid JSON "
                                 f"({exc}); replace it with `tilecast card MODEL --overwrite --bands ...`") from None
        return Card(_check_item(item, f"{model_path} metadata"), "embedded")
    if any(k in metadata for k in DEEPNESS_KEYS):
        return card_from_deepness(metadata, signature, name=Path(model_path).stem)
    return None


def read_card_file(path: str | os.PathLike) -> Card:
    """A card JSON given explicitly (``card=`` / ``--card``) instead of the model's own."""
    try:
        item = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the model card {path} ({exc}); give a STAC MLM item JSON") from None
    return Card(_check_item(item, str(path)), "file")


def _check_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("properties"), dict) \
            or "mlm:input" not in item["properties"]:
        raise ModelLoadError(f"{where} is not a STAC MLM item (no properties.mlm:input); write one with "
                             "`tilecast card MODEL --bands ... --tile ...`")
    _check_version(item, where)
    return item


_MLM_URL = re.compile(r"stac-extensions\.github\.io/mlm/v(\d+)\.(\d+)\.(\d+)/schema\.json")
_MLM_READ = tuple(int(v) for v in _MLM_URL.search(MLM_SCHEMA).groups())  # type: ignore[union-attr]


def _check_version(item: dict[str, Any], where: str) -> None:
    """The MLM version the card declares: another major version is refused (its fields may mean something else);
    a newer minor one is read with a warning (fields added since are ignored)."""
    extensions = item.get("stac_extensions")
    urls = [e for e in extensions if isinstance(e, str)] if isinstance(extensions, list) else []
    for url in urls:
        m = _MLM_URL.search(url)
        if m is None:
            continue
        version = tuple(int(v) for v in m.groups())
        text, known = "v{}.{}.{}".format(*version), "v{}.{}.{}".format(*_MLM_READ)
        if version[0] != _MLM_READ[0]:
            raise ModelLoadError(f"{where} is a card for MLM {text}; tilecast reads MLM {known} cards (v"
                                 f"{_MLM_READ[0]}.x): rewrite it as an MLM {known} card (tilecast.card.build_card, "
                                 "or `tilecast card MODEL --overwrite --bands ... --tile ...`)")
        if version[:2] > _MLM_READ[:2]:
            warnings.warn(f"{where} is a card for MLM {text}, newer than the MLM {known} tilecast reads; fields "
                          "added since are ignored", TilecastWarning, stacklevel=3)


def will_embed(model_path: str | os.PathLike, embed: bool | None = None) -> bool:
    """Whether :func:`write_card` embeds the card in the model: ``embed`` None means whenever it can (ONNX needs the
    ``onnx`` package)."""
    kind = embeddable(model_path)
    if embed is None:
        return kind == "torch" or (kind == "onnx" and importlib.util.find_spec("onnx") is not None)
    return bool(embed)


def write_card(card: Card, model_path: str | os.PathLike, *, embed: bool | None = None,
               overwrite: bool = False) -> Path:
    """Write the sidecar (atomically) and, for ONNX and Torch models, embed the card in the model too.

    ``embed`` None embeds when the model is a Torch archive, or an ``.onnx`` file and ``onnx`` is installed. An
    existing sidecar is replaced only with ``overwrite=True`` (it may hold fields written by hand).
    """
    side = card_path(model_path)
    if side.exists() and not overwrite:
        raise OutputExistsError(f"{side} exists (the card of {model_path}); pass write_card(..., overwrite=True) to "
                                "replace it, or read_card it first to edit it")
    kind = embeddable(model_path)
    if will_embed(model_path, embed) and kind is None:  # refused before anything is written
        raise SpecError(f"only ONNX, TorchScript and torch.export models can embed their card, not {model_path}; "
                        "leave out embed (--embed): the sidecar JSON holds the card")
    text = card.to_json() + "\n"
    _replace(side, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if will_embed(model_path, embed):
        if kind == "onnx":
            embed_onnx(card, model_path)
        else:
            from ..runtimes.torch import embed_card

            embed_card(model_path, json.dumps(card.item, separators=(",", ":")), detect_format(model_path))
    return side


def embed_onnx(card: Card, model_path: str | os.PathLike) -> None:
    """Store the card in the ONNX model's ``metadata_props`` (rewritten atomically)."""
    onnx = require("onnx", "card")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise ModelLoadError(f"cannot read ONNX model {model_path} to embed the card: {exc}") from None
    props = {p.key: p.value for p in model.metadata_props}
    props[ONNX_KEY] = json.dumps(card.item, separators=(",", ":"))
    onnx.helper.set_model_props(model, props)
    _replace(Path(model_path), lambda tmp: onnx.save(model, str(tmp)))


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it over ``path``: readers see the old file or the new
    one, and a write that fails (a full disk) leaves neither a half-written file nor the temporary one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
