"""Model cards: a STAC item with the MLM extension that lets a model describe how it must be fed.

The card lives in a sidecar ``<model>.json`` (``landcover.onnx.json``, ``saved_model.json`` for a directory) and, for
ONNX and Torch archives, also inside the model. Models published for Deepness or GeoDeep carry their own metadata
keys; :func:`card_from_deepness` turns those into a card so they run unchanged. One concept per module:

* :mod:`~tilecast.card.schema` the card (a STAC item) and the schemas it declares; :mod:`~tilecast.card.build` a card
  from plain values;
* :mod:`~tilecast.card.files` model files (format, runtime, sidecar path); :mod:`~tilecast.card.io` read, write and
  embed cards;
* :mod:`~tilecast.card.deepness` Deepness/GeoDeep metadata; :mod:`~tilecast.card.validate` schema and model checks;
* :mod:`~tilecast.card.params` what a card means as model parameters; :mod:`~tilecast.card.binding` the card a
  :class:`~tilecast.model.Model` holds (bands, GSD policy); :mod:`~tilecast.card.load` a model file opened with its
  card;
* :mod:`~tilecast.card.probe` one synthetic tile and the receptive field (import it explicitly: it runs a Model).
"""

from .binding import CardBinding, match_bands
from .build import CardFields, GridFields, InputFields, ModelFields, OutputFields, TileFields, build_card
from .deepness import DEEPNESS_KEYS, card_from_deepness
from .files import MODEL_SUFFIXES, card_path, detect_format, embeddable, open_runtime, runtime_metadata
from .io import embed_onnx, read_card, read_card_file, will_embed, write_card
from .load import OpenedModel, open_model
from .params import CardParams, card_params, describe_card, keywords_from_card
from .schema import CLASSIFICATION_SCHEMA, EO_SCHEMA, MLM_SCHEMA, ONNX_KEY, Card
from .validate import check_card_signature, mlm_json_schema, require_card_extra, validate_card

__all__ = [
    "CLASSIFICATION_SCHEMA",
    "DEEPNESS_KEYS",
    "EO_SCHEMA",
    "MLM_SCHEMA",
    "MODEL_SUFFIXES",
    "ONNX_KEY",
    "Card",
    "CardBinding",
    "CardFields",
    "CardParams",
    "GridFields",
    "InputFields",
    "ModelFields",
    "OpenedModel",
    "OutputFields",
    "TileFields",
    "build_card",
    "card_from_deepness",
    "card_params",
    "card_path",
    "check_card_signature",
    "describe_card",
    "detect_format",
    "embed_onnx",
    "embeddable",
    "keywords_from_card",
    "match_bands",
    "mlm_json_schema",
    "open_model",
    "open_runtime",
    "read_card",
    "read_card_file",
    "require_card_extra",
    "runtime_metadata",
    "validate_card",
    "will_embed",
    "write_card",
]
