"""Fix round 10 of model cards: ``write_card`` replaces an existing card only with ``overwrite=True`` (the project's
rule for every output); ``tilecast card`` still updates a card in place."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tests.onnx_models import linear_1x1

from tilecast.card import build_card, card_path, write_card
from tilecast.cli import main
from tilecast.errors import OutputExistsError


def _card(name: str):
    return build_card(name=name, bands=["a", "b"], input_tile_size=(16, 16), input_overlap_size=(0, 0),
                      layout="NCHW", input_names=["x"])


def test_write_card_keeps_an_existing_card_unless_overwrite(tmp_path):
    """Symptom: ``write_card``'s ``overwrite`` defaulted to True, so a second call silently replaced a card written
    by hand (licence, links, hyperparameters lost), against the rule that nothing is overwritten without
    ``overwrite=True``."""
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    write_card(_card("first"), path, embed=False)
    before = card_path(path).read_bytes()
    with pytest.raises(OutputExistsError, match=r"lin\.onnx\.json exists.*overwrite=True"):
        write_card(_card("second"), path, embed=False)
    assert card_path(path).read_bytes() == before
    write_card(_card("second"), path, embed=False, overwrite=True)
    assert json.loads(card_path(path).read_text())["properties"]["mlm:name"] == "second"


def test_the_card_command_still_updates_a_card_in_place(tmp_path):
    """``tilecast card`` edits the card beside a model: it needs no --overwrite (the flags left out are kept)."""
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    run = CliRunner().invoke
    first = run(main, ["card", str(path), "--bands", "a,b", "--tile", "16", "--no-check", "--no-embed"])
    assert first.exit_code == 0, first.output
    second = run(main, ["card", str(path), "--name", "renamed", "--no-check", "--no-embed"])
    assert second.exit_code == 0, second.output
    props = json.loads(card_path(path).read_text())["properties"]
    assert props["mlm:name"] == "renamed"
    assert props["mlm:input"][0]["bands"] == ["a", "b"]  # kept from the first call
