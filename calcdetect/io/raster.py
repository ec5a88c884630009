"""PNG / JPEG / TIFF frames with a stated pixel size.

Raster files carry no trustworthy physical size, so the pixel size comes from the user
(``pixel_size_mm=`` / ``--pixel-size``) or stays unknown (mm fields null).  OpenCV reads
PNG and JPEG (8 and 16 bit); TIFF goes through tifffile when installed (it keeps 16-bit
and float data; of a multi-page file only the first page is read), else OpenCV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError, UnreadableFileError
from ..image import USER_SPACING, Image

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_raster(path: str | Path) -> np.ndarray:
    """Read a raster file as stored: ``(rows, cols)`` grey or ``(rows, cols, 3)`` RGB.

    TIFF is read with tifffile when installed (first page only, dtype kept; planar RGB
    is turned to interleaved), else with OpenCV like PNG, JPEG and BMP.  An alpha
    channel is dropped.

    Parameters
    ----------
    path : str or Path
        A PNG, JPEG, TIFF or BMP file (the suffix only chooses the TIFF reader).

    Returns
    -------
    numpy.ndarray
        C-contiguous, the file's dtype (e.g. uint8, uint16, float32 for TIFF), channels
        in RGB order.

    Raises
    ------
    UnreadableFileError
        Missing, not a regular file, empty, damaged or truncated, or a layout other
        than grey or RGB(A) (e.g. a two-channel image).
    """
    return _read_raster(path)[0]


def _read_raster(path: str | Path) -> tuple[np.ndarray, int]:
    """:func:`read_raster`, and how many pages the file holds (1 unless a TIFF says
    more; the loader warns that only the first is read)."""
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError("no such file", path=path, fix="check the path")
    if not path.is_file():  # reading a pipe or a device would block or never end
        raise UnreadableFileError("is not a regular file (a pipe, socket or device)", path=path)
    if path.stat().st_size == 0:
        raise UnreadableFileError("is empty (0 bytes)", path=path)
    arr = None
    pages = 1
    tiff = path.suffix.lower() in (".tif", ".tiff")
    if tiff:
        try:
            import tifffile

            try:
                with tifffile.TiffFile(path) as tif:
                    pages = max(1, len(tif.pages))
                    page = tif.pages[0]
                    arr = page.asarray()
                    if arr.ndim == 3 and int(page.planarconfig) == 2:  # SEPARATE: (samples, rows, cols)
                        arr = np.moveaxis(arr, 0, -1)
            except Exception as exc:  # tifffile raises many types on damaged files
                raise UnreadableFileError(f"TIFF cannot be read ({type(exc).__name__}: {exc})", path=path) from exc
        except ImportError:
            arr = None
    if arr is None:
        import cv2

        if tiff:
            try:  # OpenCV reads the first page too
                pages = max(1, int(cv2.imcount(str(path))))
            except Exception:  # an OpenCV without imcount, or a path it cannot open
                pages = 1

        data = np.fromfile(path, dtype=np.uint8)
        arr = _imdecode_quiet(cv2, data)
        if arr is None:
            raise UnreadableFileError(
                "is not a readable PNG/JPEG/TIFF image (damaged or truncated)", path=path,
                fix="re-export the image",
            )
        if arr.ndim == 3:
            if arr.shape[2] == 4:
                arr = arr[:, :, :3]
            arr = arr[:, :, ::-1]  # OpenCV is BGR
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise UnreadableFileError(f"unsupported raster layout {arr.shape}", path=path)
    return np.ascontiguousarray(arr), pages


def _imdecode_quiet(cv2, data: np.ndarray) -> np.ndarray | None:
    """``cv2.imdecode`` without OpenCV's own warnings on stderr (a damaged file is
    reported once, by calcdetect's error)."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    previous = None
    if log is not None:
        previous = log.getLogLevel()
        log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    finally:
        if log is not None and previous is not None:
            log.setLogLevel(previous)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array, as float32.

    Parameters
    ----------
    rgb : numpy.ndarray
        Shape ``(..., 3)``, channels in RGB order, any numeric dtype.

    Returns
    -------
    numpy.ndarray
        Shape ``rgb.shape[:-1]``, float32, ``0.299 R + 0.587 G + 0.114 B`` in the input's
        value range (not rescaled).
    """
    rgb = rgb.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def load_raster(
    path: str | Path, *, modality: str | None, pixel_size_mm: float | tuple[float, float] | None = None,
    invert: bool = False,
) -> Image:
    """Load a PNG/JPEG/TIFF frame as an :class:`Image`.

    Parameters
    ----------
    path : str or Path
    modality : {"XRAY", "US"}
        Raster files do not say what they show; CT must come as DICOM (HU).  Case is
        ignored.
    pixel_size_mm : float or (float, float), optional
        Physical pixel size (row, col) in mm.  Without it, mm fields are null.
    invert : bool
        Radiographs only: the file stores dense tissue as dark values (a MONOCHROME1
        radiograph's raw values saved without their photometric interpretation).  The
        values are reflected within the file's range (``dtype`` maximum minus the value),
        as the DICOM loader does for MONOCHROME1, so that bone, calcium and lead are
        bright; a warning says so.  A raster file cannot tell, so nothing is guessed.

    Returns
    -------
    Image
        2D float32 ``pixels`` (the stored values, or BT.601 luma of colour files),
        ``color`` the RGB array when the file is 8-bit colour, ``spacing_mm`` from
        ``pixel_size_mm`` (else ``None`` with a warning), ``metadata`` ``format`` and
        ``dtype``.

    Raises
    ------
    InvalidParameterError
        ``modality`` is ``None`` or ``"CT"``, or ``invert`` for an ultrasound frame.
    UnreadableFileError
        As for :func:`read_raster`.
    """
    if modality is None:
        raise InvalidParameterError(
            "a PNG/JPEG/TIFF file does not say which modality it shows", path=path,
            fix="pass modality='XRAY' or 'US' (CLI: --modality XRAY|US)",
        )
    modality = modality.upper()
    if modality == "CT":
        raise InvalidParameterError(
            "CT must be loaded from DICOM (raster files do not hold Hounsfield units)", path=path,
            fix="give the DICOM file or series folder",
        )
    if invert and modality != "XRAY":
        raise InvalidParameterError(
            "invert applies to radiographs (dense stored as dark), not to ultrasound frames", path=path,
            fix="drop invert / --invert",
        )
    arr, pages = _read_raster(path)
    color = None
    if arr.ndim == 3:
        color = arr if arr.dtype == np.uint8 else None
        grey = to_grey(arr)
    else:
        grey = arr.astype(np.float32)
    warns: list[str] = []
    if pages > 1:
        warns.append(f"{Path(path).name}: the TIFF holds {pages} pages and only the first is analysed "
                     "(save each page as a file of its own to analyse the others)")
    if invert:
        top = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else float(np.nanmax(grey))
        grey = (np.float32(top) - grey).astype(np.float32)
        color = None  # overlays are drawn on the inverted grey values
        warns.append(f"{Path(path).name}: inverted as asked (dense stored as dark): {top:g} - value, so that "
                     "dense is bright")
    spacing = None
    if pixel_size_mm is not None:
        spacing = (float(pixel_size_mm),) * 2 if np.isscalar(pixel_size_mm) else tuple(map(float, pixel_size_mm))
    else:
        warns.append(
            f"{Path(path).name}: raster files carry no pixel size, so sizes are not reported in mm "
            "(pass pixel_size_mm= / --pixel-size)"
        )
    return Image(
        pixels=grey,
        spacing_mm=spacing,
        modality=modality,
        source=str(path),
        metadata={"format": Path(path).suffix.lower().lstrip("."), "dtype": str(arr.dtype)},
        warnings=warns,
        spacing_source=USER_SPACING if spacing else None,
        color=color,
    )
