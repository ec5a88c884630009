"""Radiograph loading (CR, DX, MG, secondary capture).  Work in progress: issue 3."""

from __future__ import annotations

from pathlib import Path

from ..errors import UnsupportedImageError
from ..image import Image


def load_radiograph(path: str | Path, *, budget: int | None = None) -> Image:
    """Load a radiograph DICOM (not yet supported)."""
    raise UnsupportedImageError("radiograph loading is not available in this version", path=path)
