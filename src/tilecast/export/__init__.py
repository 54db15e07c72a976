"""Training-data exports in Earth Engine's TFRecord layout, and the import of predictions made from them.

- :func:`export_samples` / :func:`export_patches`: band values or ``neighborhoodToArray`` patches at labelled
  pixels (Earth Engine's table export of ``sample``/``sampleRegions``), as TFRecord, Parquet or CSV.
- :func:`export_image`: the whole image as ``patchDimensions`` tiles with a ``kernelSize`` margin, plus the mixer.
- :func:`import_predictions`: TFRecord predictions + mixer -> a Cloud-Optimized GeoTIFF.

Each export plans its work first (:class:`~tilecast.export.image.ImagePlan`, or the selected samples and a
:class:`~tilecast.export.samples.SamplePlan`), then the engine (``engine=tilecast.Local()`` or
``tilecast.Dask(...)``) writes it.
"""

from .api import export_image, export_patches, export_samples
from .common import ExportResult
from .image import ImageExportOptions
from .importer import import_predictions, read_mixer
from .samples import SampleOptions

__all__ = [
    "ExportResult",
    "ImageExportOptions",
    "SampleOptions",
    "export_image",
    "export_patches",
    "export_samples",
    "import_predictions",
    "read_mixer",
]
