"""The card binding by composition: a model loaded with a card is a plain Model that holds the card's binding."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from tests.conftest import write_raster
from tests.onnx_models import linear_1x1

import tilecast
import tilecast.card as card_pkg
from tilecast import Model
from tilecast.card import CardBinding, CardFields, InputFields, ModelFields, TileFields, build_card, write_card
from tilecast.errors import BandMismatchError, InputError, MissingExtraError
from tilecast.runtimes.scaled import Scaling
from tilecast.spec import OutputBand

SRC = Path(tilecast.__file__).parent
WEIGHTS = [1.0, 10.0, 100.0]


def _carded(tmp_path, **kw):
    path = linear_1x1(tmp_path / "lin.onnx", WEIGHTS)
    args = dict(name="lin", bands=["B04", "B03", "B02"], input_tile_size=(16, 16), input_overlap_size=(2, 2),
                layout="NCHW", input_names=["x"], scaling=[Scaling("z-score", mean=100, stddev=50)],
                common_names={"B04": "red", "B03": "green", "B02": "blue"},
                output_bands=[OutputBand("y", np.dtype("float32"))])
    args.update(kw)
    write_card(build_card(**args), path, embed=False, overwrite=True)  # a test may card one model twice
    return path


def _scene(tmp_path):
    """Bands stored blue, green, red (named by description), each pixel encoding its band and position."""
    rows, cols = np.mgrid[0:37, 0:29].astype(np.float32)
    data = np.stack([rows * 29 + cols + 1000 * b for b in range(3)]).astype(np.float32)
    return write_raster(tmp_path / "scene.tif", data, descriptions=("blue", "green", "red")), data


def test_a_carded_model_is_a_plain_model(tmp_path):
    with Model.load(_carded(tmp_path)) as m:
        assert type(m) is Model and isinstance(m.card, CardBinding)
        assert m.card.source == "sidecar" and m.card.bands == ["B04", "B03", "B02"]
        copy = m.with_options(blend="crop", batch_size=2)
        assert type(copy) is Model and copy.card is m.card and copy.runtime is m.runtime
    assert Model.from_callable(lambda x: x, input_tile_size=8).card is None


def test_binding_matches_bands_and_scales_like_the_card_says(tmp_path):
    img, data = _scene(tmp_path)
    with Model.load(_carded(tmp_path)) as m:
        m.predict_image(img).to_geotiff(tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as ds:
        got = ds.read(1)
    # Independently: the card's bands B04 (red), B03 (green), B02 (blue) are raster bands 3, 2, 1, each scaled
    # (x - 100) / 50 before the 1x1 linear model.
    red, green, blue = data[2], data[1], data[0]
    want = sum(w * (b.astype(np.float64) - 100) / 50 for w, b in zip(WEIGHTS, (red, green, blue), strict=True))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_explicit_bands_bypass_matching_but_must_fit_the_card(tmp_path):
    img, data = _scene(tmp_path)
    with Model.load(_carded(tmp_path), bands=[1, 2, 3]) as m:
        assert m.card.explicit_bands
        got = m.predict_image(img).to_numpy()
        with pytest.raises(BandMismatchError, match="one raster band per card band"):
            m.predict_image(img, bands=[1, 2])
    # bands=[1, 2, 3] feeds raster bands in file order (blue, green, red) to the card's B04, B03, B02.
    want = sum(w * (b.astype(np.float64) - 100) / 50 for w, b in zip(WEIGHTS, data, strict=True))
    np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=1e-6)


def test_card_model_name_is_deprecated():
    from tilecast import loading

    with pytest.warns(DeprecationWarning, match="plain Model"):
        assert loading.CardModel is Model


def test_build_card_takes_grouped_values_or_keywords():
    fields = CardFields(ModelFields(name="m"), InputFields(bands=["a", "b"]), TileFields(input_tile_size=32))
    by_groups, by_keywords = build_card(fields), build_card(name="m", bands=["a", "b"], input_tile_size=32)
    for c in (by_groups, by_keywords):
        c.properties.pop("datetime")
    assert by_groups.item == by_keywords.item
    assert build_card(fields, layout="NHWC").properties["tilecast:layout"] == "NHWC"
    with pytest.raises(tilecast.SpecError, match="unknown keyword"):
        build_card(name="m", bands=["a"], input_tile_size=8, tile=8)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            out.add("." * node.level + (node.module or ""))
    return out


def test_card_package_layout():
    modules = {p.stem for p in (SRC / "card").glob("*.py")}
    assert {"schema", "build", "files", "io", "deepness", "validate", "params", "binding", "load",
            "probe"} <= modules
    assert not (SRC / "card.py").exists()
    for name in card_pkg.__all__:
        assert getattr(card_pkg, name) is not None
    for p in (SRC / "card").glob("*.py"):
        assert "..loading" not in _imports(p), f"{p.name} imports tilecast.loading"
        if p.stem != "probe":  # probe runs a Model; nothing else in the card package may
            assert "..model" not in _imports(p), f"{p.name} imports tilecast.model"
    assert "..card.probe" not in _imports(SRC / "card" / "__init__.py")
    assert ".loading" not in _imports(SRC / "model.py")


def test_cli_card_without_the_card_extra_names_it(tmp_path, monkeypatch):
    from tilecast.cli import main

    path = linear_1x1(tmp_path / "lin.onnx", [1.0])
    monkeypatch.setitem(__import__("sys").modules, "pystac", None)  # import pystac -> ImportError
    with pytest.raises(MissingExtraError, match=r"tilecast\[card\]"):
        card_pkg.require_card_extra()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = CliRunner().invoke(main, ["card", path, "--bands", "a", "--tile", "8"])
    assert r.exit_code != 0 and "tilecast[card]" in r.output


def _expected(data):
    red, green, blue = data[2], data[1], data[0]
    return sum(w * (b.astype(np.float64) - 100) / 50 for w, b in zip(WEIGHTS, (red, green, blue), strict=True))


def test_xarray_bands_are_matched_by_long_name_not_the_band_coordinate(tmp_path):
    """rioxarray gives bands the coordinate 1, 2, 3 and their names in ``long_name``: the card matches the names
    (issue 17: it used the coordinate, so no band matched)."""
    rioxarray = pytest.importorskip("rioxarray")
    img, data = _scene(tmp_path)
    da = rioxarray.open_rasterio(img)
    assert list(da.band.values) == [1, 2, 3] and list(da.attrs["long_name"]) == ["blue", "green", "red"]
    with Model.load(_carded(tmp_path)) as m:
        got = m.predict_image(da).to_numpy()
    np.testing.assert_allclose(np.asarray(got).reshape(data.shape[1:]), _expected(data), rtol=1e-6)


def test_a_glob_gets_the_card_band_matching_and_gsd_check(tmp_path):
    """A glob string is a mosaic: the card's bands are matched by name (red, green, blue stored in reverse) and its
    GSD policy is checked against the files, as for one file (issue 17: both were skipped)."""
    _scene(tmp_path)
    pattern = str(tmp_path / "sc*.tif")
    with Model.load(_carded(tmp_path)) as m:
        got = m.predict_image(pattern).to_numpy()
    data = _scene(tmp_path)[1]
    np.testing.assert_allclose(np.asarray(got).reshape(data.shape[1:]), _expected(data), rtol=1e-6)
    with Model.load(_carded(tmp_path, resolution=(30.0, 30.0), gsd_tolerance=0.01)) as m, \
            pytest.raises(InputError, match="differs from the model's GSD"):
        m.predict_image(pattern)
