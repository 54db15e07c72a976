"""Malformed cards and unusual third-party metadata: tilecast errors naming the field, never a bare KeyError."""

from __future__ import annotations

import json
import warnings

import pytest

from tilecast.card import Card
from tilecast.card.deepness import card_from_deepness
from tilecast.card.io import read_card_file
from tilecast.errors import ModelLoadError, SpecError


def test_a_card_file_that_is_not_an_item_is_a_load_error(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="not a STAC MLM item"):
        read_card_file(path)
