"""Data: formats, synthetic scenes, reading with clear errors, transforms, calibration lists.

This package's top level imports no torch, so the device side (bench) can use it.
"""

from edgeseg.data.classes import ClassInfo
from edgeseg.data.sources import FORMATS, open_source

__all__ = ["FORMATS", "ClassInfo", "open_source"]
