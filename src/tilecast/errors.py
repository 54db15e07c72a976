"""The one exception tree of tilecast.

Every error that tilecast raises on purpose is a :class:`TilecastError`. Each class also mixes in the builtin that
callers already catch, so ``except FileNotFoundError`` or ``except ValueError`` keep working::

    TilecastError
    ├── InputError (ValueError)                 the raster, region or bands given cannot be used
    │   ├── SourceNotFoundError (FileNotFoundError)
    │   ├── NotGeoreferencedError
    │   ├── UnknownCRSError
    │   ├── BandMismatchError                   bands do not match the model's inputs
    │   ├── RegionError                         bounds/window malformed, outside the raster, or empty
    │   ├── UnknownColormapError                a colormap name the map does not know
    │   └── SourceReadError (OSError)           a window of the input cannot be read (truncated, corrupt, gone)
    ├── ModelError                              the model or its parameters
    │   ├── ModelLoadError (OSError)            missing or corrupted model file
    │   ├── SpecError (ValueError)              contradictory or invalid Earth Engine parameters
    │   │   └── DetectorSpecError               an unknown det_type, or contradictory decoding parameters
    │   ├── TileSizeError (ValueError)          the model rejects the tile size
    │   ├── OutputShapeError (ValueError)       the model returned an unexpected shape or dtype
    │   │   └── DetectorOutputError             a detector's outputs do not decode under its det_type
    │   ├── EndpointError (ConnectionError)     a hosted model failed or could not be reached
    │   └── DeviceError (RuntimeError)          the device asked for is not here, or cannot run the model
    ├── OutputError                             the result cannot be written as asked
    │   ├── OutputExistsError (FileExistsError)
    │   ├── NodataError (ValueError)            nodata not representable in the output dtype
    │   ├── CastError (ValueError)              a value does not fit the output dtype
    │   ├── OutputIsInputError (ValueError)     the output is one of the files the prediction reads
    │   ├── OutputOptionError (ValueError)      an output option GDAL here cannot honour (--compress)
    │   └── VectorFormatError (ValueError)      not a vector format, or a raster-only option with one
    ├── PortInUseError (OSError)                the port to serve a map on is taken
    └── MissingExtraError (ImportError)         an optional dependency is not installed

    TilecastWarning (UserWarning)               it works, but probably not as meant

Messages name the problem and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
    "BandMismatchError",
    "CastError",
    "DetectorOutputError",
    "DetectorSpecError",
    "DeviceError",
    "EndpointError",
    "InputError",
    "MissingExtraError",
    "ModelError",
    "ModelLoadError",
    "NodataError",
    "NotGeoreferencedError",
    "OutputError",
    "OutputExistsError",
    "OutputIsInputError",
    "OutputOptionError",
    "OutputShapeError",
    "PortInUseError",
    "RegionError",
    "SourceNotFoundError",
    "SourceReadError",
    "SpecError",
    "TileSizeError",
    "TilecastError",
    "TilecastWarning",
    "UnknownCRSError",
    "UnknownColormapError",
    "VectorFormatError",
]


class TilecastError(Exception):
    """Root of every error tilecast raises on purpose."""

    resumable: bool = False
    """True when nothing in the run is wrong (a full disk, a stuck worker): a resumable run keeps its partial output
    for ``resume=True``, where a tilecast error would otherwise recur and the partial output is removed."""

    def __reduce__(self) -> tuple:
        # The mixed-in builtin's own reduction, but defined here: tblib, which Dask uses to send a task's error with
        # its traceback, takes a class without its own __reduce__ for a "custom __init__" one and rebuilds it with the
        # first __new__ in the MRO; ValueError.__new__ fails on the classes that also mix in OSError, and the client
        # got a bare Exception.
        return super().__reduce__()


class InputError(TilecastError, ValueError):
    """The input raster, its bands or the requested region cannot be used."""


class SourceNotFoundError(InputError, FileNotFoundError):
    """The input path or URL does not exist or cannot be opened."""


class NotGeoreferencedError(InputError):
    """The input has no CRS or no geotransform."""


class UnknownCRSError(InputError):
    """A CRS string that PROJ does not recognise."""


class BandMismatchError(InputError):
    """The raster's bands do not match what the model takes."""


class RegionError(InputError):
    """The requested bounds or window are malformed or do not overlap the raster."""


class ModelError(TilecastError):
    """The model, or the parameters that describe it."""


class ModelLoadError(ModelError, OSError):
    """The model file is missing, unreadable or corrupted."""


class SpecError(ModelError, ValueError):
    """Invalid or contradictory model parameters (tile size, overlap, output bands, layout)."""


class TileSizeError(ModelError, ValueError):
    """The model's signature does not accept the tile tilecast would send."""


class OutputShapeError(ModelError, ValueError):
    """The model returned a tensor whose shape or dtype does not fit the declared outputs."""


class OutputError(TilecastError):
    """The result cannot be written as asked."""


class OutputExistsError(OutputError, FileExistsError):
    """The output path exists and ``overwrite`` was not given."""


class NodataError(OutputError, ValueError):
    """The nodata value cannot be represented in the output dtype."""


class CastError(OutputError, ValueError):
    """A predicted value does not fit the declared output dtype."""


class OutputIsInputError(OutputError, ValueError):
    """The output path is one of the files the prediction reads (directly, or as a VRT, mosaic or STAC member)."""


class OutputOptionError(OutputError, ValueError):
    """An output option (such as the compression) that GDAL here cannot honour."""


class VectorFormatError(OutputError, ValueError):
    """The output's extension is not a vector format tilecast writes, or an option does not apply to it."""


class DetectorSpecError(SpecError):
    """The detector's decoding parameters (``det_type``, thresholds, class names) cannot be used."""


class DetectorOutputError(OutputShapeError):
    """The model's outputs do not decode under its ``det_type``; the message names the shape expected."""


class UnknownColormapError(InputError):
    """A colormap name that rio-tiler does not know."""


class PortInUseError(TilecastError, OSError):
    """The address a server should listen on is already in use."""


class MissingExtraError(TilecastError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class TilecastWarning(UserWarning):
    """Something works, but probably not as the user meant (e.g. a grid that differs from the model's)."""


class EndpointError(ModelError, ConnectionError):
    """A hosted model could not be reached, or answered with an error, after the retries."""


class SourceReadError(InputError, OSError):
    """GDAL failed reading a window of an input that opened fine: the file is truncated, corrupt or was replaced."""


class DeviceError(ModelError, RuntimeError):
    """The device asked for (a GPU, a GPU number) is not on this machine, or it cannot run the model as asked."""
