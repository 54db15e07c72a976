"""The ``tilecast`` command line. Each subcommand is a module; shared options live in :mod:`.options`."""

from __future__ import annotations

import click

from .. import __version__
from .card import card
from .export import export
from .import_ import import_
from .info import info
from .polygonize import polygonize
from .predict import predict
from .predict_features import predict_features
from .prepare import prepare
from .serve import serve
from .view import view


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="tilecast")
def main() -> None:
    """Apply trained models to georeferenced rasters, with Earth Engine's ee.Model semantics."""


main.add_command(predict)
main.add_command(info)
main.add_command(export)
main.add_command(import_)
main.add_command(predict_features)
main.add_command(serve)
main.add_command(card)
main.add_command(prepare)
main.add_command(view)
main.add_command(polygonize)
