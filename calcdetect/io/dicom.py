"""Reading DICOM files safely: headers, decoders, pixel budgets and clear errors.

All DICOM parsing goes through pydicom; compressed pixel data goes through pydicom's
pixel backends (pylibjpeg, pillow, gdcm).  This module turns everything that can go
wrong into a :class:`~calcdetect.errors.CalcdetectError` whose one-line message names the
file, the reason and the fix (for a missing codec: the extra to install).
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import (
    CalcdetectError,
    InvalidParameterError,
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
_JLS = "pip install 'calcdetect[decoders]' (pyjpegls) or 'calcdetect[gdcm]'"
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
    """The pixel budget in force (argument, else ``CALCDETECT_MAX_PIXELS``, else default).

    Parameters
    ----------
    override : int, optional
        The ``max_pixels=`` argument of a loader.

    Returns
    -------
    int

    Raises
    ------
    InvalidParameterError
        When ``CALCDETECT_MAX_PIXELS`` is not a positive number (a typo must not silently
        fall back to the default, nor ``inf`` crash).
    """
    if override is not None:
        return int(override)
    env = os.environ.get("CALCDETECT_MAX_PIXELS")
    if env and env.strip():
        try:
            value = float(env)
        except ValueError:
            value = float("nan")
        if not (value >= 1):  # NaN, zero, negative
            raise InvalidParameterError(
                f"CALCDETECT_MAX_PIXELS={env!r} is not a positive pixel count",
                fix="set it to a number such as 2e9, or unset it for the default 1.5e9",
            )
        return int(min(value, 2**62))  # "inf": no practical limit
    return DEFAULT_MAX_PIXELS


def is_dicom_file(path: str | Path) -> bool:
    """True when the file starts with a DICOM preamble and the ``DICM`` prefix.

    Only the first 132 bytes are read; old ACR-NEMA style files without a preamble
    (which :func:`read_header` still accepts) give ``False``.

    Parameters
    ----------
    path : str or Path
        The file to test.

    Returns
    -------
    bool
        ``True`` when bytes 128-131 are ``b"DICM"``; ``False`` for shorter files and
        for files that cannot be opened.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


DEFLATED_TS = "1.2.840.10008.1.2.1.99"


def inflated_size_limit(compressed: int, budget: int | None = None) -> int:
    """Largest size (bytes) a deflated data set may inflate to: twice the pixel budget,
    and no more than 64 MiB plus 100 times the compressed size (real data deflates a
    few times; a "deflate bomb" inflates a thousand times).

    Parameters
    ----------
    compressed : int
        Size of the deflated data set in bytes (the file after its file meta
        information).
    budget : int, optional
        Pixel budget (see :func:`max_pixels`); ``None`` for the budget in force.

    Returns
    -------
    int
        The limit in bytes.

    Raises
    ------
    InvalidParameterError
        When ``budget`` is ``None`` and ``CALCDETECT_MAX_PIXELS`` is invalid
        (see :func:`max_pixels`).
    """
    return int(min(2 * max_pixels(budget), 64 * 2**20 + 100 * compressed))


def check_deflate(path: Path, budget: int | None = None) -> None:
    """Refuse a Deflated Explicit VR Little Endian file that inflates beyond
    :func:`inflated_size_limit`, counting the inflated bytes in bounded memory before
    pydicom inflates the whole data set at once.

    Files of any other transfer syntax, files whose file meta information cannot be
    read and damaged deflate streams are passed over silently (``pydicom.dcmread``
    reports those).

    Parameters
    ----------
    path : Path
        The file to check (opened and read; its size comes from ``path.stat()``).
    budget : int, optional
        Pixel budget (see :func:`max_pixels`); ``None`` for the budget in force.

    Raises
    ------
    PixelBudgetError
        When the data set inflates to more than :func:`inflated_size_limit` bytes.
    InvalidParameterError
        When ``CALCDETECT_MAX_PIXELS`` is invalid (see :func:`max_pixels`) and the file
        is deflated.
    OSError
        When the file cannot be opened or read (:func:`read_header` checks this first).
    """
    import zlib

    with open(path, "rb") as fh:
        head = fh.read(4096)
        if DEFLATED_TS.encode() not in head:
            return
        try:
            from pydicom.filereader import _read_file_meta_info, read_preamble

            fh.seek(0)
            read_preamble(fh, False)
            meta = _read_file_meta_info(fh)
        except Exception:  # noqa: BLE001 - a damaged file meta is reported by dcmread
            return
        if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_TS:
            return
        start = fh.tell()
        size = path.stat().st_size - start
        limit = inflated_size_limit(size, budget)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        try:
            while chunk := fh.read(1 << 20):
                while chunk:
                    total += len(inflater.decompress(chunk, 1 << 20))
                    chunk = inflater.unconsumed_tail
                    if total > limit:
                        raise PixelBudgetError(
                            f"deflated data set inflates to more than {limit:,} bytes "
                            f"from {size:,} (a decompression bomb?)",
                            path=path,
                            fix="raise CALCDETECT_MAX_PIXELS if the file is genuine",
                        )
        except zlib.error:
            return  # damaged stream: dcmread reports it


def read_header(path: str | Path, *, stop_before_pixels: bool = True,
                budget: int | None = None, touch_values: bool = True) -> Dataset:
    """Read a DICOM file (by default without its pixel data).

    Parameters
    ----------
    path : str or Path
        The DICOM file.  Files without the 128-byte preamble and ``DICM`` prefix are
        accepted when they hold SOPClassUID, Rows or Modality (ACR-NEMA style).
    stop_before_pixels : bool
        Skip the pixel data (faster; enough for routing and series grouping).
    budget : int, optional
        Pixel budget (see :func:`max_pixels`); bounds how far a deflated data set may
        inflate.
    touch_values : bool
        Convert every element now so damaged values fail here (default).  ``False``
        converts lazily, on first access (three times faster; for scanning large series,
        whose caller touches what it uses).

    Returns
    -------
    pydicom.dataset.Dataset
        The data set, with its ``file_meta`` when the file has one.

    Raises
    ------
    UnreadableFileError
        Missing, a folder, not a regular file, empty, not DICOM, damaged beyond parsing,
        or holding no data set after its file meta information.
    PixelBudgetError
        A deflated data set that inflates beyond :func:`inflated_size_limit`.
    InvalidParameterError
        ``CALCDETECT_MAX_PIXELS`` is invalid and the file is deflated (see
        :func:`max_pixels`).
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError("no such file", path=path, fix="check the path")
    if path.is_dir():
        raise UnreadableFileError("is a folder, not a file", path=path)
    if not path.is_file():  # reading a pipe or a device would block or never end
        raise UnreadableFileError("is not a regular file (a pipe, socket or device)", path=path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnreadableFileError(f"cannot be opened ({exc.strerror})", path=path) from exc
    if size == 0:
        raise UnreadableFileError("is empty (0 bytes)", path=path, fix="re-export or re-transfer it")
    # No warnings.catch_warnings() here: it is not thread-safe (series headers are read
    # in a thread pool) and a library must not change the caller's warning filters.
    # The CLI decides what to show.
    try:
        check_deflate(path, budget)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            # no preamble: old ACR-NEMA style files are still valid datasets
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in ds and "Rows" not in ds and "Modality" not in ds:
                raise UnreadableFileError(
                    "is not a DICOM file (no DICM prefix, no image tags)",
                    path=path,
                    fix="give a DICOM, PNG, JPEG, TIFF or BMP file",
                ) from None
        # convert every element now (nested sequences too), so damaged values fail
        # here, with a clear message, and not deep inside a loader or detector
        if touch_values:
            _touch(ds)
    except CalcdetectError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure means a damaged file
        raise UnreadableFileError(
            f"DICOM header is damaged or truncated ({type(exc).__name__}: {_first_line(exc)})",
            path=path,
            fix="re-export or re-transfer the file",
        ) from exc
    if len(ds) == 0:
        raise UnreadableFileError(
            "holds no readable DICOM data set after its file meta information (truncated or damaged)",
            path=path,
            fix="re-export or re-transfer the file",
        )
    return ds


def _touch(ds: Dataset, depth: int = 0) -> None:
    """Convert every raw element of ``ds`` and its sequences (lazy parsing otherwise
    defers errors to the first access)."""
    if depth > 32:
        raise ValueError("sequences are nested more than 32 levels deep")
    for elem in ds:
        value = elem.value
        if elem.VR == "SQ" and value is not None:
            for item in value:
                _touch(item, depth + 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if len(line) > 160:  # cut at a word, and say so, rather than mid-word ("... or the )")
        line = line[:160].rsplit(" ", 1)[0].rstrip(" ,;:-") + " ..."
    return line


def sop_class_name(ds: Dataset) -> str:
    """Human name of the dataset's SOP class (or its UID, or 'unknown').

    Parameters
    ----------
    ds : pydicom.dataset.Dataset

    Returns
    -------
    str
        The SOP class name pydicom knows (e.g. ``"CT Image Storage"``), the UID itself
        for a UID pydicom does not know, or ``"unknown SOP class"`` when SOPClassUID is
        absent or empty.
    """
    uid = ds.get("SOPClassUID")
    if not uid:
        return "unknown SOP class"
    try:
        name = uid.name
    except AttributeError:  # pragma: no cover
        name = str(uid)
    return str(name)


def transfer_syntax(ds: Dataset) -> pydicom.uid.UID | None:
    """The dataset's transfer syntax UID, if recorded.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset

    Returns
    -------
    pydicom.uid.UID or None
        ``file_meta.TransferSyntaxUID``; ``None`` without file meta information or
        without that element.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return None
    return meta.get("TransferSyntaxUID")


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames as an int (1 when absent or unparsable).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset

    Returns
    -------
    int
        At least 1 (zero, negative, empty and non-numeric values give 1).
    """
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def check_pixels_present(ds: Dataset, path: str | Path) -> None:
    """Refuse a dataset that holds no image pixels (before decoding).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A data set read with its pixel data (``stop_before_pixels=False``).
    path : str or Path
        The file, named in the error message.

    Raises
    ------
    UnreadableFileError
        When the dataset looks like an image (Rows and Columns, or an "Image Storage" SOP
        class) but has no PixelData / FloatPixelData / DoubleFloatPixelData (a file
        truncated before its pixels), or when Rows or Columns is missing, zero or not a
        number.
    UnsupportedImageError
        When the dataset is not an image at all (e.g. a structured report).
    """
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if ("Rows" in ds and "Columns" in ds) or "Image Storage" in sop_class_name(ds):
            raise UnreadableFileError(
                f"is an image ({sop_class_name(ds)}) but holds no pixel data: the file is "
                "truncated or damaged before its pixel data",
                path=path,
                fix="re-export or re-transfer the file",
            )
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
    """Refuse to allocate images above the pixel budget (before decoding).

    Parameters
    ----------
    n_pixels : int
        Pixels about to be allocated (e.g. :func:`claimed_pixels`, or its sum over a
        series).
    path : str or Path
        The file or folder, named in the error message.
    budget : int, optional
        Pixel budget (see :func:`max_pixels`); ``None`` for the budget in force.

    Raises
    ------
    PixelBudgetError
        When ``n_pixels`` is above the budget (equal is allowed).
    InvalidParameterError
        When ``budget`` is ``None`` and ``CALCDETECT_MAX_PIXELS`` is invalid.
    """
    limit = max_pixels(budget)
    if n_pixels > limit:
        raise PixelBudgetError(
            f"claims {n_pixels:,} pixels, above the budget of {limit:,}",
            path=path,
            fix="raise CALCDETECT_MAX_PIXELS if the image is genuine",
        )


def claimed_pixels(ds: Dataset) -> int:
    """Pixels the header claims: frames x rows x columns x samples.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset

    Returns
    -------
    int
        ``NumberOfFrames * Rows * Columns * SamplesPerPixel`` (frames and samples count
        at least 1, a SamplesPerPixel that is not a number too, so that a damaged
        value never lowers the count; absent Rows or Columns count 0).  0 when Rows or
        Columns is not a number.
    """
    try:
        rows = int(ds.get("Rows") or 0)
        cols = int(ds.get("Columns") or 0)
    except (TypeError, ValueError):
        return 0
    try:
        spp = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError):
        spp = 1
    return number_of_frames(ds) * rows * cols * max(spp, 1)


def check_decoder(ds: Dataset, path: str | Path) -> None:
    """Refuse, before decoding, pixel data whose transfer syntax cannot be decoded here.

    Datasets without a recorded transfer syntax, and UIDs pydicom does not recognise,
    pass (decoding then reports any problem).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
    path : str or Path
        The file, named in the error message.

    Raises
    ------
    MissingDecoderError
        When pydicom supports the transfer syntax but no decoder plugin for it is
        installed; the fix names the extra to install.
    UnsupportedImageError
        When pydicom has no pixel decoder for the transfer syntax at all.
    """
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
    """Read a whole DICOM image file after checking pixels, budget and decoder.

    The pixels are not decoded here (see :func:`decode_pixels`).

    Parameters
    ----------
    path : str or Path
        The DICOM file.
    budget : int, optional
        Pixel budget (see :func:`max_pixels`).

    Returns
    -------
    pydicom.dataset.Dataset
        The data set including its (still encoded) pixel data.

    Raises
    ------
    UnreadableFileError, PixelBudgetError, InvalidParameterError
        As for :func:`read_header` and :func:`check_budget`.
    UnsupportedImageError
        No pixel data (:func:`check_pixels_present`) or no pydicom decoder for the
        transfer syntax (:func:`check_decoder`).
    MissingDecoderError
        The decoder for the transfer syntax is not installed.
    """
    ds = read_header(path, stop_before_pixels=False, budget=budget)
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

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A data set read with its pixel data (e.g. by :func:`read_dataset`).
    path : str or Path
        The file, named in error messages.
    frame : int, optional
        0-based index of the one frame to decode; ``None`` decodes all frames.
    as_rgb : bool
        Convert YBR colour samples to RGB.

    Returns
    -------
    numpy.ndarray
        As pydicom's ``pixel_array`` gives it: ``(rows, columns)`` for one frame of one
        sample, ``(frames, rows, columns)`` for several frames, with a trailing samples
        axis for colour data; the stored dtype.

    Raises
    ------
    MissingDecoderError, UnsupportedImageError
        The transfer syntax cannot be decoded here (:func:`check_decoder`).
    UnreadableFileError
        With a one-line reason: a codestream that disagrees with Rows/Columns or holds
        too few frames (:func:`check_codestreams`), truncated data, too large to decode
        in memory, or any decoder failure.
    """
    check_decoder(ds, path)
    check_codestreams(ds, path)
    try:
        arr = _decode_via_dataset(ds, frame, raw=not as_rgb)
    except CalcdetectError:
        raise
    except MemoryError as exc:
        raise UnreadableFileError("pixel data too large to decode in memory", path=path) from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on damaged data
        msg = _first_line(exc)
        low = msg.lower()
        if any(w in low for w in ("length", "truncat", "missing", "less than expected", "fewer")):
            reason = f"pixel data is truncated or does not match Rows/Columns ({msg})"
        else:
            reason = f"pixel data cannot be decoded ({type(exc).__name__}: {msg})"
        raise UnreadableFileError(reason, path=path, fix="re-export or re-transfer the file") from exc
    return arr


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """``(rows, columns)`` from the header of a JPEG, JPEG-LS or JPEG 2000 codestream.

    Only the first marker segments are parsed (no decoding).

    Parameters
    ----------
    frame : bytes
        The start of one frame's codestream (a J2K codestream, a JP2 file, or a JPEG /
        JPEG-LS stream starting with SOI).

    Returns
    -------
    tuple of int or None
        ``(rows, columns)``; ``(0, 0)`` for a JPEG 2000 header whose image offset is not
        below its size; ``None`` when the header cannot be parsed (other formats,
        truncated or damaged headers).
    """
    offset = 0
    if frame[:8] == b"\x00\x00\x00\x0cjP  ":  # JP2 file format: find the jp2c box
        offset = 12
        while offset + 8 <= len(frame):
            length = int.from_bytes(frame[offset:offset + 4], "big")
            if frame[offset + 4:offset + 8] == b"jp2c":
                offset += 8
                break
            if length < 8:
                return None
            offset += length
        else:
            return None
    head = frame[offset:offset + 24]
    if head[:4] == b"\xff\x4f\xff\x51" and len(head) == 24:  # J2K: SOC then SIZ
        xsiz, ysiz, xo, yo = (int.from_bytes(head[i:i + 4], "big") for i in (8, 12, 16, 20))
        if xsiz <= xo or ysiz <= yo:
            return 0, 0
        return ysiz - yo, xsiz - xo
    if frame[:2] == b"\xff\xd8":  # JPEG / JPEG-LS: the SOF segment
        from pydicom.pixels.utils import _get_jpg_parameters

        try:
            info = _get_jpg_parameters(frame)
        except Exception:  # noqa: BLE001
            return None
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"])
    return None


def check_codestreams(ds: Dataset, path: str | Path) -> None:
    """Before decoding compressed pixel data, check that every frame's codestream header
    agrees with Rows/Columns.

    A damaged codestream can claim a far larger image than the DICOM header; decoders
    would then allocate and decode it (seconds and gigabytes) before failing.  Frames
    whose header cannot be parsed are left to the decoder.  Native (not encapsulated)
    pixel data, and fragments that cannot be split into frames, are not checked.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A data set read with its pixel data.
    path : str or Path
        The file, named in the error message.

    Raises
    ------
    UnreadableFileError
        A codestream's size differs from Rows x Columns, or the encapsulated pixel data
        holds fewer frames than NumberOfFrames.
    """
    ts = transfer_syntax(ds)
    if ts is None or not getattr(ts, "is_encapsulated", False) or "PixelData" not in ds:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        from pydicom.encaps import generate_frames

        n = number_of_frames(ds)
        found = 0
        # (pydicom may warn about fewer fragments than frames: the check below says so)
        for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=n)):
            size = codestream_size(frame[:65536])
            if size is not None and size != (rows, cols):
                raise UnreadableFileError(
                    f"compressed frame {i} claims {size[0]} x {size[1]} pixels but Rows x "
                    f"Columns is {rows} x {cols}: the pixel data or the header is damaged",
                    path=path,
                    fix="re-export or re-transfer the file",
                )
            found = i + 1
            if found >= n:
                break
        if found < n:
            raise UnreadableFileError(
                f"NumberOfFrames is {n} but the compressed pixel data holds {found} frame(s)",
                path=path,
                fix="re-export or re-transfer the file",
            )
    except CalcdetectError:
        raise
    except Exception:  # noqa: BLE001 - unparsable fragments: leave them to the decoder
        return


def _decode_via_dataset(ds: Dataset, frame: int | None, *, raw: bool) -> np.ndarray:
    """Decode with pydicom's pixel backends (handles file meta and every plugin)."""
    from pydicom.pixels import pixel_array

    if frame is None:
        return pixel_array(ds, raw=raw)
    return pixel_array(ds, index=frame, raw=raw)


def dicom_value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """A header value as plain Python (lists for multi-valued), or ``default``.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
    keyword : str
        DICOM keyword, e.g. ``"PixelSpacing"``.
    default : Any
        Returned when the element is absent, empty (``None``) or damaged.

    Returns
    -------
    Any
        DS values as ``float``, IS as ``int``, strings and numbers as they are, other
        types (UIDs, person names, ...) as ``str``; a multi-value as a list of those.
        Byte values (OB/OW/UN) give ``None``, not ``default``.
    """
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
    """A numeric multi-value of exactly ``n`` finite numbers, else ``None``.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
    keyword : str
        DICOM keyword, e.g. ``"PixelSpacing"`` (mm) or ``"ImagePositionPatient"``.
    n : int
        Required number of values.

    Returns
    -------
    list of float or None
        ``None`` when the element is absent, damaged, not numeric, non-finite or has
        another number of values.
    """
    return floats_of(dicom_value(ds, keyword), n)


def floats_of(value: Any, n: int) -> list[float] | None:
    """:func:`float_list` of a plain value (as :func:`dicom_value` returns it).

    Parameters
    ----------
    value : Any
        A plain value or list of plain values (e.g. from :func:`dicom_value` or
        :func:`fast_values`); a single value counts as a list of one.
    n : int
        Required number of values.

    Returns
    -------
    list of float or None
        ``None`` when ``value`` is ``None``, not numeric, non-finite or has another
        number of values.
    """
    if value is None:
        return None
    if not isinstance(value, list):
        value = [value]
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(math.isfinite(v) for v in values):
        return None
    return values


# Plain values straight from the raw bytes of a few header elements (see fast_values):
# only the canonical spellings, which pydicom converts without a warning to the same value
_FAST_PATTERNS = {
    "DS": re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"),
    "IS": re.compile(r"[+-]?\d{1,9}"),
    "UI": re.compile(r"(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*))*"),
    "CS": re.compile(r"[A-Z0-9_][A-Z0-9_ ]*"),
}
_FAST_MAX_LENGTH = {"DS": 16, "IS": 12, "UI": 64, "CS": 16}
_FAST_MULTI = {"DS": True, "IS": False, "UI": False, "CS": False}


def _fast_defaults() -> bool:
    """True when pydicom converts raw values its default way (no user hooks or options)."""
    from pydicom import config, hooks

    return (
        hooks.hooks.raw_element_value is hooks.raw_element_value
        and hooks.hooks.raw_element_vr is hooks.raw_element_vr
        and not hooks.hooks.raw_element_kwargs
        and not config.use_DS_numpy and not config.use_DS_decimal and not config.use_IS_numpy
    )


@functools.lru_cache(maxsize=16)
def _fast_specs(keywords: tuple[str, ...]) -> tuple[tuple[str, Any, str], ...]:
    """``(keyword, tag, dictionary VR)`` of the keywords pydicom knows."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.tag import Tag

    specs = []
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is not None:
            specs.append((keyword, Tag(tag), str(dictionary_VR(tag))))
    return tuple(specs)


def fast_values(ds: Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    """Plain values (as :func:`dicom_value` gives them) of those ``keywords`` whose element
    is still raw and spelled canonically (US of one value; DS, IS, UI and CS that match
    the standard's patterns), read from the raw bytes without pydicom's conversion
    (a series scan spent half its time there).  Elements that are absent, already
    converted, empty or in any way unusual are left out: ask pydicom for those, which
    then behaves (values, warnings, errors) exactly as without this shortcut.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Typically read with ``touch_values=False`` (see :func:`read_header`), so its
        elements are still raw.
    keywords : tuple of str
        DICOM keywords (a tuple: the tag lookup is cached per tuple); unknown keywords
        are ignored.

    Returns
    -------
    dict
        Keyword -> value for the elements read here (``int`` for US and IS, ``float`` or
        list of ``float`` for DS, ``str`` for UI and CS).  Empty when pydicom's raw value
        conversion has been customised (hooks or ``config`` options).
    """
    from pydicom.dataelem import RawDataElement

    out: dict[str, Any] = {}
    if not _fast_defaults():
        return out
    for keyword, tag, vr in _fast_specs(keywords):
        try:
            raw = ds.get_item(tag, keep_deferred=True)
        except Exception:  # noqa: BLE001 - leave it to pydicom
            continue
        if isinstance(raw, RawDataElement):
            value = fast_value(raw, vr)
            if value is not NO_FAST_VALUE:
                out[keyword] = value
    return out


#: What :func:`fast_value` returns for an element it leaves to pydicom.
NO_FAST_VALUE = object()


def fast_value(raw: Any, vr: str) -> Any:
    """The plain value of one raw element as :func:`fast_values` reads it, or
    :data:`NO_FAST_VALUE` when it must be left to pydicom (big endian, empty, another VR,
    an unusual spelling).  The caller checks :func:`fast_values`' other condition:
    pydicom's raw value conversion is not customised.

    Parameters
    ----------
    raw : pydicom.dataelem.RawDataElement
        The element, not yet converted.
    vr : str
        The VR of its tag in the DICOM dictionary.

    Returns
    -------
    Any
        ``int`` for US and IS, ``float`` or list of ``float`` for DS, ``str`` for UI
        and CS; :data:`NO_FAST_VALUE` otherwise.
    """
    if not raw.is_little_endian or not raw.value:
        return NO_FAST_VALUE
    if raw.VR is not None and raw.VR != vr:
        return NO_FAST_VALUE
    data = raw.value
    if vr == "US":
        return int.from_bytes(data, "little") if len(data) == 2 else NO_FAST_VALUE
    pattern = _FAST_PATTERNS.get(vr)
    if pattern is None or len(data) != raw.length:
        return NO_FAST_VALUE
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return NO_FAST_VALUE
    text = text.rstrip("\0 ")
    parts = text.split("\\")
    if len(parts) > 1 and not _FAST_MULTI[vr]:
        return NO_FAST_VALUE
    limit = _FAST_MAX_LENGTH[vr]
    for v in parts:  # a loop, not all(<generator>): this runs ~20 times per file of a scan
        if len(v) > limit or not pattern.fullmatch(v):
            return NO_FAST_VALUE
    if vr == "DS":
        values = [float(v) for v in parts]
        for v in values:
            if not math.isfinite(v):
                return NO_FAST_VALUE
        return values if len(values) > 1 else values[0]
    if vr == "IS":
        return int(parts[0])
    return parts[0]


def positive_spacing(values: list[float] | None) -> list[float] | None:
    """``values`` when every entry is a plausible pixel size in mm, else ``None``.

    Zero, negative, non-finite and absurd values (outside
    :data:`calcdetect.image.SPACING_RANGE_MM`, e.g. 1e-30 or 1e30) are no spacing: the
    caller then reports no mm at all instead of made-up ones.

    Parameters
    ----------
    values : list of float or None
        Pixel or slice spacings in mm (e.g. PixelSpacing from :func:`float_list`).

    Returns
    -------
    list of float or None
        ``values`` itself (same object) when all are plausible; ``None`` otherwise or
        when ``values`` is ``None``.
    """
    if values is None:
        return None
    from ..image import plausible_spacing

    if all(plausible_spacing(v) for v in values):
        return values
    return None


def basic_metadata(ds: Dataset) -> dict[str, Any]:
    """Non-identifying header fields worth carrying into reports and DICOM outputs.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset

    Returns
    -------
    dict
        Keyword -> plain value (see :func:`dicom_value`) of the fields present and not
        empty among Modality, the study/series/SOP UIDs, description, body part,
        manufacturer, photometric and bit depth, laterality and view, contrast, slice
        thickness (mm), kVp and kernel, and whether the pixels went through lossy
        compression (``LossyImageCompression`` ``"01"``, with ratio and method); plus
        ``"TransferSyntaxUID"`` (``str``) when recorded.  No patient name, ID or dates.
    """
    keys = (
        "Modality", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
        "FrameOfReferenceUID", "SeriesDescription", "BodyPartExamined", "Manufacturer",
        "ManufacturerModelName", "PhotometricInterpretation", "BitsStored", "PixelRepresentation",
        "ImageLaterality", "Laterality", "ViewPosition", "PatientOrientation", "PatientPosition",
        "ContrastBolusAgent", "ContrastBolusRoute", "SliceThickness", "KVP", "ConvolutionKernel",
        "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
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
