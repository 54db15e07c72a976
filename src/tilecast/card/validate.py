"""Is a card right? Against the STAC item and MLM schemas (offline), and against the model it describes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._extras import require
from ..errors import SpecError
from ..runtimes.base import Signature
from .schema import MLM_SCHEMA, Card

__all__ = ["check_card_signature", "mlm_json_schema", "require_card_extra", "validate_card"]


def require_card_extra() -> None:
    """Raise :class:`~tilecast.errors.MissingExtraError` naming ``tilecast[card]`` unless the validators are there."""
    for module in ("pystac", "stac_model", "jsonschema"):
        require(module, "card")


def validate_card(card: Card | Mapping[str, Any]) -> list[str]:
    """Check a card against the STAC item schema (bundled with pystac) and the MLM extension (stac-model).

    Returns the problems (empty when valid); raises nothing, so callers decide how strict to be.
    """
    item = card.item if isinstance(card, Card) else dict(card)
    problems: list[str] = []
    try:
        import pystac

        pystac.Item.from_dict(json.loads(json.dumps(item)), migrate=False)
    except ImportError:
        problems.append("pystac is not installed: STAC structure not checked")
    except Exception as exc:
        problems.append(f"not a STAC item: {exc}")
    problems.extend(_core_schema_problems(item))
    problems.extend(_mlm_problems(item))
    p = item.get("properties", {})
    if MLM_SCHEMA not in item.get("stac_extensions", []):
        problems.append(f"stac_extensions must list the MLM schema {MLM_SCHEMA}")
    for inp in p.get("mlm:input", []):
        vs, bands = inp.get("value_scaling"), inp.get("bands", [])
        if vs and bands and len(vs) not in (1, len(bands)):
            problems.append(f"input {inp.get('name')!r}: value_scaling has {len(vs)} entries for {len(bands)} bands")
    return problems


def _core_schema_problems(item: Mapping[str, Any]) -> list[str]:
    """The STAC 1.1 item schema that pystac ships, checked offline with jsonschema."""
    try:
        from jsonschema import Draft7Validator
        from pystac.validation.local_validator import _read_schema, get_local_schema_cache
        from referencing import Registry, Resource
    except ImportError:
        return []
    registry = Registry().with_resources(
        [(k, Resource.from_contents(v)) for k, v in get_local_schema_cache().items()]
    )
    validator = Draft7Validator(_read_schema("stac-spec/v1.1.0/item.json"), registry=registry)
    return [f"STAC item schema: {e.message} at {'/'.join(map(str, e.absolute_path)) or '/'}"
            for e in validator.iter_errors(json.loads(json.dumps(item)))]


def mlm_json_schema() -> dict[str, Any] | None:
    """The MLM item-properties JSON schema, generated from stac-model's models (no network needed)."""
    try:
        from stac_model.schema import MLModelProperties
    except ImportError:
        return None
    schema = MLModelProperties.model_json_schema(by_alias=True)
    # stac-model wraps pystac's Classification, whose generated schema wants a "properties" key; put the MLM /
    # classification extension's Class Object in its place.
    schema.get("$defs", {})["MLMClassification"] = {
        "type": "object",
        "required": ["value"],
        "properties": {"value": {"type": "integer"}, "name": {"type": "string"}, "description": {"type": "string"},
                       "title": {"type": "string"}, "color_hint": {"type": "string", "pattern": "^([0-9A-Fa-f]{6})$"},
                       "nodata": {"type": "boolean"}},
        "anyOf": [{"required": ["name"]}, {"required": ["description"]}],
    }
    return schema


def _mlm_problems(item: Mapping[str, Any]) -> list[str]:
    props = {k: v for k, v in item.get("properties", {}).items() if k.startswith("mlm:")}
    try:
        from pydantic import ValidationError
        from stac_model.schema import MLModelProperties
    except ImportError:
        return _mlm_required(props)
    problems = _mlm_required(props)
    try:
        MLModelProperties.model_validate(props)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(f"MLM: {err['msg']} at {'/'.join(map(str, err['loc']))}")
    schema = mlm_json_schema()
    if schema is not None:
        from jsonschema import Draft202012Validator

        for e in Draft202012Validator(schema).iter_errors(json.loads(json.dumps(props))):
            problems.append(f"MLM JSON schema: {e.message} at {'/'.join(map(str, e.absolute_path)) or '/'}")
    return sorted(set(problems), key=problems.index)


def _mlm_required(props: Mapping[str, Any]) -> list[str]:
    need = ("mlm:name", "mlm:architecture", "mlm:tasks", "mlm:input", "mlm:output")
    return [f"MLM: missing required field {k}" for k in need if k not in props]


def check_card_signature(card: Card, signature: Signature) -> None:
    """Raise :class:`SpecError` where the card contradicts what the model itself declares."""
    names = signature.input_names
    cp = card.to_params()
    for inp in card.inputs:
        name = inp["name"]
        t = signature.input(name)
        if t is None:
            if len(card.inputs) == 1 and len(names) == 1:
                t = signature.inputs[0]
                raise SpecError(
                    f"the model card names the input {name!r} but the model's input is {t.name!r}; rewrite the card "
                    f"(`tilecast card MODEL --input-name {t.name}`) or fix mlm:input[0].name"
                )
            if names:
                raise SpecError(
                    f"the model card names the input {name!r} but the model has inputs {names}; rewrite the card "
                    "with `tilecast card`"
                )
            continue
        shape, dims = inp.get("input", {}).get("shape", []), inp.get("input", {}).get("dim_order", [])
        if t.shape is not None and len(shape) == len(t.shape):
            for d, (want, have) in enumerate(zip(shape, t.shape, strict=True)):
                if have is not None and want not in (-1, None) and int(want) != int(have) and d > 0:
                    dim = dims[d] if d < len(dims) else str(d)
                    raise SpecError(
                        f"the model card says input {name!r} has {dim} = {want} (shape {shape}), but the model "
                        f"declares {t.describe()}; fix the card's --tile/--overlap/--bands to match the model"
                    )
        elif t.shape is not None and shape and len(shape) != len(t.shape):
            raise SpecError(f"the model card gives input {name!r} rank {len(shape)} ({shape}) but the model declares "
                            f"{t.describe()}; rewrite the card with `tilecast card`")
        if "channel" in dims and t.shape is not None and len(t.shape) == len(dims):
            c = t.shape[dims.index("channel")]
            nb = len(inp.get("bands", []))
            if c is not None and nb and c != nb and cp.params.get("layout") != "bands":
                raise SpecError(
                    f"the model card lists {nb} bands {inp.get('bands')} for input {name!r}, but the model takes "
                    f"{c} channels; fix --bands in the card"
                )
