"""The export functions users call: each plans its export, then hands the plan to the engine that runs it.

Planning (the patch grid, the sample draw, the output names) happens here, on the caller's machine, whatever the
engine; :class:`~tilecast.Local` writes the plan with this process's reads, :class:`~tilecast.Dask` with tasks
(:mod:`tilecast.export.dask`, :mod:`tilecast.export.dask_samples`). Both give the same examples in the same order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rasterio.windows import Window

from ..errors import InputError, OutputError
from ..plan import XY, xy
from ..runners.engine import Engine, Local, pop_engine_options, resolve_engine
from ..sources import open_source
from .common import ExportResult, progress_callback
from .image import ImageExportOptions, image_region, plan_image, write_image
from .reading import bounded_cache
from .samples import (
    SampleLabels,
    SampleOptions,
    check_table_output,
    finish_samples,
    select_samples,
    write_samples_local,
)
from .writers import SampleOutput, Writers

__all__ = ["export_image", "export_patches", "export_samples"]


def export_image(
    image: Any,
    output: str | os.PathLike,
    patch: int | Sequence[int],
    *,
    kernel: int | Sequence[int] = 1,
    prefix: str | None = None,
    bands: Sequence[str | int] | None = None,
    bounds: Sequence[float] | None = None,
    window: Window | None = None,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
    engine: Engine | str | None = None,
    **format_options: Any,
) -> ExportResult:
    """Export ``image`` (or ``bounds``/``window`` of it) as TFRecord patches with a mixer, into folder ``output``.

    ``bounds`` (left, bottom, right, top) are in the image's CRS (:func:`~tilecast.export.image.bounds_in_crs_of`
    converts them from another one, as ``--bounds-crs`` does).

    ``format_options`` are :class:`~tilecast.export.ImageExportOptions` fields (``compressed``, ``max_file_size``,
    ``default_value``, ``tensor_depths``, ``collapse_bands``, ``masked_threshold``, ``sequence_data``, ``arrays``).
    ``engine=tilecast.Dask(...)`` runs it on Dask (``chunk_rows`` sets the patch rows per task): the same examples
    in the same order.
    """
    chosen = resolve_engine(engine, legacy=pop_engine_options(format_options))
    opts = ImageExportOptions.create(patch, kernel_size=xy(kernel, "kernelSize"), **format_options)
    folder = Path(output)
    report = progress_callback(progress, "export image", "patches")
    if prefix is None:
        prefix = Path(str(image)).name.split(".")[0] if isinstance(image, (str, os.PathLike)) else "image"
    elif not prefix.strip() or any(sep in prefix for sep in "/\\") or prefix.strip(".") == "":
        raise OutputError(f"the prefix {prefix!r} is not a file name; give a name such as 'scene' (the folder is "
                          "the output)")
    with output_folder(folder):
        with bounded_cache():
            source = open_source(image, bands)
            try:
                region = image_region(source.grid, bounds, window)
                plan = plan_image(source, folder, opts, prefix, region, overwrite)
                if isinstance(chosen, Local):
                    return write_image(source, plan, report, overwrite)
                from ..runners.recipe import source_recipe

                recipe = source_recipe(source)
            finally:
                source.close()
        from .dask import write_image_dask

        return write_image_dask(plan, recipe, chosen, report)


@contextlib.contextmanager
def output_folder(folder: Path) -> Iterator[None]:
    """:func:`make_folder`, removed again (when still empty) if the export fails: a typo in ``-o`` or an export
    refused before it wrote anything leaves no stray folder."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    make_folder(folder)
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            for path in created:
                path.rmdir()
        raise


def make_folder(folder: Path) -> None:
    """Create the output folder (and its parents), as the command line does; a file in the way is an error."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"the output {folder} is a file, not a folder; give a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {folder} ({exc.strerror}); choose a folder you can "
                          "write to") from None


def export_samples(
    image: Any,
    output: str | os.PathLike,
    *,
    labels: Any = None,
    label_field: str | None = None,
    label_raster: Any = None,
    bands: Sequence[str | int] | None = None,
    patch: int | Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
    engine: Engine | str | None = None,
    sampling: SampleOptions | None = None,
    **options: Any,
) -> ExportResult:
    """Export band values at labelled pixels (``patch=None``) or ``patch``-sized neighbourhoods around them.

    Labels are a vector file/GeoDataFrame (points, or polygons whose every pixel is a candidate) with
    ``label_field``, or a ``label_raster`` (every valid pixel; ``label_name`` names its feature). ``output`` is a
    file (``.tfrecord.gz``, ``.parquet``, ``.csv``) or a folder of shards.

    ``options`` (or ``sampling``, a :class:`~tilecast.export.samples.SampleOptions`) are: ``n``/``per_class``/``seed``
    pick a reproducible random or stratified subset; ``splits={"train": .8, "test": .2}`` assigns whole
    ``split_block``-pixel blocks to each split (``stratify_splits=True`` deals the blocks out so every class is
    split in proportion too); ``geometries=True`` adds each sample pixel centre's ``x``/``y`` in the image's CRS
    (Earth Engine's ``geometries``); ``properties``, ``default_value``, ``drop_masked``, ``drop_outside``,
    ``file_format``, ``compressed``, ``max_file_size`` and ``chunk``.

    ``engine=tilecast.Dask(...)`` writes on Dask (``samples_per_task`` sizes the tasks; see
    :mod:`tilecast.export.dask_samples`): the same examples in the same order.
    """
    chosen = resolve_engine(engine, legacy=pop_engine_options(options))
    opts = SampleOptions.create(sampling, **options)
    p = XY(1, 1) if patch is None else xy(patch, "patch")
    if min(p) <= 0:
        raise InputError(f"the patch size must be > 0, got {tuple(p)}")
    table = p == (1, 1)
    out = SampleOutput.create(output, opts.file_format, opts.compressed, opts.max_file_size,
                              list(opts.splits) if opts.splits else None, table)
    if out.fmt != "tfrecord" and not table:
        raise OutputError(f"patches can only be exported as TFRecord, not {out.fmt}; use a .tfrecord.gz file or a "
                          "folder")
    check_table_output(opts, out.fmt)
    found = SampleLabels(labels, label_field, label_raster)
    found.check(opts)
    report = progress_callback(progress, "export samples" if table else "export patches",
                               "samples" if table else "patches")
    with output_folder(out.folder), bounded_cache():
        source = open_source(image, bands)
        try:
            samples, plan = select_samples(source, found, p, opts, out)
            if isinstance(chosen, Local):
                written = write_samples_local(source, plan, samples, overwrite, report)
            else:
                from ..runners.recipe import source_recipe
                from .dask_samples import write_samples_dask

                writers = Writers(out, overwrite)  # checks the names; tasks write, the client publishes
                writers.abort()
                written = write_samples_dask(source_recipe(source), plan, samples, writers, chosen, report)
            return finish_samples(source, plan, opts.seed, written)
        finally:
            source.close()


def export_patches(image: Any, output: str | os.PathLike, patch: int | Sequence[int], **kwargs: Any) -> ExportResult:
    """``neighborhoodToArray`` patches around labelled pixels, as TFRecord; see :func:`export_samples`."""
    return export_samples(image, output, patch=patch, **kwargs)
