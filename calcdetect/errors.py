"""The calcdetect error hierarchy.

Every error calcdetect raises on purpose derives from :class:`CalcdetectError`, so a
script can catch one type.  Each message is a single line that names the file (when
there is one), the reason, and what to do about it; the CLI prints it as is.
"""

from __future__ import annotations

from pathlib import Path


class CalcdetectError(Exception):
    """Base class of all calcdetect errors.

    Parameters
    ----------
    reason : str
        What went wrong, in one line.
    path : str or Path, optional
        The file or folder concerned.
    fix : str, optional
        What the user can do about it.
    """

    exit_code = 1

    def __init__(self, reason: str, *, path: str | Path | None = None, fix: str | None = None):
        self.reason = " ".join(str(reason).split())
        self.path = str(path) if path is not None else None
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The one-line message: ``path: reason (fix)``."""
        text = self.reason
        if self.path:
            text = f"{self.path}: {text}"
        if self.fix:
            text = f"{text} -- {self.fix}"
        return text

    def __reduce__(self):  # keep picklable across process pools
        return (_rebuild, (type(self), self.reason, self.path, self.fix))


def _rebuild(cls, reason, path, fix):
    return cls(reason, path=path, fix=fix)


class UnreadableFileError(CalcdetectError):
    """The file is missing, empty, truncated or not in a format calcdetect reads."""


class UnsupportedImageError(CalcdetectError):
    """The file is readable but holds no image calcdetect can analyse (an RT plan, an SR,
    a modality that is not CT, radiograph or ultrasound, an unsupported pixel layout)."""


class MissingDecoderError(CalcdetectError):
    """The pixel data is compressed with a transfer syntax whose decoder is not installed."""


class InconsistentSeriesError(CalcdetectError):
    """A folder holds several series, or slices that cannot form one volume."""


class NoSpacingError(CalcdetectError):
    """A physical pixel size is required but the image does not carry a usable one."""


class PixelBudgetError(CalcdetectError):
    """The image claims more pixels than the configured budget allows."""


class InvalidParameterError(CalcdetectError, ValueError):
    """An option passed by the user is out of range or of the wrong kind."""
    exit_code = 2
