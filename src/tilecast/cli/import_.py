"""``tilecast import``: TFRecord predictions + the export's mixer -> a Cloud-Optimized GeoTIFF."""

from __future__ import annotations

import click

from .options import SIZE, csv_list, overwrite_option, quiet_option, reports_errors


@click.command("import", short_help="Import TFRecord predictions with a mixer as a COG.")
@click.argument("files", nargs=-1, required=True)
@click.option("--mixer", required=True, type=click.Path(dir_okay=False), help="The *-mixer.json of the export.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output GeoTIFF (COG).")
@click.option("--bands", help="Feature keys to import as bands, in order (default: all, sorted).")
@click.option("--dtype", help="Output dtype (default: int32 for int64_list features, else float32).")
@click.option("--nodata", type=float, help="Nodata value to record in the output.")
@click.option("--kernel", type=SIZE, help="The export's kernelSize W[,H], for patches that still carry its margin "
              "(default: the one the export recorded beside the mixer).")
@overwrite_option
@quiet_option
@reports_errors
def import_(files: tuple[str, ...], mixer: str, output: str, bands: str | None, dtype: str | None,
            nodata: float | None, kernel: tuple[int, int] | None, overwrite: bool, quiet: bool) -> None:
    """Assemble FILES (.tfrecord[.gz], one Example per exported patch, in export order across lexicographically
    sorted files) into a georeferenced COG. Patches may be cropped or still carry the kernel margin."""
    from ..export import import_predictions

    path = import_predictions(list(files), mixer, output, bands=csv_list(bands), dtype=dtype, nodata=nodata,
                              kernel=list(kernel) if kernel else None, overwrite=overwrite, progress=not quiet)
    if not quiet:
        click.echo(f"wrote {path}", err=True)
