"""Radiograph phantoms and focus insertion with known ground truth.

A plain-film calcification is a small dense sphere-like deposit; in projection its
signal is proportional to the chord length through it, i.e. the profile of a projected
sphere ``c * sqrt(1 - (r / R)^2)`` added to the raw (log-exposure-like, dense = bright)
signal.  Foci are rendered with 4 x 4 sub-pixel supersampling so that their area is
right to a fraction of a pixel.

* :func:`radiograph_phantom` builds a whole synthetic extremity radiograph: soft-tissue
  slab, a long bone with cortex and trabecular texture, a saturated lead letter in the air
  next to the limb, collimation (unexposed, bright) borders, correlated noise and foci of
  known size and contrast.
* :func:`insert_foci` adds foci of known size at known places to a *real* radiograph.
* :func:`write_radiograph_dicom` stores an :class:`~calcdetect.Image` as a CR DICOM file
  (with ``ImagerPixelSpacing``; optionally MONOCHROME1) so the loader can be tested on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidParameterError
from ..image import Image

__all__ = ["radiograph_phantom", "insert_foci", "random_foci", "render_focus", "write_radiograph_dicom"]

#: Raw-signal levels of the synthetic radiograph (12-bit, dense = bright).
AIR = 300.0
UNEXPOSED = 4095.0


def render_focus(
    canvas: np.ndarray, center_px: Sequence[float], diameter_px: float, contrast: float, *, supersample: int = 4
) -> None:
    """Add one projected-sphere focus to ``canvas`` in place.

    Parameters
    ----------
    canvas : ndarray
        2D float array.
    center_px : (float, float)
        Centre (row, col) in pixel index units (pixel centres at integers).
    diameter_px : float
        Sphere diameter in pixels.
    contrast : float
        Peak added signal (at the centre, through the full diameter).
    supersample : int
        Sub-pixel samples per axis.
    """
    r0, c0 = float(center_px[0]), float(center_px[1])
    rad = 0.5 * float(diameter_px)
    h = int(np.ceil(rad)) + 2
    top, left = int(np.floor(r0)) - h, int(np.floor(c0)) - h
    size = 2 * h + 2
    s = int(supersample)
    offs = (np.arange(size * s) + 0.5) / s - 0.5
    rr = (top + offs)[:, None] - r0
    cc = (left + offs)[None, :] - c0
    d2 = (rr ** 2 + cc ** 2) / max(rad, 1e-6) ** 2
    prof = np.sqrt(np.clip(1.0 - d2, 0.0, None)) * float(contrast)
    prof = prof.reshape(size, s, size, s).mean(axis=(1, 3))
    r1, c1 = max(top, 0), max(left, 0)
    r2, c2 = min(top + size, canvas.shape[0]), min(left + size, canvas.shape[1])
    if r1 >= r2 or c1 >= c2:
        return
    canvas[r1:r2, c1:c2] += prof[r1 - top:r2 - top, c1 - left:c2 - left].astype(canvas.dtype)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    import cv2

    n = rng.standard_normal(shape).astype(np.float32)
    if sigma_px > 0:
        n = cv2.GaussianBlur(n, (0, 0), sigma_px)
        n /= max(float(n.std()), 1e-6)
    return n


def radiograph_phantom(
    shape: tuple[int, int] = (1000, 1000),
    spacing_mm: float | None = 0.15,
    foci: Sequence[dict[str, Any]] | int | None = None,
    seed: int = 0,
    *,
    bone: bool = True,
    lead_marker: bool = True,
    collimation: bool = True,
    noise: float = 6.0,
    contrast_per_mm: float = 45.0,
    orientation: Sequence[str] = ("R", "F"),
) -> tuple[Image, list[dict[str, Any]]]:
    """A synthetic extremity radiograph with foci of known size, place and contrast.

    Parameters
    ----------
    shape : (int, int)
        Rows, columns.
    spacing_mm : float or None
        Pixel size (mm).  Sizes and positions are laid out in mm with this spacing; with
        ``None`` the image is built at 0.15 mm and reported without spacing.
    foci : int or sequence of dict, optional
        Number of random foci (default 12: diameters 1-6 mm, half over bone), or explicit
        foci, each ``{"centroid_px": [r, c], "diameter_mm": d}`` with optional
        ``"contrast"`` (peak signal; default ``contrast_per_mm * d``).
    seed : int
        Random seed (positions, noise, texture).
    bone : bool
        Add a long bone (cortical shell + trabecular texture) down the middle of the limb.
    lead_marker : bool
        Add a saturated lead letter "R" (about 12 mm) in the air beside the limb.
    collimation : bool
        Make a border of about 6 % on each side unexposed (uniform, saturated bright).
    noise : float
        Standard deviation of the (slightly correlated) noise, raw units.
    contrast_per_mm : float
        Default focus peak contrast per mm of diameter (projected thickness); the
        soft-tissue-to-air step is about 1000 and the bone adds about 700.
    orientation : (str, str)
        PatientOrientation written to ``geometry`` (direction of increasing column, row).

    Returns
    -------
    image : Image
        ``modality="XRAY"``; ``metadata["phantom"]`` holds the marker box, the exposed
        field box and the limb/bone extents.
    truth : list of dict
        One per focus: ``centroid_px``, ``diameter_mm``, ``contrast``, ``over_bone``.
    """
    import cv2

    rows, cols = int(shape[0]), int(shape[1])
    if rows < 100 or cols < 100:
        raise InvalidParameterError("a radiograph phantom needs at least 100 x 100 pixels")
    sp = float(spacing_mm) if spacing_mm is not None else 0.15
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)

    # soft-tissue limb: a vertical cylinder (chord length profile), slowly tapering
    cx = cols * 0.47
    half_w = cols * 0.30 * (1.0 - 0.15 * yy / rows)
    u = (xx - cx) / half_w
    tissue = np.sqrt(np.clip(1.0 - u ** 2, 0.0, None))
    img = AIR + 1100.0 * tissue
    limb = np.abs(u) < 1.0
    bone_mask = np.zeros_like(limb)
    bone_info = None
    if bone:
        bx = cx + cols * 0.03
        ro = cols * 0.085 * (1.0 + 0.35 * (yy / rows) ** 3)  # flares towards the joint
        ri = ro * 0.62
        d = np.abs(xx - bx)
        outer = np.sqrt(np.clip(ro ** 2 - d ** 2, 0.0, None))
        inner = np.sqrt(np.clip(ri ** 2 - d ** 2, 0.0, None))
        cortex = (outer - inner) / (cols * 0.085)
        marrow = inner / (cols * 0.085)
        # trabecular texture: streaks along the shaft (trabeculae follow the stress lines)
        tex = rng.standard_normal((rows, cols)).astype(np.float32)
        tex = cv2.GaussianBlur(tex, (0, 0), sigmaX=0.25 / sp, sigmaY=2.0 / sp)
        tex /= max(float(tex.std()), 1e-6)
        img += 900.0 * cortex + 180.0 * marrow * (1.0 + 0.12 * np.clip(tex, -3, 3))
        bone_mask = d < ro
        bone_info = {"center_col": float(bx)}
    # noise (slightly correlated, like a real detector)
    img += float(noise) * _smooth_noise(rng, (rows, cols), 0.7)

    meta: dict[str, Any] = {"limb_center_col": float(cx), "bone": bone_info}
    # foci
    truth: list[dict[str, Any]] = []
    if foci is None:
        foci = 12
    if isinstance(foci, (int, np.integer)):
        margin = int(0.12 * min(rows, cols))
        want = int(foci)
        diameters = np.linspace(1.0, 6.0, want) if want > 1 else np.array([3.0])
        placed: list[tuple[float, float, float]] = []
        tries = 0
        i = 0
        while i < want and tries < 20000:
            tries += 1
            r = rng.uniform(margin, rows - margin)
            c = rng.uniform(margin, cols - margin)
            ri_, ci_ = int(r), int(c)
            if not limb[ri_, ci_] or abs((c - cx) / half_w[ri_, ci_]) > 0.85:
                continue
            if bone and (i % 2 == 0) != bool(bone_mask[ri_, ci_]):
                continue  # alternate over bone / over soft tissue
            d_px = diameters[i] / sp
            if any(np.hypot(r - pr, c - pc) < 0.5 * (d_px + pd) + 6.0 / sp for pr, pc, pd in placed):
                continue
            placed.append((r, c, d_px))
            truth.append({"centroid_px": [float(r), float(c)], "diameter_mm": float(diameters[i])})
            i += 1
    else:
        truth = [dict(f) for f in foci]
    for t in truth:
        d = float(t["diameter_mm"])
        t.setdefault("contrast", contrast_per_mm * d)
        r, c = t["centroid_px"]
        t["over_bone"] = bool(bone_mask[int(np.clip(r, 0, rows - 1)), int(np.clip(c, 0, cols - 1))])
        render_focus(img, (r, c), d / sp, float(t["contrast"]))

    # lead marker: a letter in the air to the right of the limb, saturated
    if lead_marker:
        size_px = max(int(round(12.0 / sp)), 12)
        scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, size_px, max(2, int(2.0 / sp)))
        thick = max(2, int(round(2.0 / sp)))
        (tw, th), _ = cv2.getTextSize("R", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        r0 = int(rows * 0.78)
        c0 = int(min(cols * 0.83, cols - tw - 0.08 * cols))
        letter = np.zeros((rows, cols), np.uint8)
        cv2.putText(letter, "R", (c0, r0), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
        a = letter.astype(np.float32) / 255.0
        img = img * (1.0 - a) + UNEXPOSED * a * 0.97
        ys, xs = np.nonzero(letter)
        meta["lead_marker_bbox"] = [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1]
    # collimation: outside the field nothing was exposed (bright, saturated)
    if collimation:
        m = (int(0.06 * rows), int(0.06 * cols))
        field = np.zeros((rows, cols), np.float32)
        field[m[0]:rows - m[0], m[1]:cols - m[1]] = 1.0
        field = cv2.GaussianBlur(field, (0, 0), 0.4 / sp)
        img = img * field + UNEXPOSED * (1.0 - field)
        meta["field_bbox"] = [m[0], m[1], rows - m[0], cols - m[1]]
    img = np.clip(img, 0.0, UNEXPOSED).astype(np.float32)
    for t in truth:
        t["centroid_px"] = [float(v) for v in t["centroid_px"]]
    image = Image(
        pixels=img,
        spacing_mm=None if spacing_mm is None else (sp, sp),
        modality="XRAY",
        source=f"<radiograph phantom seed={seed}>",
        metadata={"phantom": meta},
        warnings=[] if spacing_mm is not None else ["phantom built without spacing: sizes are not reported in mm"],
        spacing_source="phantom" if spacing_mm is not None else None,
        geometry={"PatientOrientation": list(orientation), "col_direction": orientation[0],
                  "row_direction": orientation[1], "left_right_axis": 1 if orientation[0][:1] in ("L", "R") else None,
                  "increasing_index_is": {"L": "left", "R": "right"}.get(orientation[0][:1]),
                  "laterality": None, "ViewPosition": "AP", "BodyPartExamined": "EXTREMITY"},
    )
    return image, truth


def random_foci(
    image: Image,
    n: int,
    *,
    diameters_mm: Sequence[float] = (1.0, 6.0),
    contrast: float | Sequence[float] | None = None,
    contrast_per_mm: float | None = None,
    allowed: np.ndarray | None = None,
    min_gap_mm: float = 6.0,
    seed: int = 0,
    spacing_mm: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Draw ``n`` non-overlapping foci at random allowed places.

    Parameters
    ----------
    image : Image
        Where the foci will go.
    n : int
        Number of foci.
    diameters_mm : (float, float)
        Diameters are uniform in this range.
    contrast, contrast_per_mm : float, optional
        Peak contrast (raw units): a fixed value (or a (low, high) range), or per mm of
        diameter.  One of them is required.
    allowed : ndarray of bool, optional
        Pixels where a focus centre may go (default: the image's valid region).
    min_gap_mm : float
        Smallest edge-to-edge gap between foci.
    seed : int
    spacing_mm : (float, float), optional
        Pixel size to use when the image has none.

    Returns
    -------
    list of dict
        ``centroid_px``, ``diameter_mm``, ``contrast``.
    """
    sp = np.asarray(spacing_mm if spacing_mm is not None else image.require_spacing("placing foci in mm"), float)
    if contrast is None and contrast_per_mm is None:
        raise InvalidParameterError("give contrast= or contrast_per_mm=")
    rng = np.random.default_rng(seed)
    if allowed is None:
        allowed = np.ones(image.shape, bool) if image.valid_mask is None else image.valid_mask
    cand = np.argwhere(allowed)
    if cand.size == 0:
        raise InvalidParameterError("no allowed place for foci")
    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < n and tries < 50 * n + 1000:
        tries += 1
        r, c = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, 2)
        d = float(rng.uniform(*diameters_mm))
        if any(np.hypot((r - o["centroid_px"][0]) * sp[0], (c - o["centroid_px"][1]) * sp[1])
               < 0.5 * (d + o["diameter_mm"]) + min_gap_mm for o in out):
            continue
        if contrast is not None:
            cval = float(rng.uniform(*contrast)) if not np.isscalar(contrast) else float(contrast)
        else:
            cval = float(contrast_per_mm) * d
        out.append({"centroid_px": [float(r), float(c)], "diameter_mm": d, "contrast": cval})
    return out


def storable_max(image: Image) -> float | None:
    """The largest value the image's file can hold (``2**BitsStored - 1``, unsigned), or None.

    The radiograph loader keeps the stored values (inverted within the stored range for
    MONOCHROME1), so this is also the largest pixel value a real exposure can give.
    """
    try:
        bits = int(image.metadata.get("BitsStored") or 0)
        signed = int(image.metadata.get("PixelRepresentation") or 0) == 1
    except (TypeError, ValueError):
        return None
    if not 1 <= bits <= 32:
        return None
    return float(2 ** (bits - 1) - 1 if signed else 2 ** bits - 1)


def insert_foci(
    image: Image,
    foci: Sequence[dict[str, Any]],
    *,
    spacing_mm: Sequence[float] | None = None,
    clip: bool = False,
    blur_mm: float = 0.0,
) -> tuple[Image, list[dict[str, Any]]]:
    """Add foci of known size and contrast to a (real) radiograph.

    Parameters
    ----------
    image : Image
        A loaded radiograph (dense = bright raw signal).
    foci : sequence of dict
        Each ``{"centroid_px": [r, c], "diameter_mm": d, "contrast": c}`` (contrast: peak
        raw-signal increase at the focus centre).  See :func:`random_foci`.
    spacing_mm : (float, float), optional
        The pixel size to lay out the foci with when the image has none (e.g. 0.15 mm);
        it is then also set on the returned image (``spacing_source`` says so).
    clip : bool
        Clip to the image's maximum (a detector without headroom: a dense focus over
        bone then saturates).  Off by default.  Whatever ``clip`` says, the result is
        always clipped to the largest value the file can store (``2**BitsStored - 1``
        when the metadata has BitsStored): a 12-bit film cannot hold 4096, and a value
        above every stored one would move the saturation level the detector reads off
        the image.
    blur_mm : float
        Gaussian sigma (mm) applied to the foci before they are added: the unsharpness
        of a real focal spot and detector, which the image itself already has.  0 (the
        default) adds perfectly sharp projected spheres.

    Returns
    -------
    image : Image
        A copy with the foci added.
    truth : list of dict
        The foci as inserted.
    """
    if spacing_mm is not None:
        sp = tuple(float(s) for s in (spacing_mm if not np.isscalar(spacing_mm) else (spacing_mm, spacing_mm)))
    else:
        sp = tuple(image.require_spacing("inserting foci of a size in mm"))
    if abs(sp[0] - sp[1]) > 1e-6 * max(sp):
        raise InvalidParameterError("insert_foci needs square pixels")
    if not (np.isfinite(blur_mm) and blur_mm >= 0):
        raise InvalidParameterError(f"blur_mm must be >= 0, got {blur_mm!r}")
    pixels = image.pixels.astype(np.float32).copy()
    hi = float(image.pixels.max())
    added = np.zeros_like(pixels) if blur_mm > 0 else pixels
    truth = []
    for f in foci:
        d = float(f["diameter_mm"])
        render_focus(added, f["centroid_px"], d / sp[0], float(f["contrast"]))
        truth.append({"centroid_px": [float(v) for v in f["centroid_px"]], "diameter_mm": d,
                      "contrast": float(f["contrast"])})
    if blur_mm > 0:
        import cv2

        pixels += cv2.GaussianBlur(added, (0, 0), blur_mm / sp[0])
    if clip:
        pixels = np.minimum(pixels, hi)
    storable = storable_max(image)
    if storable is not None:
        pixels = np.minimum(pixels, np.float32(storable))
    changes: dict[str, Any] = {}
    if image.spacing_mm is None or tuple(image.spacing_mm) != sp:
        changes = {"spacing_mm": sp, "spacing_source": "stated for validation (insert_foci)"}
        changes["warnings"] = [w for w in image.warnings if "sizes are not reported in mm" not in w] + [
            f"pixel size {sp[0]:g} mm stated for validation (the file has none)"]
    return image.with_pixels(pixels, **changes), truth


def write_radiograph_dicom(
    image: Image,
    path: str | Path,
    *,
    monochrome1: bool = False,
    magnification: float | None = None,
    pixel_spacing: Sequence[float] | None = None,
    patient_orientation: Sequence[str] | None = None,
    laterality: str | None = None,
    view_position: str = "AP",
) -> Path:
    """Write ``image`` as a CR DICOM file (uint16, ImagerPixelSpacing = image spacing).

    Parameters
    ----------
    image : Image
        Radiograph with dense = bright pixels (values are rounded into 0..65535).
    path : str or Path
        Output file.
    monochrome1 : bool
        Store as MONOCHROME1 (dense = low values, 12 bits stored) like many CR plates.
    magnification : float, optional
        EstimatedRadiographicMagnificationFactor to record; ImagerPixelSpacing is then
        ``spacing * magnification`` (so the loader recovers the image spacing).
    pixel_spacing : (float, float), optional
        A PixelSpacing value to write as well (e.g. ``(0, 0)`` to imitate real files).
    patient_orientation : (str, str), optional
        Defaults to the image geometry's ``PatientOrientation``.
    laterality : {"L", "R"}, optional
        ImageLaterality to record.
    view_position : str
        ViewPosition.

    Returns
    -------
    Path
    """
    from ._dicom import new_dataset, set_grey_pixels, write

    path = Path(path)
    bits = 12 if monochrome1 else 16
    top = 2 ** bits - 1
    arr = np.clip(np.rint(image.pixels), 0, top).astype(np.uint16)
    if monochrome1:
        arr = (top - arr).astype(np.uint16)
    ds = new_dataset("1.2.840.10008.5.1.4.1.1.1", "CR", "PHANTOM^XRAY")  # CR Image Storage
    ds.BodyPartExamined = "EXTREMITY"
    ds.ViewPosition = view_position
    po = patient_orientation or image.geometry.get("PatientOrientation") or ["R", "F"]
    ds.PatientOrientation = list(po)
    if laterality:
        ds.ImageLaterality = laterality
    set_grey_pixels(ds, arr, bits_stored=bits, photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2")
    if image.spacing_mm is not None:
        m = float(magnification) if magnification else 1.0
        ds.ImagerPixelSpacing = [f"{image.spacing_mm[0] * m:.6g}", f"{image.spacing_mm[1] * m:.6g}"]
        if magnification:
            ds.EstimatedRadiographicMagnificationFactor = f"{float(magnification):.6g}"
    if pixel_spacing is not None:
        ds.PixelSpacing = [f"{float(v):.3f}" for v in pixel_spacing]
    return write(ds, path)
