"""``_repr_html_`` of a Model, a card and a card binding: well-formed HTML that states the facts a notebook user looks
for (signature, tile geometry, output bands, card name, classes with their colours), with every value escaped."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest

import tilecast
from onnx_models import mean_conv
from tilecast.card import build_card, write_card
from tilecast.runtimes.scaled import Scaling
from tilecast.spec import OutputBand

VOID = {"br", "hr", "img", "input", "meta", "link", "col", "wbr"}


class Checker(HTMLParser):
    """Fails on a closing tag that does not match the open one; collects the text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.styles: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.styles.extend(v for k, v in attrs if k == "style" and v)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(markup: str) -> Checker:
    checker = Checker()
    checker.feed(markup)
    checker.close()
    assert checker.stack == [], f"unclosed tags {checker.stack}"
    assert "<script" not in markup.lower()
    return checker


CLASSES = OutputBand("landcover", np.dtype("uint8"), 0, ((0, "water"), (1, "forest & <park>")),
                     ((0, (0, 0, 255)), (1, (34, 139, 34))))


def test_model_html_states_signature_tiles_and_bands(tmp_path):
    path = mean_conv(tmp_path / "mc.onnx", bands=3)
    with tilecast.Model.from_onnx(path, input_tile_size=(64, 32), input_overlap_size=8, batch_size=5,
                                  output_bands=[CLASSES]) as model:
        markup = model._repr_html_()
    page = parse(markup)
    text = " ".join(page.text)
    for fact in ("tilecast.Model", "OnnxRuntime", "image", "float32", "64×32", "8×8", "batch size", "5",
                 "landcover", "uint8", "water", "forest & <park>"):
        assert fact in text, fact
    assert "forest &amp; &lt;park&gt;" in markup  # escaped in the source, read back as the name
    assert any("rgb(0,0,255)" in s for s in page.styles) and any("rgb(34,139,34)" in s for s in page.styles)


def test_card_and_loaded_model_html(tmp_path):
    path = mean_conv(tmp_path / "mc.onnx", bands=3)
    card = build_card(name="lc-model", bands=["B04", "B03", "B02"], input_tile_size=(32, 32), input_overlap_size=4,
                      layout="NCHW", input_names=["image"], output_names=["mean"],
                      scaling=[Scaling("scale", value=10000)], output_bands=[CLASSES])
    write_card(card, path, embed=False)
    card_page = parse(card._repr_html_())
    text = " ".join(card_page.text)
    for fact in ("lc-model", "flags", "NCHW", "B04", "B02", "landcover", "water", "forest & <park>"):
        assert fact in text, fact
    assert any("#0000ff" in s.lower() for s in card_page.styles)  # the class colours, as MLM colour hints
    with tilecast.Model.load(path) as model:
        page = parse(model._repr_html_())
        assert "lc-model" in " ".join(page.text) and "sidecar" in " ".join(page.text)
        assert parse(model.card._repr_html_()).text == parse(tilecast.card.read_card(path)._repr_html_()).text


@pytest.mark.parametrize("color", ["00ff00", "#00FF00", (0, 255, 0), (0, 255, 0, 128)])
def test_swatch_colours(color):
    from tilecast.card.html import swatch

    page = parse(swatch(color))
    assert any(("#00ff00" in s.lower()) or ("rgb(0,255,0)" in s) for s in page.styles)


def test_bad_colour_hint_is_left_out():
    from tilecast.card.html import swatch

    assert swatch("javascript:alert(1)") == "" and swatch(None) == ""
