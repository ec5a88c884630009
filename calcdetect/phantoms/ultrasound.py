"""Ultrasound phantoms and insertion of shadowing foci into real B-mode images.

:func:`ultrasound_phantom` simulates a B-mode frame: Rayleigh speckle (a complex
Gaussian scattering field blurred by an anisotropic point-spread function, envelope
detected and log compressed to 0-255 over a 50 dB dynamic range), skin and fat
layers, echogenic foci with a posterior acoustic shadow *along the beam* (down the
columns for a linear probe, along rays from the apex for a sector/curved probe),
bright decoys of the same brightness *without* shadow, calipers with a dotted
measurement line, and burned-in text.  The Image goes through the same overlay and
fan masking as a loaded DICOM (:mod:`calcdetect.io.ultrasound`).

:func:`insert_shadowing_focus` puts a focus (with or without shadow) of known size
into a real B-mode :class:`~calcdetect.Image`, for validation on real texture.

:func:`write_ultrasound_dicom` writes an Image as a US DICOM with a Sequence of
Ultrasound Regions (so the DICOM path can be tested end to end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidParameterError
from ..image import Image

DYNAMIC_RANGE_DB = 50.0

#: default layout, in mm from the top-left of the image: (depth, lateral, diameter)
DEFAULT_FOCI = ((12.0, 14.0, 3.0), (22.0, 40.0, 5.0), (9.0, 54.0, 2.5))
DEFAULT_DECOYS = ((30.0, 24.0, 3.0), (14.0, 30.0, 2.5))
#: sector defaults, polar about the apex: (radius_mm, angle_deg, diameter_mm)
DEFAULT_SECTOR_FOCI = ((28.0, -20.0, 3.0), (36.0, 14.0, 5.0), (50.0, -3.0, 2.5))
DEFAULT_SECTOR_DECOYS = ((30.0, 25.0, 3.0), (45.0, -28.0, 2.5))


def _speckle(rng: np.random.Generator, shape: tuple[int, int], spacing_mm: float,
             axial_mm: float = 0.15, lateral_mm: float = 0.35) -> np.ndarray:
    """Rayleigh-distributed envelope of a blurred complex Gaussian field (mean ~1)."""
    import cv2

    re = rng.standard_normal(shape).astype(np.float32)
    im = rng.standard_normal(shape).astype(np.float32)
    sy, sx = max(axial_mm / spacing_mm, 0.5), max(lateral_mm / spacing_mm, 0.5)
    re = cv2.GaussianBlur(re, (0, 0), sigmaX=sx, sigmaY=sy)
    im = cv2.GaussianBlur(im, (0, 0), sigmaX=sx, sigmaY=sy)
    env = np.hypot(re, im)
    return env / float(env.mean())


def _log_compress(amp: np.ndarray, ref: float = 1.0) -> np.ndarray:
    """Amplitude -> 0-255 grey over ``DYNAMIC_RANGE_DB`` (ref maps to ~mid grey)."""
    db = 20.0 * np.log10(np.maximum(amp, 1e-6) / ref)
    return np.clip((db + 0.55 * DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB * 255.0, 0, 255).astype(np.float32)


def _smoothstep(x: np.ndarray, width: float) -> np.ndarray:
    """0 -> 1 across [-width/2, width/2] (a soft edge)."""
    return np.clip(0.5 + x / max(width, 1e-6), 0.0, 1.0)


def _disk_weight(yy, xx, cy, cx, radius_px):
    """Anti-aliased disk coverage (1 inside, 0 outside, linear over one pixel)."""
    d = np.hypot(yy - cy, xx - cx)
    return np.clip(radius_px + 0.5 - d, 0.0, 1.0)


def _shadow_weight(yy, xx, cy, cx, radius_px, apex_px, soft_px):
    """1 in the acoustic shadow of a disk (behind it along the beam), soft edges."""
    if apex_px is None:  # linear: straight down the columns
        lateral = radius_px - np.abs(xx - cx)
        behind = yy - cy
    else:
        ay, ax = apex_px
        r = np.hypot(yy - ay, xx - ax)
        th = np.arctan2(xx - ax, yy - ay)
        rc = np.hypot(cy - ay, cx - ax)
        thc = np.arctan2(cx - ax, cy - ay)
        lateral = radius_px - np.abs(th - thc) * rc
        behind = r - rc
    w = _smoothstep(lateral, soft_px) * _smoothstep(behind, 2 * soft_px)
    return w


def _fan(shape, spacing_mm, geometry):
    """Imaged field and apex (pixels) of a linear or sector phantom."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    if geometry == "linear":
        fan = np.zeros(shape, bool)
        fan[int(rows * 0.04):, int(cols * 0.03):int(cols * 0.97)] = True
        return fan, None, yy, xx
    # curved/sector probe: apex above the image, +-35 degrees, from r0 to the bottom
    ay, ax = -0.25 * rows, cols / 2.0
    r = np.hypot(yy - ay, xx - ax)
    th = np.arctan2(xx - ax, yy - ay)
    r0 = 0.25 * rows + rows * 0.04
    fan = (np.abs(th) <= np.deg2rad(35.0)) & (r >= r0) & (r <= rows * 1.2)
    return fan, (ay, ax), yy, xx


def _parse(items, spacing_mm, default):
    out = []
    for it in (default if items is None else items):
        if isinstance(it, dict):
            if "centroid_px" in it:
                cy, cx = it["centroid_px"]
            else:
                cy, cx = it["center_mm"][0] / spacing_mm, it["center_mm"][1] / spacing_mm
            d = float(it["diameter_mm"])
            shape = it.get("shape", "disk")
        else:
            cy, cx, d = it[0] / spacing_mm, it[1] / spacing_mm, float(it[2])
            shape = "disk"
        if not (np.isfinite(d) and d > 0):
            raise InvalidParameterError(f"phantom focus diameter must be positive, got {d!r}")
        if shape not in ("disk", "arc"):
            raise InvalidParameterError(f"phantom focus shape must be 'disk' or 'arc', got {shape!r}")
        out.append((float(cy), float(cx), d, shape))
    return out


def _arc_weight(yy, xx, cy, cx, radius_px, thick_px, apex_px):
    """The transducer-facing half ring of a disk: the echo of a large calcification's
    surface (the beam does not enter it, so its body is dark)."""
    ring = np.clip(radius_px + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1) * \
        np.clip(np.hypot(yy - cy, xx - cx) - (radius_px - thick_px) + 0.5, 0, 1)
    if apex_px is None:
        front = yy <= cy
    else:
        front = np.hypot(yy - apex_px[0], xx - apex_px[1]) <= np.hypot(cy - apex_px[0], cx - apex_px[1])
    return ring * front


def ultrasound_phantom(
    shape: tuple[int, int] = (480, 640),
    spacing_mm: float = 0.1,
    geometry: str = "linear",
    foci: Sequence[Any] | None = None,
    decoys: Sequence[Any] | None = None,
    calipers: bool = True,
    text: bool = True,
    seed: int = 0,
    *,
    focus_gain_db: float = 20.0,
    shadow_db: float = -18.0,
) -> tuple[Image, list[dict[str, Any]]]:
    """A simulated B-mode frame with shadowing foci, decoys, calipers and text.

    Parameters
    ----------
    shape : (rows, cols)
    spacing_mm : float
        Pixel size (square) in mm.
    geometry : {"linear", "sector"}
        Linear probe (rectangular field, beam down the columns) or curved/sector probe
        (fan of +-35 degrees from an apex above the image).
    foci : sequence, optional
        Calcifications: ``(row_mm, col_mm, diameter_mm)`` tuples (mm from the
        image's top-left corner) or dicts with ``centroid_px`` or ``center_mm``,
        ``diameter_mm`` and optionally ``shape``: ``"disk"`` (default, a uniformly
        echoing nodule) or ``"arc"`` (only the 1 mm thick, transducer-facing half of
        its surface echoes, as large calcifications do; truth ``centroid_px`` is then
        the arc's centroid).  Default: three foci of 2.5-5 mm inside the field (laid out
        for the default shape and spacing).
    decoys : sequence, optional
        Bright foci without shadow, same forms.  Default: two of 2.5-3 mm.
    calipers : bool
        Draw two caliper pairs ("+" marks) with dotted lines over tissue.
    text : bool
        Burn in text inside and outside the field.
    seed : int
        Random seed (speckle and layers).
    focus_gain_db, shadow_db : float
        Echo of a focus relative to tissue, and of its shadow.

    Returns
    -------
    image : Image
        ``modality="US"``, grey 0-255, ``valid_mask`` and ``geometry`` as from the
        loader (one B-mode region covering the image).
    truth : list of dict
        ``centroid_px``, ``diameter_mm``, ``shadow`` (True for foci, False for
        decoys), ``kind`` ("focus" or "decoy"), ``shape``.
    """
    import cv2

    if geometry not in ("linear", "sector"):
        raise InvalidParameterError(f"geometry must be 'linear' or 'sector', got {geometry!r}")
    if not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise InvalidParameterError("spacing_mm must be a positive number")
    rng = np.random.default_rng(seed)
    rows, cols = int(shape[0]), int(shape[1])
    fan, apex, yy, xx = _fan((rows, cols), spacing_mm, geometry)
    if geometry == "linear":
        f_def, d_def = DEFAULT_FOCI, DEFAULT_DECOYS
    else:
        ay_mm, ax_mm = apex[0] * spacing_mm, apex[1] * spacing_mm

        def polar(items):
            return tuple((ay_mm + r * np.cos(np.deg2rad(a)), ax_mm + r * np.sin(np.deg2rad(a)), d) for r, a, d in items)

        f_def, d_def = polar(DEFAULT_SECTOR_FOCI), polar(DEFAULT_SECTOR_DECOYS)
    f_list = _parse(foci, spacing_mm, f_def)
    d_list = _parse(decoys, spacing_mm, d_def)

    # echogenicity: bright skin line, fat with septa, a muscle layer, slow variation
    top = float(np.flatnonzero(fan.any(axis=1))[0])
    if apex is None:
        depth_px = yy - top
    else:
        depth_px = np.hypot(yy - apex[0], xx - apex[1]) - (top - apex[0])
    depth_mm = depth_px * spacing_mm
    echo = np.ones((rows, cols), np.float32)
    echo *= np.where(depth_mm < 1.5, 2.2, 1.0)                          # dermis
    echo *= np.where((depth_mm >= 1.5) & (depth_mm < 20.0), 0.75, 1.0)  # subcutaneous fat
    slow = cv2.GaussianBlur(rng.standard_normal((rows, cols)).astype(np.float32), (0, 0), 8.0 / spacing_mm)
    echo *= np.exp(slow / (slow.std() + 1e-6) * 0.12).astype(np.float32)
    for _ in range(3):  # thin septa (bright lines across the beam, no shadow)
        d0 = rng.uniform(4.0, 30.0)
        echo *= np.where(np.abs(depth_mm - d0) < 0.25, 1.8, 1.0).astype(np.float32)

    soft = 0.3 / spacing_mm
    truth: list[dict[str, Any]] = []
    bright = np.float32(10 ** (focus_gain_db / 20.0))
    shade = np.float32(10 ** (shadow_db / 20.0))
    weights = []
    for kind, items in (("focus", f_list), ("decoy", d_list)):
        for cy, cx, d, shape_ in items:
            rad = 0.5 * d / spacing_mm
            if shape_ == "arc":
                w = _arc_weight(yy, xx, cy, cx, rad, 1.0 / spacing_mm, apex)
                if kind == "focus":  # the body behind the echoing surface is dark too
                    body = _disk_weight(yy, xx, cy, cx, rad) * (1 - w)
                    echo *= (1.0 - body * (1.0 - shade)).astype(np.float32)
                ty, tx = float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())
            else:
                w = _disk_weight(yy, xx, cy, cx, rad)
                ty, tx = cy, cx
            if kind == "focus":
                sw = _shadow_weight(yy, xx, cy, cx, rad, apex, soft)
                echo *= (1.0 - sw * (1.0 - shade)).astype(np.float32)
            weights.append(w)
            truth.append({"centroid_px": (ty, tx), "diameter_mm": d, "shadow": kind == "focus", "kind": kind,
                          "shape": shape_})
    amp = _speckle(rng, (rows, cols), spacing_mm) * echo
    for t, w in zip(truth, weights):
        # the focus: a strong, fairly uniform reflector with some speckle of its own
        foc = bright * (0.8 + 0.2 * _speckle(rng, (rows, cols), spacing_mm))
        amp = amp * (1 - w) + foc * w
    grey = _log_compress(amp, ref=1.0)
    grey[~fan] = 0.0

    if calipers:
        _draw_calipers(grey, rng, fan, spacing_mm, truth)
    if text:
        _draw_text(grey, fan)
    return _as_image(grey, spacing_mm, geometry, source=f"<ultrasound phantom {geometry} seed={seed}>"), truth


def _draw_calipers(grey, rng, fan, spacing_mm, truth):
    """Two caliper pairs: '+' marks (9 px arms, 1 px) joined by a dotted line."""
    import cv2

    rows, cols = grey.shape
    placed = 0
    for _ in range(200):
        if placed == 2:
            break
        y1, x1 = rng.uniform(0.2 * rows, 0.9 * rows), rng.uniform(0.1 * cols, 0.9 * cols)
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(60, 160)
        y2, x2 = y1 + length * np.sin(ang), x1 + length * np.cos(ang)
        pts = [(int(y1), int(x1)), (int(y2), int(x2))]
        if not all(0 <= y < rows and 0 <= x < cols and fan[y, x] for y, x in pts):
            continue
        # keep the marks off the truth foci (a caliper over a focus is fine clinically,
        # but then the truth would be ambiguous)
        if any(min(np.hypot(y - t["centroid_px"][0], x - t["centroid_px"][1]) for y, x in pts)
               < 0.5 * t["diameter_mm"] / spacing_mm + 15 for t in truth):
            continue
        for y, x in pts:
            cv2.line(grey, (x - 6, y), (x + 6, y), 255.0, 1)
            cv2.line(grey, (x, y - 6), (x, y + 6), 255.0, 1)
        n = int(length // 8)
        for k in range(1, n):
            yy = int(round(y1 + (y2 - y1) * k / n))
            xx = int(round(x1 + (x2 - x1) * k / n))
            grey[yy:yy + 2, xx:xx + 2] = 235.0
        placed += 1


def _draw_text(grey, fan):
    """Burned-in labels: one over the tissue, one in the black margin."""
    import cv2

    rows, cols = grey.shape
    ys, xs = np.nonzero(fan)
    y_in = int(np.percentile(ys, 60))
    x_in = int(np.percentile(xs, 70))
    canvas = np.zeros(grey.shape, np.uint8)
    cv2.putText(canvas, "D1 1.06cm", (x_in, y_in), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 230, 1, cv2.LINE_8)
    cv2.putText(canvas, "L12-5 38Hz", (int(cols * 0.55), int(rows * 0.93)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 220, 1,
                cv2.LINE_8)
    cv2.putText(canvas, "GEN", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 255, 1, cv2.LINE_8)
    grey[canvas > 0] = canvas[canvas > 0]


def _as_image(grey: np.ndarray, spacing_mm: float, geometry: str, source: str) -> Image:
    from ..io.ultrasound import fan_mask, overlay_mask

    over = overlay_mask(grey, None)
    fan = fan_mask(grey, None, over)
    rows, cols = grey.shape
    return Image(
        pixels=grey.astype(np.float32),
        spacing_mm=(spacing_mm, spacing_mm),
        modality="US",
        valid_mask=fan & ~over,
        source=source,
        spacing_source="phantom",
        geometry={
            "regions": [{"index": 0, "box": (0, 0, cols - 1, rows - 1), "spacing_mm": (spacing_mm, spacing_mm),
                         "flags": None, "reference_px": None}],
            "fan": fan,
            "phantom_geometry": geometry,
        },
    )


def insert_shadowing_focus(
    image: Image,
    centroid_px: tuple[float, float],
    diameter_mm: float,
    *,
    shadow: bool = True,
    brightness: float = 235.0,
    shadow_factor: float = 0.2,
    shadow_mm: float | None = None,
    probe: str = "auto",
    seed: int = 0,
    shape: str = "disk",
) -> tuple[Image, dict[str, Any]]:
    """Insert an echogenic focus (with or without acoustic shadow) into a B-mode image.

    Parameters
    ----------
    image : Image
        A 2D ultrasound Image with a pixel size (from :func:`calcdetect.load`).
    centroid_px : (row, col)
        Centre of the focus.
    diameter_mm : float
        Diameter of the (disk-shaped) focus.
    shadow : bool
        Darken the tissue behind the focus along the beam (a calcification) or not (a
        bright decoy: a specular reflector or fat lobule).
    brightness : float
        Grey level (0-255) of the focus; the local texture modulates it by +-10%.
    shadow_factor : float
        Grey-level factor applied in the shadow (0.2 keeps a little texture).
    shadow_mm : float, optional
        Shadow length along the beam; default to the end of the image.
    probe : {"auto", "linear", "sector"}
        Beam geometry, as in :func:`calcdetect.detect.ultrasound.beam_geometry`;
        estimated from the fan of the B-mode region holding the focus.
    seed : int
        For the focus texture.
    shape : {"disk", "arc"}
        A uniformly echoing nodule, or only the 1 mm thick transducer-facing half of
        its surface (a large calcification; with ``shadow`` its body is darkened too).
        The truth ``centroid_px`` of an arc is the arc's centroid.

    Returns
    -------
    image : Image
        A copy with the focus (and shadow) inserted; ``color`` is updated too.
    truth : dict
        ``centroid_px``, ``diameter_mm``, ``shadow``.
    """
    from ..detect.ultrasound import _regions, beam_geometry

    sp = image.require_spacing("inserting a focus of known size")
    if image.ndim != 2:
        raise InvalidParameterError("insert_shadowing_focus needs a 2D image (one frame)")
    if not (np.isfinite(diameter_mm) and diameter_mm > 0):
        raise InvalidParameterError("diameter_mm must be positive")
    cy, cx = float(centroid_px[0]), float(centroid_px[1])
    rows, cols = image.shape
    fan_all = image.geometry.get("fan")
    if fan_all is None:
        fan_all = image.valid_mask if image.valid_mask is not None else np.ones(image.shape, bool)
    region = None
    for reg in _regions(image, image.shape):
        x0, y0, x1, y1 = reg["box"]
        if y0 <= cy <= y1 and x0 <= cx <= x1:
            region = reg
            break
    if region is None:
        raise InvalidParameterError(f"centroid {centroid_px} lies outside every B-mode region")
    x0, y0, x1, y1 = region["box"]
    fan = np.zeros(image.shape, bool)
    fan[y0:y1 + 1, x0:x1 + 1] = fan_all[y0:y1 + 1, x0:x1 + 1]
    rsp = tuple(region["spacing_mm"] or sp[-2:])
    geom = beam_geometry(fan, rsp, probe)
    apex_px = None if geom["probe"] == "linear" else (geom["apex_mm"][0] / rsp[0], geom["apex_mm"][1] / rsp[1])
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    rad = 0.5 * diameter_mm / rsp[1]
    out = image.pixels.copy()
    if shadow:
        w = _shadow_weight(yy, xx, cy, cx, rad, apex_px, 0.3 / rsp[1])
        if shadow_mm is not None:
            if apex_px is None:
                beyond = (yy - cy) * rsp[0] - shadow_mm
            else:
                rc = np.hypot(cy - apex_px[0], cx - apex_px[1])
                beyond = (np.hypot(yy - apex_px[0], xx - apex_px[1]) - rc) * rsp[0] - shadow_mm
            w = w * (1.0 - _smoothstep(beyond, 2.0 / rsp[0]))
        w = w * fan
        out = out * (1.0 - w * (1.0 - shadow_factor))
    if shape not in ("disk", "arc"):
        raise InvalidParameterError(f"shape must be 'disk' or 'arc', got {shape!r}")
    rng = np.random.default_rng(seed)
    if shape == "arc":
        disk = _arc_weight(yy, xx, cy, cx, rad, 1.0 / rsp[1], apex_px)
        if shadow:
            body = _disk_weight(yy, xx, cy, cx, rad) * (1 - disk)
            out = out * (1.0 - body * (1.0 - shadow_factor))
        ty, tx = float((disk * yy).sum() / disk.sum()), float((disk * xx).sum() / disk.sum())
    else:
        disk = _disk_weight(yy, xx, cy, cx, rad)
        ty, tx = cy, cx
    local = image.pixels / max(float(np.percentile(image.pixels[fan], 90)), 1.0)
    tex = brightness * (0.9 + 0.2 * np.clip(local, 0, 1)) * (0.95 + 0.1 * rng.random(image.shape))
    out = out * (1 - disk) + np.clip(tex, 0, 255) * disk
    out = np.clip(out, 0, 255).astype(np.float32)
    color = image.color
    if color is not None:
        changed = np.abs(out - image.pixels) > 0.5
        color = color.copy()
        color[changed] = np.clip(np.rint(out[changed]), 0, 255).astype(np.uint8)[:, None]
    new = image.with_pixels(out, color=color)
    return new, {"centroid_px": (ty, tx), "diameter_mm": float(diameter_mm), "shadow": bool(shadow), "shape": shape,
                 "kind": "focus" if shadow else "decoy"}


def write_ultrasound_dicom(image: Image, path: str | Path) -> Path:
    """Write a 2D ultrasound Image as a US DICOM (MONOCHROME2, 8 bit) with regions.

    Each entry of ``image.geometry["regions"]`` (or one region covering the image)
    becomes a Sequence of Ultrasound Regions item: RegionSpatialFormat 1 (2D),
    RegionDataType 1 (tissue), PhysicalUnits 3 (cm), PhysicalDelta = spacing / 10.

    Returns
    -------
    Path
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import UltrasoundImageStorage

    from ._dicom import new_dataset, set_grey_pixels, write

    sp = image.require_spacing("writing a US DICOM with regions")
    if image.ndim != 2:
        raise InvalidParameterError("write_ultrasound_dicom writes one 2D frame")
    px = np.clip(np.rint(image.pixels), 0, 255).astype(np.uint8)
    ds = new_dataset(UltrasoundImageStorage, "US", "Phantom^Ultrasound")
    set_grey_pixels(ds, px)
    regions = image.geometry.get("regions") or [
        {"box": (0, 0, px.shape[1] - 1, px.shape[0] - 1), "spacing_mm": tuple(sp)}]
    items = []
    for reg in regions:
        it = Dataset()
        x0, y0, x1, y1 = reg["box"]
        rs = reg.get("spacing_mm") or sp
        it.RegionSpatialFormat = 1
        it.RegionDataType = 1
        it.RegionFlags = 0
        it.RegionLocationMinX0 = int(x0)
        it.RegionLocationMinY0 = int(y0)
        it.RegionLocationMaxX1 = int(x1)
        it.RegionLocationMaxY1 = int(y1)
        it.PhysicalUnitsXDirection = 3
        it.PhysicalUnitsYDirection = 3
        it.PhysicalDeltaX = float(rs[1]) / 10.0
        it.PhysicalDeltaY = float(rs[0]) / 10.0
        items.append(it)
    ds.SequenceOfUltrasoundRegions = items
    return write(ds, path)
