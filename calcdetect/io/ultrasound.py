"""Ultrasound loading.  Work in progress: issue 4."""

from __future__ import annotations

from pathlib import Path

from ..errors import UnsupportedImageError
from ..image import Image


def load_ultrasound(path: str | Path, *, frame=None, budget: int | None = None) -> Image:
    """Load an ultrasound DICOM (not yet supported)."""
    raise UnsupportedImageError("ultrasound loading is not available in this version", path=path)
