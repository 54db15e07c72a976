"""Sinks: where finished output blocks go. Each implements :class:`~tilecast.sinks.base.Sink`."""

from .base import OutputProfile, Sink
from .geotiff import GeoTIFFSink, check_output_path
from .memory import ArraySink

__all__ = ["ArraySink", "GeoTIFFSink", "OutputProfile", "Sink", "check_output_path"]
