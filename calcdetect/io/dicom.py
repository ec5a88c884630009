"""Reading DICOM files safely: headers, decoders, pixel budgets and clear errors.

All DICOM parsing goes through pydicom; compressed pixel data goes through pydicom's
pixel backends (pylibjpeg, pillow, gdcm).  This module turns everything that can go
wrong into a :class:`~calcdetect.errors.CalcdetectError` whose one-line message names the
file, the reason and the fix (for a missing codec: the extra to install).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import (
    MissingDecoderError,
    PixelBudgetError,
    UnreadableFileError,
    UnsupportedImageError,
)

#: Default largest number of pixels (frames x rows x columns x samples) calcdetect will
#: allocate for one file or series.  Override with the environment variable
#: ``CALCDETECT_MAX_PIXELS`` or the ``max_pixels=`` argument of the loaders.
DEFAULT_MAX_PIXELS = 1_500_000_000

RADIOGRAPH_MODALITIES = ("CR", "DX", "MG", "RG", "RF", "IO", "PX", "XA")

# transfer syntax UID -> the install hint when its decoder is missing
_J2K = "pip install 'calcdetect[decoders]' (pylibjpeg + openjpeg, MIT) or 'calcdetect[gdcm]'"
_JPEG = "pip install 'calcdetect[jpeg-gpl]' (pylibjpeg-libjpeg, GPL-3.0) or 'calcdetect[gdcm]'"
_JLS = "pip install pyjpegls or 'calcdetect[gdcm]'"
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.90": _J2K,
    "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": _J2K,
    "1.2.840.10008.1.2.4.202": _J2K,
    "1.2.840.10008.1.2.4.203": _J2K,
    "1.2.840.10008.1.2.4.50": _JPEG,
    "1.2.840.10008.1.2.4.51": _JPEG,
    "1.2.840.10008.1.2.4.57": _JPEG,
    "1.2.840.10008.1.2.4.70": _JPEG,
    "1.2.840.10008.1.2.4.80": _JLS,
    "1.2.840.10008.1.2.4.81": _JLS,
}


def max_pixels(override: int | None = None) -> int:
    """The pixel budget in force (argument, else ``CALCDETECT_MAX_PIXELS``, else default)."""
    if override is not None:
        return int(override)
    env = os.environ.get("CALCDETECT_MAX_PIXELS")
    if env:
        try:
            return int(float(env))
        except ValueError:
            pass
    return DEFAULT_MAX_PIXELS


def is_dicom_file(path: str | Path) -> bool:
    """True when the file starts with a DICOM preamble and the ``DICM`` prefix."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_header(path: str | Path, *, stop_before_pixels: bool = True, touch_values: bool = True) -> Dataset:
    """Read a DICOM file (by default without its pixel data).

    With ``touch_values=False`` element values are converted lazily, on first access
    (three times faster; for scanning large series, whose caller touches what it uses).

    Raises
    ------
    UnreadableFileError
        Missing, empty, not DICOM, or damaged beyond parsing.
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError("no such file", path=path, fix="check the path")
    if path.is_dir():
        raise UnreadableFileError("is a folder, not a file", path=path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnreadableFileError(f"cannot be opened ({exc.strerror})", path=path) from exc
    if size == 0:
        raise UnreadableFileError("is empty (0 bytes)", path=path, fix="re-export or re-transfer it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                # no preamble: old ACR-NEMA style files are still valid datasets
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
                if "SOPClassUID" not in ds and "Rows" not in ds and "Modality" not in ds:
                    raise UnreadableFileError(
                        "is not a DICOM file (no DICM prefix, no image tags)",
                        path=path,
                        fix="give a DICOM, PNG, JPEG or TIFF file",
                    ) from None
            # touch the elements now, so lazy-parse errors surface here and not later
            if touch_values:
                for elem in ds:
                    _ = elem.value
    except UnreadableFileError:
        raise
    except (EOFError, OSError, ValueError, KeyError, TypeError, IndexError, OverflowError,
            AttributeError, NotImplementedError, RuntimeError, MemoryError, UnicodeError,
            InvalidDicomError) as exc:
        raise UnreadableFileError(
            f"DICOM header is damaged or truncated ({type(exc).__name__}: {_first_line(exc)})",
            path=path,
            fix="re-export or re-transfer the file",
        ) from exc
    return ds


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def sop_class_name(ds: Dataset) -> str:
    """Human name of the dataset's SOP class (or its UID, or 'unknown')."""
    uid = ds.get("SOPClassUID")
    if uid is None:
        return "unknown SOP class"
    try:
        name = uid.name
    except AttributeError:  # pragma: no cover
        name = str(uid)
    return str(name)


def transfer_syntax(ds: Dataset) -> pydicom.uid.UID | None:
    """The dataset's transfer syntax UID, if recorded."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return None
    return meta.get("TransferSyntaxUID")


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames as an int (1 when absent or unparsable)."""
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def check_pixels_present(ds: Dataset, path: str | Path) -> None:
    """Raise :class:`UnsupportedImageError` when the dataset holds no image pixels."""
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise UnsupportedImageError(
            f"holds no pixel data ({sop_class_name(ds)}, modality {ds.get('Modality', 'unknown')})",
            path=path,
            fix="give an image DICOM (CT, CR/DX/MG radiograph or US)",
        )
    for tag in ("Rows", "Columns"):
        try:
            value = int(ds.get(tag) or 0)
        except (TypeError, ValueError):
            value = 0
        if value <= 0:
            raise UnreadableFileError(
                f"{tag} is missing or zero, so the pixel data cannot be read",
                path=path,
                fix="re-export the file",
            )


def check_budget(n_pixels: int, path: str | Path, budget: int | None = None) -> None:
    """Refuse to allocate images above the pixel budget (before decoding)."""
    limit = max_pixels(budget)
    if n_pixels > limit:
        raise PixelBudgetError(
            f"claims {n_pixels:,} pixels, above the budget of {limit:,}",
            path=path,
            fix="raise CALCDETECT_MAX_PIXELS if the image is genuine",
        )


def claimed_pixels(ds: Dataset) -> int:
    """Pixels the header claims: frames x rows x columns x samples."""
    try:
        rows = int(ds.get("Rows") or 0)
        cols = int(ds.get("Columns") or 0)
        spp = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError):
        return 0
    return number_of_frames(ds) * rows * cols * max(spp, 1)


def check_decoder(ds: Dataset, path: str | Path) -> None:
    """Raise :class:`MissingDecoderError` when the transfer syntax cannot be decoded here."""
    ts = transfer_syntax(ds)
    if ts is None:
        return
    try:
        from pydicom.pixels.decoders.base import get_decoder

        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnsupportedImageError(
            f"transfer syntax {ts} ({getattr(ts, 'name', ts)}) has no pixel decoder in pydicom",
            path=path,
            fix="convert the file to an uncompressed or JPEG 2000 transfer syntax",
        ) from None
    except Exception:  # unknown UID strings and the like: leave it to decoding
        return
    if not decoder.is_available:
        hint = _DECODER_HINTS.get(str(ts), "install a pydicom pixel decoder for it (pylibjpeg or gdcm)")
        raise MissingDecoderError(
            f"pixel data is compressed as {getattr(ts, 'name', ts)} and no decoder is installed",
            path=path,
            fix=hint,
        )


def read_dataset(path: str | Path, *, budget: int | None = None) -> Dataset:
    """Read a whole DICOM image file after checking pixels, budget and decoder."""
    ds = read_header(path, stop_before_pixels=False)
    check_pixels_present(ds, path)
    check_budget(claimed_pixels(ds), path, budget)
    check_decoder(ds, path)
    return ds


def decode_pixels(
    ds: Dataset, path: str | Path, *, frame: int | None = None, as_rgb: bool = False
) -> np.ndarray:
    """Decode the pixel data (all frames, or one frame index) into an array.

    Stored values are returned without rescale or VOI (the caller applies rescale and
    photometric handling).  With ``as_rgb`` YBR colour data is converted to RGB;
    otherwise samples are returned as stored.

    Raises
    ------
    MissingDecoderError, UnreadableFileError
        With a one-line reason (truncated data, decoder failure).
    """
    check_decoder(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = _decode_via_dataset(ds, frame, raw=not as_rgb)
    except MemoryError as exc:
        raise UnreadableFileError("pixel data too large to decode in memory", path=path) from exc
    except (ValueError, RuntimeError, NotImplementedError, OSError, EOFError, KeyError,
            TypeError, IndexError, AttributeError, OverflowError, ZeroDivisionError) as exc:
        msg = _first_line(exc)
        if "length" in msg.lower() or "truncat" in msg.lower() or "missing" in msg.lower():
            reason = f"pixel data is truncated or does not match Rows/Columns ({msg})"
        else:
            reason = f"pixel data cannot be decoded ({type(exc).__name__}: {msg})"
        raise UnreadableFileError(reason, path=path, fix="re-export or re-transfer the file") from exc
    return arr


def _decode_via_dataset(ds: Dataset, frame: int | None, *, raw: bool) -> np.ndarray:
    """Decode with pydicom's pixel backends (handles file meta and every plugin)."""
    from pydicom.pixels import pixel_array

    if frame is None:
        return pixel_array(ds, raw=raw)
    return pixel_array(ds, index=frame, raw=raw)


def dicom_value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """A header value as plain Python (lists for multi-valued), or ``default``."""
    try:
        value = ds.get(keyword, default)
    except Exception:  # damaged element
        return default
    if value is None:
        return default
    if isinstance(value, pydicom.multival.MultiValue):
        return [_plain(v) for v in value]
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (pydicom.valuerep.DSfloat, pydicom.valuerep.DSdecimal)):
        return float(value)
    if isinstance(value, pydicom.valuerep.IS):
        return int(value)
    if isinstance(value, (str, int, float)):
        return value if not isinstance(value, str) else str(value)
    if isinstance(value, bytes):
        return None
    return str(value)


def float_list(ds: Dataset, keyword: str, n: int) -> list[float] | None:
    """A numeric multi-value of exactly ``n`` finite numbers, else ``None``."""
    value = dicom_value(ds, keyword)
    if value is None:
        return None
    if not isinstance(value, list):
        value = [value]
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(np.isfinite(values)):
        return None
    return values


def positive_spacing(values: list[float] | None) -> list[float] | None:
    """``values`` when every entry is a positive finite number (zero spacing is no spacing)."""
    if values is None:
        return None
    if all(np.isfinite(v) and v > 0 for v in values):
        return values
    return None


def basic_metadata(ds: Dataset) -> dict[str, Any]:
    """Non-identifying header fields worth carrying into reports and DICOM outputs."""
    keys = (
        "Modality", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
        "FrameOfReferenceUID", "SeriesDescription", "BodyPartExamined", "Manufacturer",
        "ManufacturerModelName", "PhotometricInterpretation", "BitsStored", "PixelRepresentation",
        "ImageLaterality", "Laterality", "ViewPosition", "PatientOrientation", "PatientPosition",
        "ContrastBolusAgent", "ContrastBolusRoute", "SliceThickness", "KVP", "ConvolutionKernel",
    )
    meta: dict[str, Any] = {}
    for key in keys:
        value = dicom_value(ds, key)
        if value not in (None, ""):
            meta[key] = value
    ts = transfer_syntax(ds)
    if ts is not None:
        meta["TransferSyntaxUID"] = str(ts)
    return meta
