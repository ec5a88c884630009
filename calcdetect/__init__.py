"""calcdetect: find, measure and map soft-tissue calcifications on CT, radiographs and
ultrasound.

>>> import calcdetect
>>> image = calcdetect.load("series_folder/")        # doctest: +SKIP
>>> report = calcdetect.detect(image)                # doctest: +SKIP
>>> report.count, report.to_json()                   # doctest: +SKIP
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CalcdetectError,
    InconsistentSeriesError,
    InvalidParameterError,
    MissingDecoderError,
    NoSpacingError,
    PixelBudgetError,
    UnreadableFileError,
    UnsupportedImageError,
)
from .image import Image  # noqa: E402
from .io import load  # noqa: E402
from .report import Finding, Report  # noqa: E402
from .detect import detect  # noqa: E402

__all__ = [
    "__version__",
    "load",
    "detect",
    "Image",
    "Report",
    "Finding",
    "CalcdetectError",
    "UnreadableFileError",
    "UnsupportedImageError",
    "MissingDecoderError",
    "InconsistentSeriesError",
    "NoSpacingError",
    "PixelBudgetError",
    "InvalidParameterError",
]
