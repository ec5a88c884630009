"""Radiograph loading: CR, DX, MG, RG and secondary-capture projection images.

What the loader guarantees (docs/xray.md):

* **Raw signal, dense = bright.**  Pixels are the stored values as float32, passed through
  the linear Modality rescale when the file has one (a positive linear map; detection is
  invariant to it, but it puts ``peak``/``mean`` in the file's own units).  VOI LUTs and
  windows are display settings and are *not* applied.  ``MONOCHROME1`` images store dense
  as low values; they are reflected within the stored range (``hi - stored``), so that
  dense (bone, calcium, lead) is bright for every radiograph.
* **Physical pixel size, never invented.**  In order of trust:

  1. ``PixelSpacing`` with ``PixelSpacingCalibrationType`` (calibrated in the patient
     plane, e.g. GEOMETRY or FIDUCIAL);
  2. ``ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor`` (detector plane
     corrected to the object plane);
  3. ``ImagerPixelSpacing`` alone (detector plane: objects appear magnified by the beam
     divergence, typically 5-20 %; said in a warning);
  4. ``PixelSpacing`` without calibration type.

  A missing or zero spacing (real files carry ``PixelSpacing = 0.000\\0.000``) is *no*
  spacing: ``spacing_mm`` is ``None`` and a warning tells how to pass ``--pixel-size``.
  A warning always states which tag the spacing came from (also in
  ``Image.spacing_source``).
* **Orientation carried, not guessed.**  ``PatientOrientation``, ``ImageLaterality`` /
  ``Laterality``, ``ViewPosition`` and ``BodyPartExamined`` go to ``Image.geometry`` so
  the detector can tell patient left from right when (and only when) the file says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ..errors import UnsupportedImageError
from ..image import Image
from .dicom import (
    basic_metadata,
    decode_pixels,
    dicom_value,
    float_list,
    number_of_frames,
    positive_spacing,
    read_dataset,
)

__all__ = ["load_radiograph", "radiograph_from_dataset", "radiograph_spacing", "orientation_geometry"]


def _fmt_spacing(values: list[float] | tuple[float, ...]) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _raw_spacing_text(ds: Dataset, keyword: str) -> str | None:
    value = dicom_value(ds, keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _cassette_hint(ds: Dataset, rows: int, cols: int) -> str:
    """A hint from CassetteSize (e.g. '35CMX35CM'); never used as the spacing itself."""
    text = str(dicom_value(ds, "CassetteSize") or "").upper().replace(" ", "")
    if "CMX" not in text:
        return ""
    try:
        a, b = text.split("CMX")
        a_mm, b_mm = float(a) * 10.0, float(b.replace("CM", "")) * 10.0
    except ValueError:
        return ""
    orient = str(dicom_value(ds, "CassetteOrientation") or "").upper()
    # portrait: the longer side runs down the rows
    h_mm, w_mm = (max(a_mm, b_mm), min(a_mm, b_mm)) if orient != "LANDSCAPE" else (min(a_mm, b_mm), max(a_mm, b_mm))
    est = 0.5 * (h_mm / rows + w_mm / cols)
    return (f"; CassetteSize {text} suggests about {est:.3f} mm per pixel at the detector "
            "(pass it with --pixel-size only if you can confirm it)")


def radiograph_spacing(ds: Dataset, path: str | Path = "") -> tuple[tuple[float, float] | None, str | None, str]:
    """The physical pixel size of a radiograph and where it came from.

    Parameters
    ----------
    ds : Dataset
        The radiograph's header.
    path : str or Path
        For messages.

    Returns
    -------
    spacing : (float, float) or None
        (row, col) spacing in mm, ``None`` when the file has no usable spacing.
    source : str or None
        The tag(s) used, e.g. ``"ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"``.
    warning : str
        One line for ``Image.warnings`` saying which tag was used (or why there is none).
    """
    name = Path(path).name if path else "radiograph"
    pixel = float_list(ds, "PixelSpacing", 2)
    imager = float_list(ds, "ImagerPixelSpacing", 2)
    ps_ok, ips_ok = positive_spacing(pixel), positive_spacing(imager)
    calib = str(dicom_value(ds, "PixelSpacingCalibrationType") or "").strip().upper()
    calib_desc = str(dicom_value(ds, "PixelSpacingCalibrationDescription") or "").strip()
    mag = dicom_value(ds, "EstimatedRadiographicMagnificationFactor")
    try:
        mag = float(mag) if mag is not None else None
    except (TypeError, ValueError):
        mag = None
    if mag is not None and not (np.isfinite(mag) and mag > 0):
        mag = None

    if ps_ok is not None and calib:
        spacing = (ps_ok[0], ps_ok[1])
        desc = f" ({calib_desc})" if calib_desc else ""
        return spacing, f"PixelSpacing (PixelSpacingCalibrationType {calib})", (
            f"{name}: pixel size {_fmt_spacing(spacing)} mm from PixelSpacing, calibrated in the "
            f"patient plane (PixelSpacingCalibrationType {calib}{desc})")
    if ips_ok is not None and mag is not None:
        spacing = (ips_ok[0] / mag, ips_ok[1] / mag)
        return spacing, "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor", (
            f"{name}: pixel size {_fmt_spacing(spacing)} mm from ImagerPixelSpacing "
            f"{_fmt_spacing(ips_ok)} mm divided by EstimatedRadiographicMagnificationFactor {mag:g} "
            "(object plane)")
    if ips_ok is not None:
        spacing = (ips_ok[0], ips_ok[1])
        same = ps_ok is not None and np.allclose(ps_ok, ips_ok)
        return spacing, "ImagerPixelSpacing", (
            f"{name}: pixel size {_fmt_spacing(spacing)} mm from ImagerPixelSpacing (detector plane, "
            "no EstimatedRadiographicMagnificationFactor): objects are magnified by the beam "
            "geometry, so sizes may be overestimated by about 5-20 %"
            + ("; PixelSpacing agrees" if same else ""))
    if ps_ok is not None:
        spacing = (ps_ok[0], ps_ok[1])
        return spacing, "PixelSpacing", (
            f"{name}: pixel size {_fmt_spacing(spacing)} mm from PixelSpacing (no "
            "PixelSpacingCalibrationType: for projection radiographs this is usually the "
            "detector plane, so sizes may be overestimated by the beam magnification)")
    # no usable spacing: say what was there
    found = []
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        raw = _raw_spacing_text(ds, kw)
        if raw is not None:
            found.append(f"{kw} is {raw}")
    what = ("; ".join(found) + " (zero or invalid means unknown)") if found else \
        "neither ImagerPixelSpacing nor PixelSpacing is present"
    rows = int(dicom_value(ds, "Rows") or 0)
    cols = int(dicom_value(ds, "Columns") or 0)
    hint = _cassette_hint(ds, rows, cols) if rows and cols else ""
    return None, None, (
        f"{name}: no usable pixel spacing ({what}), so sizes are not reported in mm "
        f"(pass pixel_size_mm= / --pixel-size MM to supply it){hint}")


def _letters(value: Any) -> str:
    return str(value or "").strip().upper()


def orientation_geometry(ds: Dataset) -> dict[str, Any]:
    """Orientation facts of a projection radiograph, as plain data.

    ``PatientOrientation`` holds two direction codes: the patient direction of
    increasing column index (along a row), then of increasing row index (down a
    column), each made of the letters L/R, A/P, H/F.  The returned dict has these raw
    tags plus ``col_direction`` / ``row_direction`` (the codes) and
    ``left_right_axis`` (1 when patient left/right runs along the columns, 0 along the
    rows, ``None`` when neither code names L or R, as on a lateral view) and
    ``increasing_index_is`` ("left" or "right" along that axis).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Header of a projection radiograph (CR, DX, MG, ...).

    Returns
    -------
    dict
        ``kind`` ("projection radiograph"); ``PatientOrientation`` (list of upper-case
        codes, or ``None``); ``ImageLaterality``, ``Laterality``, ``ViewPosition``,
        ``BodyPartExamined`` (upper-case, or ``None``); ``ViewCodeMeaning`` (from
        ViewCodeSequence, or ``None``); ``col_direction``, ``row_direction``,
        ``left_right_axis``, ``increasing_index_is`` as above; ``laterality``
        ("left", "right", "both", "unpaired" or ``None``) from ImageLaterality, else
        Laterality.
    """
    geo: dict[str, Any] = {"kind": "projection radiograph"}
    po = dicom_value(ds, "PatientOrientation")
    if isinstance(po, str):
        po = [p for p in po.split("\\") if p] if "\\" in po else ([po] if po else [])
    po = [_letters(p) for p in (po or [])]
    geo["PatientOrientation"] = po or None
    for kw in ("ImageLaterality", "Laterality", "ViewPosition", "BodyPartExamined", "ViewCodeMeaning"):
        v = dicom_value(ds, kw) if kw != "ViewCodeMeaning" else None
        geo[kw] = _letters(v) if v not in (None, "") else None
    view_seq = ds.get("ViewCodeSequence")
    if view_seq:
        try:
            geo["ViewCodeMeaning"] = str(view_seq[0].get("CodeMeaning", "")) or None
        except (IndexError, AttributeError):
            pass
    geo["col_direction"] = po[0] if len(po) >= 1 else None
    geo["row_direction"] = po[1] if len(po) >= 2 else None
    axis = None
    increasing = None
    for ax, code in ((1, geo["col_direction"]), (0, geo["row_direction"])):
        if code and code[0] in "LR":
            axis = ax
            increasing = "left" if code[0] == "L" else "right"
            break
    geo["left_right_axis"] = axis
    geo["increasing_index_is"] = increasing
    lat = geo.get("ImageLaterality") or geo.get("Laterality")
    geo["laterality"] = {"L": "left", "R": "right", "B": "both", "U": "unpaired"}.get(lat or "", None)
    return geo


def _to_grey(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour secondary captures: BT.601 luma, keep the RGB for display."""
    if arr.ndim == 3 and arr.shape[-1] == 3:
        from .raster import to_grey

        color = arr.astype(np.uint8) if arr.dtype == np.uint8 else None
        return to_grey(arr).astype(np.float32), color
    return arr.astype(np.float32), None


def radiograph_from_dataset(ds: Dataset, path: str | Path, pixels: np.ndarray) -> Image:
    """Build the radiograph :class:`Image` from a header and its decoded stored pixels.

    Parameters
    ----------
    ds : Dataset
        The header.
    path : str or Path
        The source path (messages, ``Image.source``).
    pixels : ndarray
        Stored pixel values as decoded (one frame; RGB allowed for secondary capture).

    Returns
    -------
    Image
        ``modality="XRAY"``; see the module docstring for the guarantees.
    """
    warns: list[str] = []
    photometric = _letters(dicom_value(ds, "PhotometricInterpretation")) or "MONOCHROME2"
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR") or pixels.ndim == 3:
        if photometric.startswith("YBR") and pixels.ndim == 3:
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        grey, color = _to_grey(pixels, ds)
        if photometric == "PALETTE COLOR":
            warns.append("palette-colour image: the palette indices are analysed as grey values")
        else:
            warns.append("colour image: converted to grey (luma); burned-in colour overlays may remain")
    else:
        grey, color = pixels.astype(np.float32), None

    try:
        bits = int(dicom_value(ds, "BitsStored") or 0) or int(np.ceil(np.log2(float(grey.max()) + 1.0)))
    except (TypeError, ValueError, OverflowError):
        bits = 16
    signed = int(dicom_value(ds, "PixelRepresentation") or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    if color is not None:
        lo, hi = 0, 255

    valid = None
    padding = dicom_value(ds, "PixelPaddingValue")
    if isinstance(padding, (int, float)) and color is None:
        pad_mask = grey == np.float32(padding)
        pad_limit = dicom_value(ds, "PixelPaddingRangeLimit")
        if isinstance(pad_limit, (int, float)):
            a, b = sorted((float(padding), float(pad_limit)))
            pad_mask = (grey >= a) & (grey <= b)
        if pad_mask.any():
            valid = ~pad_mask
            warns.append(f"{int(pad_mask.sum())} padding pixel(s) (PixelPaddingValue) are outside the image")

    slope = dicom_value(ds, "RescaleSlope")
    intercept = dicom_value(ds, "RescaleIntercept")
    try:
        slope = float(slope) if slope is not None else 1.0
        intercept = float(intercept) if intercept is not None else 0.0
    except (TypeError, ValueError):
        slope, intercept = 1.0, 0.0
    if not (np.isfinite(slope) and slope > 0 and np.isfinite(intercept)):
        warns.append(f"RescaleSlope {slope!r} is not positive; the stored values are used unscaled")
        slope, intercept = 1.0, 0.0
    if "ModalityLUTSequence" in ds:
        warns.append("the Modality LUT is a display-oriented lookup and is not applied; raw stored values are analysed")

    inverted = photometric == "MONOCHROME1"
    if inverted:
        # reflect within the stored range: dense (stored low) becomes bright
        grey = np.float32(hi + lo) - grey
    if slope != 1.0 or intercept != 0.0:
        grey = grey * np.float32(slope) + np.float32(intercept)

    spacing, source, spacing_msg = radiograph_spacing(ds, path)
    warns.insert(0, spacing_msg)
    if inverted:
        warns.append("MONOCHROME1 (dense stored as low values): inverted so that dense is bright")

    meta = basic_metadata(ds)
    meta.update({
        "PhotometricInterpretation": photometric,
        "inverted": inverted,
        "stored_range": [lo, hi],
        "RescaleSlope": slope,
        "RescaleIntercept": intercept,
        "VOI_applied": False,
    })
    for kw in ("PixelSpacing", "ImagerPixelSpacing", "PixelSpacingCalibrationType",
               "EstimatedRadiographicMagnificationFactor", "DistanceSourceToDetector",
               "DistanceSourceToPatient", "CassetteSize", "BorderDensity", "ImageType",
               "WindowCenter", "WindowWidth"):
        v = dicom_value(ds, kw)
        if v not in (None, ""):
            meta[kw] = v
    geometry = orientation_geometry(ds)
    meta["orientation"] = {k: geometry[k] for k in ("PatientOrientation", "ImageLaterality", "Laterality",
                                                    "ViewPosition")}
    return Image(
        pixels=grey,
        spacing_mm=spacing,
        modality="XRAY",
        valid_mask=valid,
        source=str(path),
        metadata=meta,
        warnings=warns,
        spacing_source=source,
        color=color,
        geometry=geometry,
    )


def load_radiograph(path: str | Path, *, budget: int | None = None) -> Image:
    """Load a projection radiograph DICOM (CR, DX, MG, RG, secondary capture).

    Parameters
    ----------
    path : str or Path
        The DICOM file.
    budget : int, optional
        Largest number of pixels to decode (see :func:`calcdetect.io.dicom.max_pixels`).

    Returns
    -------
    Image
        Grey float32 pixels of the raw signal with dense = bright, ``spacing_mm`` from the
        trusted tag (or ``None`` with a warning), orientation tags in ``geometry``.

    Raises
    ------
    CalcdetectError
        Unreadable, truncated, undecodable or image-less files (one-line messages).
    """
    ds = read_dataset(path, budget=budget)
    frames = number_of_frames(ds)
    spp = int(dicom_value(ds, "SamplesPerPixel") or 1)
    photometric = _letters(dicom_value(ds, "PhotometricInterpretation"))
    as_rgb = spp == 3 and photometric.startswith("YBR")
    pixels = decode_pixels(ds, path, frame=0 if frames > 1 else None, as_rgb=as_rgb)
    if as_rgb:
        # pydicom converted YBR to RGB: record it so the colour path does not convert again
        ds.PhotometricInterpretation = "RGB"
    if pixels.ndim == 3 and pixels.shape[-1] != 3:
        pixels = pixels[0]
    if pixels.ndim not in (2, 3):
        raise UnsupportedImageError(f"unexpected pixel layout {pixels.shape} for a radiograph", path=path)
    image = radiograph_from_dataset(ds, path, pixels)
    if frames > 1:
        image.warnings.append(f"{frames} frames: only the first is analysed as a radiograph")
    return image
