"""Loaders: ``load(path)`` turns a file or a series folder into an :class:`~calcdetect.Image`.

What is loaded depends on the file, not on its name: DICOM files are recognised by
content and routed by Modality (CT; CR/DX/MG and other radiographs; US); PNG, JPEG and
TIFF files by suffix.  A folder is one DICOM series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import InvalidParameterError, UnreadableFileError, UnsupportedImageError
from ..image import SPACING_RANGE_MM, USER_SPACING, Image, plausible_spacing
from .dicom import RADIOGRAPH_MODALITIES, check_budget, claimed_pixels, read_header, sop_class_name
from .raster import RASTER_SUFFIXES, load_raster

__all__ = ["load", "RASTER_SUFFIXES"]


def _apply_pixel_size(image: Image, pixel_size_mm: float | Sequence[float] | None) -> Image:
    """Let a user-given pixel size fill in (or override) the in-plane spacing."""
    if pixel_size_mm is None:
        return image
    values = [float(pixel_size_mm)] * 2 if isinstance(pixel_size_mm, (int, float)) else [float(v) for v in pixel_size_mm]
    if len(values) != 2 or not all(plausible_spacing(v) for v in values):
        raise InvalidParameterError(
            f"pixel size {pixel_size_mm!r} must be one or two numbers between "
            f"{SPACING_RANGE_MM[0]:g} and {SPACING_RANGE_MM[1]:g} (mm)",
            fix="e.g. --pixel-size 0.1",
        )
    if image.ndim == 3 and image.spacing_mm is not None:
        spacing = (image.spacing_mm[0], values[0], values[1])
    elif image.ndim == 3 and image.geometry.get("frame_axis") == "time":
        spacing = (1.0, values[0], values[1])  # ultrasound cine (frame="all"): axis 0 is the frame index
    elif image.ndim == 3 and image.geometry.get("slice_step_mm"):
        # a series with slice positions but no usable PixelSpacing: the step between the
        # positions is a length in mm, the user's pixel size completes the spacing
        spacing = (float(image.geometry["slice_step_mm"]), values[0], values[1])
    elif image.ndim == 3:
        raise InvalidParameterError(
            "a volume without slice positions cannot be given a pixel size alone",
            path=image.source, fix="repair the series geometry",
        )
    else:
        spacing = (values[0], values[1])
    if image.spacing_mm is not None and tuple(image.spacing_mm[-2:]) != tuple(values):
        image.warnings.append(
            f"the pixel size given ({values[0]:g} x {values[1]:g} mm) overrides the file's "
            f"({image.spacing_mm[-2]:g} x {image.spacing_mm[-1]:g} mm, from {image.spacing_source})"
        )
    image.warnings[:] = [w for w in image.warnings if "sizes are not reported in mm" not in w]
    image.spacing_mm = spacing
    image.spacing_source = USER_SPACING
    if image.affine is not None:
        image.affine = None  # the DICOM affine used the file's spacing; do not mix the two
        image.warnings.append("patient coordinates are not reported because the pixel size was overridden")
    return image


def load(
    path: str | Path,
    *,
    pixel_size_mm: float | Sequence[float] | None = None,
    modality: str | None = None,
    series_uid: str | None = None,
    frame: int | str | None = None,
    max_pixels: int | None = None,
    invert: bool = False,
) -> Image:
    """Load an image file or a folder holding one DICOM series.

    Parameters
    ----------
    path : str or Path
        A DICOM file (CT slice, enhanced CT, radiograph, ultrasound), a PNG/JPEG/TIFF
        file, a NIfTI CT volume (``.nii``/``.nii.gz``, needs ``calcdetect[nifti]``), or a
        folder holding one DICOM series.
    pixel_size_mm : float or (float, float), optional
        Physical pixel size (row, col) in mm, for files that lack one (raster files,
        radiographs with zero spacing).  Overrides the file's spacing with a warning.
    modality : {"CT", "XRAY", "US"}, optional
        Required for raster files; for DICOM it must agree with the file.
    series_uid : str, optional
        Which series to load when a folder holds several.
    frame : int or "all", optional
        Multi-frame ultrasound: the frame to analyse (default: the middle one).
    max_pixels : int, optional
        Refuse images above this many pixels before allocating (default from
        ``CALCDETECT_MAX_PIXELS``, else 1.5e9).
    invert : bool
        A PNG/JPEG/TIFF radiograph that stores dense tissue as dark (raw MONOCHROME1
        values saved without their photometric interpretation): reflect its values so
        that dense is bright.  DICOM files say this themselves (MONOCHROME1), so it is
        refused for them.

    Returns
    -------
    Image

    Raises
    ------
    CalcdetectError
        With a one-line message naming the file, the reason and the fix.
    """
    path = Path(path)
    if modality is not None:
        modality = str(modality).upper()
        if modality in RADIOGRAPH_MODALITIES or modality in ("XR", "RX"):
            modality = "XRAY"
        if modality not in ("CT", "XRAY", "US"):
            raise InvalidParameterError(f"modality {modality!r} is not CT, XRAY or US")
    if not path.exists():
        raise UnreadableFileError("no such file or folder", path=path, fix="check the path")
    if invert and (path.is_dir() or path.suffix.lower() not in RASTER_SUFFIXES):
        raise InvalidParameterError(
            "invert applies to PNG/JPEG/TIFF radiographs; DICOM files say how they store dense tissue "
            "(MONOCHROME1 is inverted automatically)", path=path, fix="drop invert / --invert")
    if path.is_dir():
        from .ct import load_ct_series

        image = load_ct_series(path, series_uid=series_uid, budget=max_pixels)
        return _apply_pixel_size(image, pixel_size_mm)
    if path.suffix.lower() in RASTER_SUFFIXES:
        return load_raster(path, modality=modality, pixel_size_mm=pixel_size_mm, invert=bool(invert))
    from .nifti import is_nifti

    if is_nifti(path):
        from .nifti import load_nifti

        if modality not in (None, "CT"):
            raise InvalidParameterError("NIfTI volumes are read as CT", path=path, fix="drop --modality")
        return _apply_pixel_size(load_nifti(path, budget=max_pixels), pixel_size_mm)
    header = read_header(path, budget=max_pixels)
    file_modality = str(header.get("Modality", "") or "").upper()
    kind = _kind(file_modality, header)
    # refuse absurd sizes from the header alone, before any loader allocates anything
    check_budget(claimed_pixels(header), path, max_pixels)
    if kind is None:
        if "PixelData" not in header and "Rows" not in header:
            raise UnsupportedImageError(
                f"holds no image ({sop_class_name(header)}, modality {file_modality or 'unknown'})",
                path=path,
                fix="give an image DICOM (CT, CR/DX/MG radiograph or US)",
            )
        if modality is None:
            raise UnsupportedImageError(
                f"modality {file_modality or 'unknown'} ({sop_class_name(header)}) is not CT, a radiograph or ultrasound",
                path=path,
                fix="pass modality='XRAY' or 'US' (CLI: --modality) if it is one",
            )
        kind = modality
    elif modality is not None and modality != kind:
        raise InvalidParameterError(
            f"the file says modality {file_modality} but {modality} was requested", path=path,
            fix="drop --modality for DICOM files",
        )
    if kind == "CT":
        from .ct import load_ct_file

        image = load_ct_file(path, budget=max_pixels)
    elif kind == "XRAY":
        from .xray import load_radiograph

        image = load_radiograph(path, budget=max_pixels)
    else:
        from .ultrasound import load_ultrasound

        image = load_ultrasound(path, frame=frame, budget=max_pixels)
    return _apply_pixel_size(image, pixel_size_mm)


def _kind(file_modality: str, header) -> str | None:
    if file_modality == "CT":
        return "CT"
    if file_modality in RADIOGRAPH_MODALITIES:
        return "XRAY"
    if file_modality == "US":
        return "US"
    return None
