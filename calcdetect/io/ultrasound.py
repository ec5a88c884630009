"""Ultrasound DICOM: B-mode regions in mm, colour handled, overlays masked.

Loading rules (issue 4, docs/ultrasound.md):

Pixel size
    From the Sequence of Ultrasound Regions.  Only regions with RegionSpatialFormat 1
    (2D) and RegionDataType 1 (tissue) hold B-mode; their PhysicalDeltaX/Y are in cm
    when PhysicalUnitsX/YDirection is 3, so mm = delta x 10.  Every usable region is kept
    in ``image.geometry["regions"]`` (box, spacing); the Image's ``spacing_mm`` is that
    of the largest region (a warning says so when regions differ).  A region whose box
    lies mostly outside the pixel matrix (the image was resized or cropped after the
    regions were written) is not trusted.  No usable region: ``spacing_mm`` is None and
    a warning says so (pass ``pixel_size_mm=``).
Photometric interpretation
    MONOCHROME1/2, RGB, YBR_* (decoded to RGB), PALETTE COLOR 8 and 16 bit (palette
    applied).  ``image.color`` keeps the RGB (uint8), ``image.pixels`` the grey
    luminance (BT.601) on a 0-255 scale (16-bit data are scaled down), so detector
    thresholds mean the same on every file.
Valid mask
    The tissue region box(es), restricted to the imaged fan (convex hull of the echo
    signal), minus overlays: colour (Doppler, coloured markers: chroma), thin bright
    graphics (text, calipers, dotted measurement lines: bright pixels removed by a
    small morphological opening), flat graphics (grey bars: no speckle), and, for cine
    files, bright pixels that do not change across frames.
Cine
    ``frame=None`` analyses the middle frame; ``frame=k`` frame k (0-based);
    ``frame="all"`` returns one 3D Image ``(frames, rows, cols)`` whose first axis is
    the frame index (its "spacing" 1.0 is a frame step, not a length:
    ``geometry["frame_axis"] == "time"``); the ultrasound detector analyses it frame
    by frame.  :func:`load_ultrasound_frames` gives a list of 2D Images instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError, UnsupportedImageError
from ..image import Image, plausible_spacing
from .dicom import basic_metadata, decode_pixels, dicom_value, number_of_frames, read_dataset

__all__ = ["load_ultrasound", "load_ultrasound_frames", "ultrasound_regions", "overlay_mask", "fan_mask"]

#: RegionSpatialFormat 1 = 2D (tissue or flow); RegionDataType 1 = tissue.
SPATIAL_2D = 1
DATA_TISSUE = 1
UNITS_CM = 3

#: chroma (max - min of R, G, B on 0-255) above which a pixel is colour, not B-mode grey
CHROMA_LIMIT = 28.0
#: at most this many frames are read to find static overlays in a cine
STATIC_FRAMES = 12


def ultrasound_regions(ds: Any, shape: tuple[int, int]) -> tuple[list[dict[str, Any]], list[str]]:
    """Usable B-mode regions of a dataset.

    Parameters
    ----------
    ds : pydicom Dataset
    shape : (rows, cols)
        Pixel matrix size, to check each region box against.

    Returns
    -------
    regions : list of dict
        ``box`` (x0, y0, x1, y1 inclusive pixel corners, clipped to the image),
        ``spacing_mm`` (row, col), ``index`` (position in the DICOM sequence),
        ``flags`` and ``reference_px`` (ReferencePixelX0/Y0 when given, in image
        coordinates), sorted as in the file.
    warnings : list of str
    """
    rows, cols = shape
    regions: list[dict[str, Any]] = []
    warns: list[str] = []
    seq = ds.get("SequenceOfUltrasoundRegions") or []
    for i, item in enumerate(seq):
        fmt = dicom_value(item, "RegionSpatialFormat")
        dtype = dicom_value(item, "RegionDataType")
        if fmt != SPATIAL_2D or dtype != DATA_TISSUE:
            continue
        try:
            x0 = int(dicom_value(item, "RegionLocationMinX0"))
            y0 = int(dicom_value(item, "RegionLocationMinY0"))
            x1 = int(dicom_value(item, "RegionLocationMaxX1"))
            y1 = int(dicom_value(item, "RegionLocationMaxY1"))
        except (TypeError, ValueError):
            warns.append(f"ultrasound region {i} has no usable location box; ignored")
            continue
        ux = dicom_value(item, "PhysicalUnitsXDirection")
        uy = dicom_value(item, "PhysicalUnitsYDirection")
        try:
            dx = float(dicom_value(item, "PhysicalDeltaX"))
            dy = float(dicom_value(item, "PhysicalDeltaY"))
        except (TypeError, ValueError):
            dx = dy = float("nan")
        if ux != UNITS_CM or uy != UNITS_CM or not (plausible_spacing(dx * 10.0) and plausible_spacing(dy * 10.0)):
            warns.append(
                f"ultrasound region {i} is tissue but its physical deltas are not plausible pixel sizes "
                f"in cm (units {ux}/{uy}, deltas {dx:g}/{dy:g}); ignored"
            )
            continue
        if x1 < x0 or y1 < y0:
            warns.append(f"ultrasound region {i} has an empty location box; ignored")
            continue
        full = (x1 - x0 + 1) * (y1 - y0 + 1)
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x1, cols - 1), min(y1, rows - 1)
        inside = max(cx1 - cx0 + 1, 0) * max(cy1 - cy0 + 1, 0)
        if inside < 0.5 * full:
            warns.append(
                f"ultrasound region {i} ({x0},{y0})-({x1},{y1}) lies mostly outside the {cols} x {rows} "
                "pixel matrix (the image was resized or cropped after the regions were written); its "
                "pixel size is not trusted"
            )
            continue
        if inside < 0.98 * full:
            warns.append(
                f"ultrasound region {i} ({x0},{y0})-({x1},{y1}) extends beyond the {cols} x {rows} pixel "
                "matrix; it was clipped"
            )
        ref = None
        rx, ry = dicom_value(item, "ReferencePixelX0"), dicom_value(item, "ReferencePixelY0")
        if rx is not None and ry is not None:
            ref = (float(ry) + y0, float(rx) + x0)  # (row, col) in image pixels
        regions.append({
            "index": i,
            "box": (cx0, cy0, cx1, cy1),
            "spacing_mm": (dy * 10.0, dx * 10.0),
            "flags": dicom_value(item, "RegionFlags"),
            "reference_px": ref,
        })
    return regions, warns


def _to_uint8(arr: np.ndarray, bits: int, path: str | Path | None = None) -> np.ndarray:
    """Scale stored values to 0-255 (8-bit data unchanged).

    Float data with NaN or infinite values (never B-mode echo signal) are refused rather
    than cast to a made-up 0.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        from ..errors import UnsupportedImageError

        raise UnsupportedImageError(
            "ultrasound pixel data holds NaN or infinite values, which are not echo signal",
            path=path, fix="re-export the frames as integer B-mode data")
    if bits <= 8:
        return np.clip(arr, 0, 255).astype(np.uint8)
    top = float(2 ** bits - 1)
    return np.clip(np.rint(arr.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)


def _grey_and_color(ds: Any, arr: np.ndarray, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey luminance (float32, 0-255) and RGB uint8 (or None) of one decoded frame."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:  # missing/damaged LUT descriptors
            raise UnsupportedImageError(
                f"PALETTE COLOR image whose palette cannot be applied ({type(exc).__name__}: {exc})",
                path=path, fix="re-export the image as RGB or MONOCHROME2",
            ) from exc
        # LUT entries are 8 or 16 bit; the descriptor says which
        desc = ds.get("RedPaletteColorLookupTableDescriptor")
        lut_bits = int(desc[2]) if desc is not None and len(desc) > 2 else (16 if rgb.dtype != np.uint8 else 8)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if lut_bits > 8 and rgb.dtype != np.uint8 and ts is not None and not ts.is_little_endian \
                and int(rgb.max()) <= 255 and not ds.get("SegmentedRedPaletteColorLookupTableData"):
            # pydicom returns big-endian 16-bit LUT entries byte-swapped (0xFF00 read as
            # 0x00FF): every entry below 256 in a 16-bit palette is that signature
            rgb = rgb.byteswap()
        if rgb.dtype != np.uint8:
            rgb = (rgb.astype(np.uint32) >> 8).astype(np.uint8) if lut_bits > 8 else np.clip(rgb, 0, 255).astype(np.uint8)
        color = rgb
    elif arr.ndim == 3 and arr.shape[-1] == 3:
        color = _to_uint8(arr, bits, path)
    else:
        grey = _to_uint8(arr, bits, path).astype(np.float32)
        if photometric == "MONOCHROME1":
            grey = 255.0 - grey
        return grey, None
    from .raster import to_grey

    return to_grey(color), np.ascontiguousarray(color)


def _decode_frame(ds: Any, path: str | Path, index: int | None) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    as_rgb = int(ds.get("SamplesPerPixel") or 1) == 3 and photometric != "RGB"
    arr = decode_pixels(ds, path, frame=index, as_rgb=as_rgb)
    return arr


def overlay_mask(grey: np.ndarray, color: np.ndarray | None, spacing_mm: tuple[float, float] | None = None) -> np.ndarray:
    """Pixels that are graphics, not echo: colour, thin bright marks, flat grey graphics.

    Parameters
    ----------
    grey : ndarray
        Grey luminance, 0-255.
    color : ndarray, optional
        RGB uint8 of the same frame.
    spacing_mm : (float, float), optional
        Unused for the pixel-scale tests (graphics are drawn in screen pixels).

    Returns
    -------
    ndarray of bool
        True on overlay pixels (dilated by 2 pixels, to cover anti-aliased edges).
    """
    import cv2

    g8 = np.clip(grey, 0, 255).astype(np.uint8)
    over = np.zeros(grey.shape, bool)
    if color is not None:
        c = color.astype(np.int16)
        chroma = c.max(axis=2) - c.min(axis=2)
        over |= chroma > CHROMA_LIMIT
    # thin bright graphics: text strokes, caliper crosses, dotted lines, fan-edge ticks.
    # Bright pixels that a 5 x 5 opening removes entirely are thinner than ~4 pixels;
    # a speckle grain of the tissue is rarely that bright and that isolated.
    bright = (g8 >= 120).astype(np.uint8)
    if bright.any():
        opened = cv2.morphologyEx(bright, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5)))
        # keep only thin bright pixels whose surroundings are much darker (graphics sit on
        # tissue or black; a bright tissue interface fades out gradually)
        local = cv2.blur(g8, (9, 9)).astype(np.int16)
        thin = (bright > 0) & (opened == 0) & (g8.astype(np.int16) - local > 45)
        if thin.any():
            # graphics are glyphs and lines (>= 7 pixels long) of an even grey, or
            # dots of one exact grey value; bright speckle grains and fibres of tissue
            # are short or uneven
            from ..measure import label, regionprops_table

            lab, n = label(thin)
            t = regionprops_table(lab, g8, spacing=(1.0, 1.0))
            extent = np.maximum(t["bbox-2"] - t["bbox-0"], t["bbox-3"] - t["bbox-1"])
            flat_dot = (t["intensity_max"] == t["intensity_min"]) & (t["num_pixels"] >= 3)
            even = (t["intensity_max"] - t["intensity_min"]) <= 16
            keep = t["label"][((extent >= 7) & even) | flat_dot]
            lut = np.zeros(n + 1, bool)
            lut[keep] = True
            thin = lut[lab]
        over |= thin
    # flat graphics (grey bars, filled labels): no speckle at all over 5 x 5 pixels
    g = grey.astype(np.float32)
    mean = cv2.blur(g, (5, 5))
    var = cv2.blur(g * g, (5, 5)) - mean * mean
    flat = (var < 0.25) & (g > 20) & (g < 250)
    if flat.any():
        flat = cv2.morphologyEx(flat.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
        over |= flat
    if over.any():
        over = cv2.dilate(over.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return over


def fan_mask(grey: np.ndarray, box: tuple[int, int, int, int] | None = None, overlay: np.ndarray | None = None) -> np.ndarray:
    """The imaged fan (sector, curved or linear field) inside a region box.

    The convex hull of the largest connected area of echo signal (grey > 3 after a
    light blur and an opening that removes graphics), so anechoic areas inside the fan
    (cysts, bladder) stay in while black margins, text and marks outside it do not.

    Parameters
    ----------
    grey : ndarray
        Grey luminance (0-255).
    box : (x0, y0, x1, y1), optional
        Region box (inclusive); default the whole image.
    overlay : ndarray of bool, optional
        Overlay pixels to ignore.

    Returns
    -------
    ndarray of bool
    """
    import cv2

    rows, cols = grey.shape
    x0, y0, x1, y1 = box if box is not None else (0, 0, cols - 1, rows - 1)
    out = np.zeros((rows, cols), bool)
    sub = grey[y0:y1 + 1, x0:x1 + 1]
    if sub.size == 0:
        return out
    sig = cv2.blur(np.clip(sub, 0, 255).astype(np.uint8), (5, 5)) > 3
    if overlay is not None:
        sig &= ~overlay[y0:y1 + 1, x0:x1 + 1]
    sig = cv2.morphologyEx(sig.astype(np.uint8), cv2.MORPH_OPEN,
                           cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(sig, connectivity=8)
    if n <= 1:
        return out
    areas = stats[1:, cv2.CC_STAT_AREA]
    big = 1 + int(np.argmax(areas))
    keep = (lab == big)
    # other large pieces of the same fan (split by an anechoic band) join the hull
    for k in np.flatnonzero(areas >= 0.2 * areas.max()) + 1:
        keep |= lab == k
    pts = cv2.findNonZero(keep.astype(np.uint8))
    hull = cv2.convexHull(pts)
    filled = np.zeros(sub.shape, np.uint8)
    cv2.fillConvexPoly(filled, hull, 1)
    out[y0:y1 + 1, x0:x1 + 1] = filled > 0
    return out


def _static_mask(ds: Any, path: str | Path, n_frames: int, shape: tuple[int, int]) -> np.ndarray | None:
    """Bright pixels identical in every sampled cine frame (burned-in graphics)."""
    if n_frames < 3:
        return None
    idx = np.unique(np.linspace(0, n_frames - 1, min(STATIC_FRAMES, n_frames)).round().astype(int))
    stack = []
    for k in idx:
        grey, _ = _grey_and_color(ds, _decode_frame(ds, path, int(k)), path)
        stack.append(grey)
    st = np.stack(stack)
    spread = st.max(axis=0) - st.min(axis=0)
    # burned-in graphics are identical in every frame (even through JPEG: the encoder
    # reproduces unchanged blocks exactly), while live tissue changes with motion and
    # noise; one grey level of slack
    static = (spread <= 1.0) & (st.mean(axis=0) > 60.0)
    import cv2

    static = cv2.morphologyEx(static.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    return cv2.dilate(static, np.ones((5, 5), np.uint8)) > 0


def _frame_image(
    ds: Any, path: str | Path, index: int | None, regions: list[dict[str, Any]], static: np.ndarray | None,
    base_warnings: list[str], spacing: tuple[float, float] | None, spacing_source: str | None,
    metadata: dict[str, Any],
) -> Image:
    arr = _decode_frame(ds, path, index)
    if arr.ndim == 4:  # a one-frame multi-frame
        arr = arr[0]
    grey, color = _grey_and_color(ds, arr, path)
    if grey.ndim != 2:
        raise UnsupportedImageError(f"unexpected ultrasound pixel layout {arr.shape}", path=path)
    over = overlay_mask(grey, color)
    if static is not None and static.shape == over.shape:
        over |= static
    valid = np.zeros(grey.shape, bool)
    boxes = [r["box"] for r in regions] or [None]
    fans = []
    for box in boxes:
        fan = fan_mask(grey, box, over)
        fans.append(fan)
        valid |= fan
    fan_all = valid.copy()
    valid &= ~over
    geometry: dict[str, Any] = {
        "fan": fan_all,
        "regions": [dict(r, fan_px=int(f.sum())) for r, f in zip(regions, fans)] if regions else [],
        "frame": index,
        "n_frames": number_of_frames(ds),
        "overlay_px": int(over.sum()),
    }
    return Image(
        pixels=grey,
        spacing_mm=spacing,
        modality="US",
        valid_mask=valid,
        source=str(path),
        metadata=dict(metadata),
        warnings=list(base_warnings),
        spacing_source=spacing_source,
        color=color,
        geometry=geometry,
    )


def _prepare(path: str | Path, budget: int | None):
    ds = read_dataset(path, budget=budget)
    rows, cols = int(ds.Rows), int(ds.Columns)
    regions, warns = ultrasound_regions(ds, (rows, cols))
    spacing = None
    source = None
    if regions:
        areas = [(r["box"][2] - r["box"][0] + 1) * (r["box"][3] - r["box"][1] + 1) for r in regions]
        main = regions[int(np.argmax(areas))]
        spacing = tuple(float(s) for s in main["spacing_mm"])
        source = f"SequenceOfUltrasoundRegions[{main['index']}] PhysicalDeltaX/Y (cm x 10)"
        others = {tuple(round(s, 6) for s in r["spacing_mm"]) for r in regions}
        if len(others) > 1:
            warns.append(
                "the B-mode regions have different pixel sizes ("
                + ", ".join(f"{a:.4g} x {b:.4g} mm" for a, b in sorted(others))
                + "); each finding is measured with its own region's size, the image-level size is "
                  f"that of region {main['index']}"
            )
    else:
        warns.append(
            f"{Path(path).name}: no tissue region with a physical size (SequenceOfUltrasoundRegions) -- "
            "sizes are not reported in mm (pass pixel_size_mm= / --pixel-size)"
        )
    meta = basic_metadata(ds)
    meta["NumberOfFrames"] = number_of_frames(ds)
    return ds, regions, warns, spacing, source, meta


def load_ultrasound(path: str | Path, *, frame: int | str | None = None, budget: int | None = None) -> Image:
    """Load an ultrasound DICOM as an :class:`Image` (grey B-mode, colour kept).

    Parameters
    ----------
    path : str or Path
        Ultrasound image DICOM (single frame or cine).
    frame : int or "all", optional
        Cine: the frame to analyse (0-based; default the middle frame), or ``"all"``
        for a 3D Image ``(frames, rows, cols)`` whose first axis is the frame index
        (``geometry["frame_axis"] == "time"``, its spacing 1.0 is not a length).
    budget : int, optional
        Pixel budget (see :func:`calcdetect.io.dicom.max_pixels`).

    Returns
    -------
    Image
        ``modality="US"``, ``pixels`` grey 0-255, ``color`` RGB uint8 when the file is
        colour, ``valid_mask`` the tissue fan minus overlays, ``spacing_mm`` from the
        largest B-mode region (None without one), ``geometry["regions"]`` every B-mode
        region with its box and spacing.

    Raises
    ------
    CalcdetectError
        Unreadable file, missing decoder, bad frame index, unusable palette.
    """
    if frame == "all":
        frames = load_ultrasound_frames(path, budget=budget)
        if len(frames) == 1:
            return frames[0]
        first = frames[0]
        sp = None if first.spacing_mm is None else (1.0,) + tuple(first.spacing_mm)
        geometry = dict(first.geometry, frame_axis="time", frame=None)
        color = None
        return Image(
            pixels=np.stack([f.pixels for f in frames]),
            spacing_mm=sp,
            modality="US",
            valid_mask=np.stack([f.valid_mask for f in frames]),
            source=first.source,
            metadata=dict(first.metadata),
            warnings=list(first.warnings) + [
                f"cine of {len(frames)} frames analysed frame by frame; the first axis is the frame "
                "index (not a length)"
            ],
            spacing_source=first.spacing_source,
            color=color,
            geometry=geometry,
        )
    ds, regions, warns, spacing, source, meta = _prepare(path, budget)
    n = number_of_frames(ds)
    if frame is None:
        index = n // 2 if n > 1 else None
    else:
        try:
            index = int(frame)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"frame {frame!r} must be a frame index or 'all'") from None
        if not 0 <= index < n:
            raise InvalidParameterError(
                f"frame {index} is out of range: the file has {n} frame(s)", fix=f"choose 0..{n - 1}"
            )
        if n == 1:
            index = None
    static = _static_mask(ds, path, n, (int(ds.Rows), int(ds.Columns))) if n > 1 else None
    if n > 1:
        warns = warns + [f"cine of {n} frames: frame {index} analysed (use frame='all' / --frames all for every frame)"]
    return _frame_image(ds, path, index, regions, static, warns, spacing, source, meta)


def load_ultrasound_frames(path: str | Path, *, budget: int | None = None) -> list[Image]:
    """Every frame of an ultrasound file as a list of 2D :class:`Image` objects.

    Static overlays are found once from the whole cine and masked in every frame.
    A single-frame file gives a list of one.

    Parameters
    ----------
    path : str or Path
        Ultrasound image DICOM (single frame or cine).
    budget : int, optional
        Pixel budget (see :func:`calcdetect.io.dicom.max_pixels`).

    Returns
    -------
    list of Image
        One per frame, in frame order, each as :func:`load_ultrasound` returns a single
        frame (``modality="US"``, grey pixels, ``valid_mask``, ``spacing_mm`` in mm from
        the largest B-mode region or ``None``).

    Raises
    ------
    CalcdetectError
        Unreadable file, missing decoder, pixel budget exceeded, unusable palette (as
        for :func:`load_ultrasound`).
    """
    ds, regions, warns, spacing, source, meta = _prepare(path, budget)
    n = number_of_frames(ds)
    static = _static_mask(ds, path, n, (int(ds.Rows), int(ds.Columns))) if n > 1 else None
    if n == 1:
        return [_frame_image(ds, path, None, regions, static, warns, spacing, source, meta)]
    return [_frame_image(ds, path, k, regions, static, warns, spacing, source, meta) for k in range(n)]
