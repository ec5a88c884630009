"""``detect(image, **options) -> Report``: dispatch to the modality's detector.

Each modality has its own module (``ct``, ``xray``, ``ultrasound``) producing candidate
masks; all of them share :mod:`calcdetect.measure` for labelling and measurement and
:mod:`calcdetect.report` for the output contract.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidParameterError
from ..image import Image
from ..report import Report

__all__ = ["detect"]


def detect(image: Image, **options: Any) -> Report:
    """Find calcifications in an image.

    Parameters
    ----------
    image : Image
        From :func:`calcdetect.load` or built from an array.
    **options
        Detector options of the image's modality: see
        :func:`calcdetect.detect.ct.detect_ct`, :func:`calcdetect.detect.xray.detect_xray`
        and :func:`calcdetect.detect.ultrasound.detect_ultrasound`.

    Returns
    -------
    Report
    """
    if not isinstance(image, Image):
        raise InvalidParameterError(
            f"detect() takes a calcdetect.Image, got {type(image).__name__}",
            fix="use calcdetect.load(path) or calcdetect.Image(pixels, spacing_mm, modality)",
        )
    if image.valid_mask is not None and not image.valid_mask.any():
        from ..errors import UnsupportedImageError

        raise UnsupportedImageError(
            "holds no usable pixel (every value is NaN, infinite or outside the image region)",
            path=image.source, fix="check the export; nothing can be measured in it",
        )
    if image.modality == "CT":
        from .ct import detect_ct

        func = detect_ct
    elif image.modality == "XRAY":
        from .xray import detect_xray

        func = detect_xray
    else:
        from .ultrasound import detect_ultrasound

        func = detect_ultrasound
    try:
        return func(image, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise InvalidParameterError(f"{image.modality} detection: {exc}") from None
        raise
