"""Malformed cards and unusual third-party metadata: tilecast errors naming the field, never a bare KeyError."""

from __future__ import annotations

import pytest

from tilecast.card import Card
from tilecast.card.io import read_card_file
from tilecast.errors import ModelLoadError, SpecError


def test_a_card_file_that_is_not_an_item_is_a_load_error(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="not a STAC MLM item"):
        read_card_file(path)


def test_an_input_or_output_without_a_name_is_named_in_the_error():
    item = {"properties": {"mlm:input": [{"bands": ["a"]}]}}
    with pytest.raises(SpecError, match=r"mlm:input\[0\]\.name"):
        Card(item).to_params()
    item = {"properties": {"mlm:input": [{"name": "x", "bands": ["a"]}], "mlm:output": [{"result": {}}]}}
    with pytest.raises(SpecError, match=r"mlm:output\[0\]\.name"):
        Card(item).to_params()


def _classed(hint):
    return Card({"properties": {
        "mlm:input": [{"name": "x", "bands": ["a"]}],
        "mlm:output": [{"name": "c", "classification:classes": [{"value": 0, "name": "w", "color_hint": hint}]}],
    }})


def test_color_hints_with_a_hash_are_read_and_bad_ones_named():
    assert _classed("#00fF00").to_params().params["output_bands"]["c"]["colors"] == {0: (0, 255, 0)}
    with pytest.raises(SpecError, match="color_hint"):
        _classed("green").to_params()
