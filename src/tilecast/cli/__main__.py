"""``python -m tilecast.cli``: the same as the ``tilecast`` command."""

from . import main

main(prog_name="tilecast")
