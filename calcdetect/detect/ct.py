"""CT: high-attenuation foci in soft tissue.

Pipeline (every step an array operation; see docs/algorithms.md):

1. Anatomy (:mod:`calcdetect.detect.anatomy`): body (patient, arms included; not table,
   head holder or air), depth below the skin, and the deep core inside the fascia.
2. Candidates: HU >= ``threshold_hu`` (130, the calcium-scoring convention) inside the
   body and the chosen ``region``; metal (>= ``metal_hu``) is set aside with a warning.
3. Components (:func:`calcdetect.measure.label`, full connectivity, in 3D for a series)
   measured at once (:func:`calcdetect.measure.regionprops_table`).
4. Anatomy filter: a component is skeleton-like, not calcinosis, when it is larger than
   ``max_lesion_mm`` in cross-section, or tubular (long axis > 25 mm and > 3 x the short
   axis: ribs through a series, ribs cut obliquely in a slice), or a cortical ring
   (filled area > 1.3 x its area: a long bone or phalanx in cross-section), or
   touching bone or internal air over 15% of its rim; in skin mode also a focus
   embedded in the deep core (40% of its rim) or a deep midline focus of an axial
   trunk slice (within 8 mm of the midline, 12 mm or more below the skin, its rim in
   soft tissue rather than fat: sternum, xiphoid, spinous processes).
5. Noise filter: a component must have a cross-section of at least ``min_area_mm2``
   (1 mm^2, calcium-scoring convention), or a peak at least 70 HU above the
   threshold, or a peak at least 10 noise SDs above its rim (partial volume spreads a
   small calcification over slices and lowers it; noise never stands 10 SD out).
6. Size: measured at half maximum between the local background and the peak
   (``size_method="half-max"``, robust to blur and partial volume) or at the threshold
   (``"threshold"``).  Scores (Agatston, volume, mass) always use the threshold mask,
   as the calcium-scoring convention defines them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..distribution import describe_distribution, side_from_patient_x
from ..errors import InvalidParameterError
from ..image import Image
from ..lossy import compression_ratio, lossy_compressed
from ..measure import _foreground, filter_labels, label, nonzero_rc, regionprops_table, select, sparse_zeros
from ..report import Finding, Report
from .anatomy import ANATOMY_PIXEL_MM, BlockMap, _each_slice, _slice_box, anatomy_factor, ct_anatomy_reduced

REGIONS = ("skin", "soft-tissue", "all")

#: Agatston density weights: peak HU 130-199 -> 1, 200-299 -> 2, 300-399 -> 3, >=400 -> 4.
AGATSTON_BINS = (130.0, 200.0, 300.0, 400.0)

#: Dermis thickness used to call a finding "dermal" (depth of its centre below the skin).
DERMIS_MM = 2.5


def agatston_weight(peak_hu: np.ndarray) -> np.ndarray:
    """Agatston density weight (0-4) for per-slice lesion peak HU values."""
    peak_hu = np.asarray(peak_hu, dtype=np.float64)
    return np.searchsorted(np.asarray(AGATSTON_BINS), peak_hu, side="right").astype(np.float64)


def calcium_scores(
    labels: np.ndarray,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    n: int,
    *,
    min_area_mm2: float = 1.0,
    reference_thickness_mm: float = 3.0,
    is_volume: bool = True,
    foreground: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-label Agatston score and thresholded volume.

    Parameters
    ----------
    labels : ndarray
        ``(slices, rows, cols)`` labels 1..n of the thresholded lesions.
    hu : ndarray
        Hounsfield units, same shape.
    spacing : (float, float, float)
        Slice step and in-plane spacing in mm.
    n : int
        Number of labels.
    min_area_mm2 : float
        Per-slice lesion cross-sections smaller than this do not score.
    reference_thickness_mm : float
        Agatston is defined on 3 mm slices.  For a series with slice step ``s`` each
        slice's score is multiplied by ``s / 3`` so the total approximates the same
        area-along-z integral; a single slice is scored as is (factor 1).
    is_volume : bool
        False for a single 2D slice.
    foreground : ndarray of int, optional
        Flat indices of the nonzero labels, ascending, when known (saves a scan).

    Returns
    -------
    dict with ``agatston`` and ``volume_mm3`` arrays (length n).
    """
    nz = labels.shape[0]
    flat = labels.ravel()
    idx = _foreground(flat) if foreground is None else np.asarray(foreground)
    lab = flat[idx].astype(np.int64) - 1
    z = idx // (labels.shape[1] * labels.shape[2])
    key = lab * nz + z
    pixel_area = spacing[1] * spacing[2]
    area = np.bincount(key, minlength=n * nz).astype(np.float64) * pixel_area
    peak = np.full(n * nz, -np.inf)
    np.maximum.at(peak, key, hu.ravel()[idx].astype(np.float64))
    slice_score = np.where(area >= min_area_mm2, area * agatston_weight(peak), 0.0)
    factor = spacing[0] / reference_thickness_mm if is_volume else 1.0
    agatston = slice_score.reshape(n, nz).sum(axis=1) * factor
    volume = area.reshape(n, nz).sum(axis=1) * spacing[0] if is_volume else np.full(n, np.nan)
    return {"agatston": agatston, "volume_mm3": volume}


def _filled_area(mask2d: np.ndarray) -> int:
    from .anatomy import _fill_holes

    return int(_fill_holes(mask2d.astype(np.uint8)).sum())


def detect_ct(
    image: Image,
    *,
    region: str = "skin",
    threshold_hu: float = 130.0,
    mask: np.ndarray | None = None,
    min_area_mm2: float = 1.0,
    max_lesion_mm: float = 20.0,
    metal_hu: float = 2500.0,
    mass_calibration: float | None = None,
    size_method: str = "half-max",
    contrast_min_peak_hu: float | None = 200.0,
    anatomy_pixel_mm: float | None = ANATOMY_PIXEL_MM,
    contrast: bool | None = None,
) -> Report:
    """Find soft-tissue calcifications on a CT slice or series.

    Parameters
    ----------
    image : Image
        A CT image in Hounsfield units (2D slice or 3D series).
    region : {"skin", "soft-tissue", "all"}
        ``"skin"`` (default): dermis and subcutaneous tissue, the home of calcinosis
        cutis.  ``"soft-tissue"``: every non-bone soft tissue in the body (deep
        deposits as in systemic sclerosis).  ``"all"``: every thresholded component in
        the body, bone included (the calcium-scoring convention).
    threshold_hu : float
        Calcium threshold (130 HU by convention).
    mask : ndarray of bool, optional
        Region of interest, same shape as the image: only foci whose centre lies in it
        are reported.
    min_area_mm2 : float
        Minimum cross-section (1 mm^2 by the calcium-scoring convention).
    max_lesion_mm : float
        Largest cross-section (equivalent diameter, mm) still taken for a lesion
        rather than bone; raise it for large deposits in ``"soft-tissue"`` mode.
    metal_hu : float
        Foci peaking at or above this are metal or foreign bodies, set aside.
    mass_calibration : float, optional
        Calcium mass calibration factor in mg per mm^3 per HU (from a phantom scan).
        Without it ``mass_mg`` is null.
    size_method : {"half-max", "threshold"}
        How each finding's extent is measured (see module docstring).
    contrast_min_peak_hu : float or None
        On a contrast-enhanced scan (see ``contrast``), foci peaking below this (200 HU)
        are set aside: small enhanced vessels peak at 130-200 HU, calcium usually well
        above.  ``None`` keeps them.  The warning says how many.
    contrast : bool or None
        Whether the scan is contrast-enhanced.  ``None`` (default): yes when the header
        records ContrastBolusAgent/Route; when it records neither (de-identification
        empties them), yes when the image shows an enhanced blood pool
        (:func:`calcdetect.detect.contrast.blood_pool`), and the warning says where.
        ``True`` / ``False`` decide it (CLI ``--contrast yes|no``).
    anatomy_pixel_mm : float or None
        Working pixel (mm) of the anatomy maps (body, deep core, internal air): the slice
        is reduced by the integer factor nearest to this over the pixel size (1.5 mm:
        2x at 0.6-1.07 mm pixels, 3x at 0.43-0.6 mm, none above), a quarter or less of
        the anatomy's work.  Depths below the skin, the midline-bone test near its
        limit and (skin mode) the deep core near a focus are still decided at full
        resolution.  ``None``: the whole anatomy at full resolution.

    Returns
    -------
    Report
    """
    if region not in REGIONS:
        raise InvalidParameterError(f"region must be one of {REGIONS}, got {region!r}")
    if size_method not in ("half-max", "threshold"):
        raise InvalidParameterError(f"size_method must be 'half-max' or 'threshold', got {size_method!r}")
    if not np.isfinite(threshold_hu):
        raise InvalidParameterError("threshold_hu must be a finite number")
    if mass_calibration is not None and not (np.isfinite(mass_calibration) and mass_calibration > 0):
        raise InvalidParameterError("mass_calibration must be a positive number (mg per mm^3 per HU)")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise InvalidParameterError(f"mask shape {mask.shape} differs from image shape {image.shape}")

    is_volume = image.ndim == 3
    hu = image.pixels if is_volume else image.pixels[None]
    valid = None if image.valid_mask is None else (image.valid_mask if is_volume else image.valid_mask[None])
    roi = None if mask is None else (mask if is_volume else mask[None])
    warnings = list(image.warnings)
    has_spacing = image.spacing_mm is not None
    if is_volume:
        spacing3 = image.spacing_mm if has_spacing else (1.0, 1.0, 1.0)
    else:
        spacing3 = (1.0,) + tuple(image.spacing_mm) if has_spacing else (1.0, 1.0, 1.0)
    spacing3 = tuple(float(s) for s in spacing3)
    if not has_spacing:
        warnings.append(
            "no pixel spacing: sizes, depths and scores are not reported in mm; size limits "
            "were applied assuming 1 mm pixels"
        )
    lossy_warning = _lossy_warning(image)
    if lossy_warning:
        warnings.append(lossy_warning)

    # no depth map: the detector needs depths only at component centres (Anatomy.depth_at)
    # the anatomy at a working pixel of about anatomy_pixel_mm (see ct_anatomy_reduced);
    # the fine-scale decisions (depths, the midline test near its limits) at full resolution
    factor = 1 if anatomy_pixel_mm is None else anatomy_factor(spacing3[1:], anatomy_pixel_mm)
    anatomy = ct_anatomy_reduced(hu, spacing3[1:], factor, valid=valid, lesion_hu=threshold_hu,
                                 max_lesion_mm=max_lesion_mm)
    no_skin = anatomy.skin_missing() if region == "skin" else None
    if no_skin is not None and no_skin.any():
        warnings.append(
            f"no skin surface is visible in {int(no_skin.sum())} of {hu.shape[0]} slice(s) (the field "
            "of view lies inside the body); the skin region cannot be found there and was not "
            "searched -- use region='soft-tissue' to search all soft tissue"
        )
    # the candidates in the box of the body; fg: the labelled voxels, shared by the
    # steps below (no further scans of the volume)
    cand = _candidate_mask(hu, threshold_hu, anatomy.body, valid, skip=no_skin)
    if cand is None:
        labels, n, fg = sparse_zeros(hu.shape, np.int32), 0, np.zeros(0, np.intp)
    else:
        labels, n, fg = _label_candidates(cand[0], cand[1], hu.shape)
    del cand  # free before the measurements (peak memory)
    table = _measure(labels, hu, spacing3, fg)
    # threshold-based geometry, used for the anatomy and noise filters
    cross_mm2 = table["max_slice_size"]
    eq_cross = np.sqrt(4.0 * cross_mm2 / np.pi)
    long_ax = table["axis_major_length"]
    short_ax = table["axis_minor_length"]
    peak = table["intensity_max"]

    sigma = noise_sigma(hu, anatomy.body)
    metal = peak >= metal_hu
    faint_small = (cross_mm2 < min_area_mm2) & (peak < threshold_hu + 70.0)
    big = eq_cross > max_lesion_mm
    tube = (long_ax > 25.0) & (long_ax > 3.0 * short_ax)
    # the rim statistics decide only the small faint components (noise) and, outside
    # region "all", the components no size rule has set aside and not metal: the rims
    # of the others (bones, mostly) are not gathered
    needed = faint_small | ((region != "all") & ~big & ~tube & ~metal)
    rim: dict = {}  # the rim voxels, kept for a second look at the deep core (_rim_in_deep)
    rim_dense_air, rim_mean, rim_deep = _rim_stats(labels, hu, anatomy.internal_air, anatomy.deep,
                                                   table["label"], threshold_hu, _label_box(table, labels.shape),
                                                   rim=rim, needed=needed)
    # below the scoring area a focus must still stand out: 70 HU above the threshold,
    # or 10 noise SDs above its own rim (partial volume lowers small calcifications)
    noise = faint_small & (peak - rim_mean < 10.0 * sigma)
    keep = ~noise & ~metal
    skeleton = np.zeros(n, bool)
    if region != "all":
        skeleton = big | tube
        # cortical rings: only worth checking on mid-sized components
        ring_check = np.flatnonzero(keep & ~skeleton & (cross_mm2 >= 20.0))
        for i in ring_check:
            sl = tuple(slice(int(table[f"bbox-{a}"][i]), int(table[f"bbox-{a + 3}"][i])) for a in range(3))
            comp = labels[sl] == table["label"][i]
            for zz in range(comp.shape[0]):
                area = int(comp[zz].sum())
                if area * spacing3[1] * spacing3[2] >= 20.0 and _filled_area(comp[zz]) > 1.3 * area:
                    skeleton[i] = True
                    break
        skeleton |= rim_dense_air >= 0.15
        if region == "skin" and anatomy.factor > 1 and anatomy.exact_slice is not None:
            # the deep core's outline is coarse: where it passes near a focus still in
            # play, its slices' full-resolution core decides (rim fraction, centre test)
            # near the centre-in-core test, or with a rim fraction not far from its limit
            changed = _refine_deep(anatomy, table, np.flatnonzero(keep & ~skeleton), rim_deep, 0.4)
            if changed:
                rim_deep = _rim_in_deep(rim, anatomy.deep, table["label"], changed, rim_deep)
        if region == "skin":
            # embedded in the deep core's tissue (a spinous-process tip between the
            # paraspinal muscles, costal cartilage under the rectus): not subcutaneous
            skeleton |= rim_deep >= 0.4
            # midline bone lies in soft tissue (linea alba, ligaments, muscle), not in fat
            skeleton |= _midline_bone(image, anatomy, table, spacing3, has_spacing,
                                      keep & ~skeleton & (rim_mean > -60.0)) & (rim_mean > -60.0)
        keep &= ~skeleton
    # centre inside the deep core / ROI
    cz, cy, cx = _centre_voxels(table, hu.shape)
    if region == "skin":
        # whole components are judged by where their centre lies, so a calcification
        # against the fascia is not cut in two by the deep-core boundary
        keep &= ~anatomy.deep[cz, cy, cx]
    if roi is not None:
        keep &= roi[cz, cy, cx]
    if int(metal.sum()):
        warnings.append(f"{int(metal.sum())} metal-dense object(s) (>= {metal_hu:g} HU) were set aside")
    enhanced, why, contrast_source = _contrast(image, hu, spacing3, has_spacing, threshold_hu, contrast)
    faint = np.zeros(n, bool)
    if enhanced and contrast_min_peak_hu is not None:
        faint = keep & (peak < contrast_min_peak_hu)
        keep &= ~faint
    if enhanced:
        warnings.append(
            f"contrast-enhanced scan ({why}): enhanced vessels, kidneys "
            "and bowel contrast also exceed the calcium threshold"
            + ("; only skin and subcutaneous foci are reported" if region == "skin" else
               "; findings in deep soft tissue may be contrast, not calcium")
            + (f"; {int(faint.sum())} faint focus/foci peaking below {contrast_min_peak_hu:g} HU "
               "(likely enhanced vessels) set aside" if faint.any() else "")
        )

    kept = np.flatnonzero(keep)
    # order findings by position (slice, row, col) for stable ids
    kept = kept[np.lexsort((table["centroid-2"][kept], table["centroid-1"][kept], table["centroid-0"][kept]))]
    # in place: saves a volume of memory; fg: the kept labels' voxels
    thr_labels, k, fg = filter_labels(labels, table["label"][kept], in_place=True, foreground=fg,
                                      return_foreground=True)
    del labels
    thr_table = select(table, kept)
    scores = calcium_scores(thr_labels, hu, spacing3, k, min_area_mm2=min_area_mm2, is_volume=is_volume,
                            foreground=fg)

    if size_method == "half-max" and k:
        # thr_labels is not needed after the scores: shrunk in place, its voxels are among fg
        size_labels = _half_max_labels(thr_labels, hu, thr_table, anatomy.body, threshold_hu)
        fg = fg[size_labels.reshape(-1)[fg] != 0]
    else:
        size_labels = thr_labels
    size_table = _measure(size_labels, hu, spacing3, fg) if k else thr_table

    findings = _findings(image, size_table, thr_table, scores, anatomy, k, is_volume, has_spacing,
                         spacing3, mass_calibration)
    total_agatston = float(scores["agatston"].sum()) if k else 0.0
    report_scores: dict[str, Any] = {
        "agatston": total_agatston if has_spacing else None,
        "volume_mm3": (float(np.nansum(scores["volume_mm3"])) if k else 0.0) if (has_spacing and is_volume) else None,
        "mass_mg": None,
        "threshold_hu": threshold_hu,
        "slice_factor": (spacing3[0] / 3.0) if is_volume else 1.0,
    }
    if mass_calibration is not None:
        if is_volume and has_spacing:
            report_scores["mass_mg"] = float(sum(f.extra.get("mass_mg") or 0.0 for f in findings))
        else:
            warnings.append("mass_mg needs a volume (a CT series with spacing); not computed")
    distribution = describe_distribution(findings)
    labels_out = size_labels if is_volume else size_labels[0]
    return Report(
        source=image.source,
        modality="CT",
        shape=list(image.shape),
        spacing_mm=None if not has_spacing else list(image.spacing_mm),
        findings=findings,
        warnings=warnings,
        distribution=distribution,
        scores=report_scores,
        parameters={
            "region": region, "threshold_hu": threshold_hu, "min_area_mm2": min_area_mm2,
            "max_lesion_mm": max_lesion_mm, "metal_hu": metal_hu, "size_method": size_method,
            "mass_calibration": mass_calibration, "roi_mask": mask is not None,
            # set aside as skeleton, not counting those already set aside as noise or metal
            "components_total": n, "components_skeleton": int((skeleton & ~noise & ~metal).sum()),
            "components_noise": int(noise.sum()), "components_metal": int(metal.sum()),
            "contrast_min_peak_hu": contrast_min_peak_hu, "components_faint_contrast": int(faint.sum()),
            "contrast": contrast, "contrast_enhanced": enhanced, "contrast_source": contrast_source,
        },
        spacing_source=image.spacing_source,
        labels=labels_out,
    )


#: Above this lossy compression ratio, codec artefacts at bone and skin edges exceed the
#: calcium threshold: JPEG 2000 copies of 10 real slices gave no extra finding up to
#: 50:1, and 4-7 per slice at 100:1 (693_J2KI, 339:1: 8).
LOSSY_ARTEFACT_RATIO = 50.0


def _lossy_warning(image: Image) -> str | None:
    """What a user must know about a lossy-compressed CT, or None."""
    if not lossy_compressed(image):
        return None
    ratio = compression_ratio(image)
    said = f" (ratio {ratio:.0f}:1)" if ratio else ""
    if ratio is not None and ratio > LOSSY_ARTEFACT_RATIO:
        return (f"the pixels went through lossy compression{said}: at this ratio codec artefacts at bone "
                "and skin edges exceed the calcium threshold and are reported as small faint foci "
                f"(4-7 per slice at 100:1 on real slices, no extra ones up to {LOSSY_ARTEFACT_RATIO:.0f}:1) -- "
                "use the original images")
    return (f"the pixels went through lossy compression{said}: HU values are approximate; on real slices "
            f"compressed up to {LOSSY_ARTEFACT_RATIO:.0f}:1 no extra finding appeared"
            + ("" if ratio else ", but this file does not say its ratio"))


def _contrast(image: Image, hu: np.ndarray, spacing3: tuple[float, float, float], has_spacing: bool,
              threshold_hu: float, contrast: bool | None) -> tuple[bool, str, str | None]:
    """Whether the scan is contrast-enhanced, why (for the warning), and from where:
    ``"user"``, ``"header"``, ``"image"`` or None (not enhanced, nothing said so)."""
    tag = image.metadata.get("ContrastBolusAgent") or image.metadata.get("ContrastBolusRoute")
    if contrast is not None:
        return bool(contrast), f"contrast={bool(contrast)} given by the user", "user"
    if tag:
        return True, f"ContrastBolusAgent {tag!r}", "header"
    from .contrast import blood_pool

    # without a spacing the areas are judged at the 1 mm pixels the size limits assume
    # (CT pixels are 0.5-1 mm, so a vessel looks no smaller than it is)
    pool = blood_pool(hu, spacing3, threshold_hu=threshold_hu)
    if pool is None:
        return False, "", None
    where = (f"slice {pool['slice']}, " if image.ndim == 3 else "") + f"row {pool['row']}, col {pool['col']}"
    size = (f"{pool['interior_mm2']:.0f} mm^2" if has_spacing
            else f"{pool['interior_mm2']:.0f} pixels (taken as 1 mm each: the image has no spacing)")
    return True, (
        f"seen in the image, not in the header: a smooth {pool['median_hu']:.0f} HU region of "
        f"{size} at {where} looks like an enhanced blood pool; if the scan is "
        "unenhanced, pass contrast=False / --contrast no"), "image"


def _candidate_mask(hu: np.ndarray, threshold: float, body, valid: np.ndarray | None,
                    skip: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """``(hu >= threshold) & body & valid`` of a (slices, rows, cols) volume, in the rows
    and columns that hold every slice's body box: the mask of that box, C-contiguous,
    and its first row and column; None when no slice has a body.

    Computed slice by slice inside each slice's body box and written into a calloc'd
    box (pages outside the body boxes are never touched), so that it can be labelled
    as it is: no full-volume mask, no crop copy.  ``body`` (an array or an
    :class:`~calcdetect.detect.anatomy.BlockMap`) is read one box at a time.  Slices
    with a true ``skip`` are left empty."""
    nz = hu.shape[0]
    boxes = [None if skip is not None and skip[k] else _slice_box(body, k) for k in range(nz)]
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    r0, c0 = min(b[0].start for b in present), min(b[1].start for b in present)
    r1, c1 = max(b[0].stop for b in present), max(b[1].stop for b in present)
    out = sparse_zeros((nz, r1 - r0, c1 - c0), bool)

    def one(k: int) -> None:
        b = boxes[k]
        if b is None:
            return
        sub = out[k, b[0].start - r0:b[0].stop - r0, b[1].start - c0:b[1].stop - c0]
        np.greater_equal(hu[k][b], threshold, out=sub)
        sub &= body[(k,) + b]
        if valid is not None:
            sub &= valid[k][b]

    _each_slice(one, nz)
    return out, (r0, c0)


def _label_candidates(candidates: np.ndarray, origin: tuple[int, int],
                      shape: tuple[int, int, int]) -> tuple[np.ndarray, int, np.ndarray]:
    """:func:`calcdetect.measure.label` of the box ``candidates`` (C-contiguous bool) of a
    (slices, rows, cols) volume of ``shape``, whose first row and column are ``origin``
    (see :func:`_candidate_mask`), written into a calloc'd int32 volume of ``shape`` (only
    the pages of labelled voxels are touched), and the flat indices of the labelled
    voxels in that volume, ascending.  A box keeps the raster order of the voxels and
    every component whole, so the labels are the same as on the whole volume."""
    nz, ny, nx = shape
    r0, c0 = origin
    bh, bw = candidates.shape[1:]
    out = sparse_zeros(shape, np.int32)
    sub, n = label(candidates)
    sub = sub.reshape(-1)
    idx = np.flatnonzero(candidates.reshape(-1))  # the labelled voxels: a bool scan, not an int32 one
    zz, rest = np.divmod(idx, bh * bw)
    rr, cc = np.divmod(rest, bw)
    fg = (zz * ny + (rr + r0)) * nx + (cc + c0)
    out.reshape(-1)[fg] = sub[idx]
    return out, n, fg


def _centre_voxels(table: dict[str, np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The voxel (slice, row, col) holding each component's centroid, inside ``shape``."""
    return tuple(np.clip(np.rint(table[f"centroid-{a}"]).astype(int), 0, shape[a] - 1) for a in range(3))


def _measure(labels: np.ndarray, hu: np.ndarray, spacing3: tuple[float, float, float],
             fg: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """regionprops_table in the image's own dimensionality, columns in 3D index layout.
    ``fg``: the flat indices of the nonzero labels, ascending, when known (a single
    slice has the same flat indices in 2D).

    A single slice is measured as 2D (areas, circle-equivalent diameters, ellipse
    axes); its columns are then renamed to the (slice, row, col) layout used here, with
    slice index 0, one slice, and the cross-section equal to the area.
    """
    if labels.shape[0] > 1:
        return regionprops_table(labels, hu, spacing=spacing3, foreground=fg)
    t2 = regionprops_table(labels[0], hu[0], spacing=spacing3[1:], foreground=fg)
    n = t2["label"].size
    t3 = {k: v for k, v in t2.items() if not k.startswith(("centroid-", "bbox-"))}
    t3["centroid-0"] = np.zeros(n)
    t3["centroid-1"], t3["centroid-2"] = t2["centroid-0"], t2["centroid-1"]
    t3["bbox-0"], t3["bbox-3"] = np.zeros(n, np.int64), np.ones(n, np.int64)
    t3["bbox-1"], t3["bbox-2"] = t2["bbox-0"], t2["bbox-1"]
    t3["bbox-4"], t3["bbox-5"] = t2["bbox-2"], t2["bbox-3"]
    t3["max_slice_size"] = t2["size"]
    t3["num_slices"] = np.ones(n, np.int64)
    return t3


#: Midline skeleton of the trunk (sternum, xiphoid, spinous processes): dense foci this
#: close to the body midline and at least this deep are taken for bone in skin mode.
MIDLINE_BONE_MM = 8.0
MIDLINE_BONE_DEPTH_MM = 12.0


def _is_axial(image: Image) -> bool:
    """True when rows run front-back and columns left-right (or orientation unknown)."""
    if image.affine is None:
        return True
    col_dir = image.affine[:3, 2] / max(np.linalg.norm(image.affine[:3, 2]), 1e-9)
    row_dir = image.affine[:3, 1] / max(np.linalg.norm(image.affine[:3, 1]), 1e-9)
    return abs(col_dir[0]) > 0.9 and abs(row_dir[1]) > 0.9


def _midline_bone(image: Image, anatomy, table: dict, spacing3, has_spacing: bool,
                  asked: np.ndarray | None = None) -> np.ndarray:
    """Components near the trunk's midline and deep enough to be sternum, xiphoid or a
    spinous process (axial slices only).  The midline is the centre of the left-right
    extent of the largest deep core (the trunk's muscles and organs: unlike the body
    outline, it does not merge with an arm resting against the trunk), and a focus must
    lie in the body part that holds that core.

    Only the components ``asked`` (those whose answer still matters; default all) are
    tested, the others are False: on a cluttered scan most components are set aside
    before this test.  With maps at reduced resolution (``anatomy.factor`` > 1), a
    component within two coarse pixels of either limit is decided again on its slice's
    full-resolution anatomy."""
    n = table["label"].size
    out = np.zeros(n, bool)
    asked = np.ones(n, bool) if asked is None else np.asarray(asked, bool)
    if not asked.any() or not has_spacing or not _is_axial(image):
        return out
    which = np.flatnonzero(asked)
    part = select(table, which)
    got, dist, depth = _midline_test(anatomy, part, spacing3)
    if anatomy.factor > 1 and anatomy.exact_slice is not None:
        # depths are exact already (Anatomy.depth_at); the midline comes from the coarse
        # deep core, so a focus this close to the limit is decided on the full maps
        tol = 2.0 * anatomy.factor * float(np.mean(spacing3[1:]))
        near = (depth >= MIDLINE_BONE_DEPTH_MM) & (np.abs(dist - MIDLINE_BONE_MM) <= tol)
        cz = _centre_voxels(part, anatomy.body.shape)[0]
        for z in np.unique(cz[near]):
            sel = near & (cz == z)
            one = {k: v[sel] for k, v in part.items()}
            one["centroid-0"] = np.zeros(int(sel.sum()))
            got[sel] = _midline_test(anatomy.exact_slice(int(z)), one, spacing3)[0]
    out[which] = got
    return out


def _midline_test(anatomy, table: dict, spacing3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The midline rule of :func:`_midline_bone` on ``anatomy``'s maps: the decision, the
    distance (mm) from the slice's midline of the foci at least the depth limit deep in
    the trunk (inf for the others) and the depth of every focus."""
    import cv2

    n = table["label"].size
    out = np.zeros(n, bool)
    dist = np.full(n, np.inf)
    cz, cy, cx = _centre_voxels(table, anatomy.body.shape)
    depth = anatomy.depth_at(cz, cy, cx)
    coarse = isinstance(anatomy.deep, BlockMap) and isinstance(anatomy.body, BlockMap)
    areas = anatomy.deep.block_areas() if coarse else None
    w = anatomy.body.shape[2]
    for z in np.unique(cz[depth >= MIDLINE_BONE_DEPTH_MM]):
        z = int(z)
        deep_z = anatomy.deep.coarse_plane(z) if coarse else None
        body_z = anatomy.body.coarse_plane(z) if coarse else None
        if deep_z is None or body_z is None:  # full-resolution planes
            deep_z, body_z, f, weight = anatomy.deep[z], anatomy.body[z], 1, None
        else:
            # on the coarse planes: 8-connected components of a block-repeated map are
            # the coarse ones, numbered in the same order; areas and the trunk vote are
            # weighted by each block's full-resolution pixels, the extent scaled back
            f, weight = anatomy.deep.factor, areas
        k, core, stats, _ = cv2.connectedComponentsWithStats(deep_z.astype(np.uint8), connectivity=8)
        if k <= 1:
            continue
        area = (stats[:, cv2.CC_STAT_AREA] if weight is None else
                np.bincount(core.reshape(-1), weights=weight.reshape(-1), minlength=k))
        big = 1 + int(np.argmax(area[1:]))
        left = int(stats[big, cv2.CC_STAT_LEFT]) * f
        right = min((int(stats[big, cv2.CC_STAT_LEFT]) + int(stats[big, cv2.CC_STAT_WIDTH])) * f, w) - 1
        mid = left + (right - left) / 2.0
        _, parts = cv2.connectedComponents(body_z.astype(np.uint8), connectivity=8)
        in_big = core == big
        trunk = parts[in_big]
        inside = trunk > 0
        votes = (np.bincount(trunk[inside]) if weight is None else
                 np.bincount(trunk[inside], weights=weight[in_big][inside]))
        trunk_label = int(votes.argmax()) if inside.any() else -1
        part_of = parts[cy // f, cx // f]
        sel = (cz == z) & (depth >= MIDLINE_BONE_DEPTH_MM) & (part_of == trunk_label)
        dist[sel] = np.abs(table["centroid-2"][sel] - mid) * spacing3[2]
        out |= sel & (np.abs(table["centroid-2"] - mid) * spacing3[2] <= MIDLINE_BONE_MM)
    return out, dist, depth


def noise_sigma(hu: np.ndarray, body: np.ndarray, max_slices: int = 16) -> float:
    """Robust image noise SD (HU) from differences of adjacent pixels in soft tissue.

    Uses pairs of horizontally adjacent body pixels both within -200..150 HU (fat,
    muscle, organs) on up to ``max_slices`` evenly spaced slices; the SD is
    ``1.4826 * MAD(differences) / sqrt(2)``, insensitive to edges and lesions.
    """
    idx = np.unique(np.linspace(0, hu.shape[0] - 1, min(max_slices, hu.shape[0])).astype(int))
    parts = []
    for k in idx:  # each slice's body box holds all its pairs (the median ignores their order)
        box = _slice_box(body, int(k))
        if box is None:
            continue
        h, b = hu[k][box], body[(int(k),) + box]
        a, c = h[:, 1:], h[:, :-1]
        ok = b[:, 1:] & b[:, :-1] & (a > -200) & (a < 150) & (c > -200) & (c < 150)
        parts.append((a - c)[ok])
    d = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if d.size < 100:
        return 10.0
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(1.4826 * mad / np.sqrt(2.0), 1.0)


def _rim_stats(
    labels: np.ndarray, hu: np.ndarray, internal_air: np.ndarray, deep: np.ndarray,
    label_ids: np.ndarray, threshold: float, box: tuple[slice, slice] | None = None,
    rim: dict | None = None, needed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component: the fraction of its rim that is bone or internal air, the rim's
    mean HU (clipped to -200..200: the local soft-tissue background), and the fraction
    of its rim inside the deep core.

    Soft-tissue calcinosis sits in fat or dermis: at most a small part of its rim (15%)
    touches internal air (sinus and mastoid walls, ribs by the lung) or dense voxels
    that are not part of it (dense tissue left out of the candidates: outside the body
    mask or the valid region, or in a slice not searched).  Computed for all components at
    once from a maximum filter of the label image: 3 x 3 in a slice, 3 x 3 x 3 in a
    series (a spinous-process tip that is an island in one slice joins its vertebra in
    the next).  ``rim``: a dict that receives the rim voxels (owners, flat indices,
    counts) for :func:`_rim_in_deep`.  ``needed`` (bool per ``label_ids``): only these
    components' rim voxels are gathered (each rim voxel still goes to the largest label
    next to it); the others get fractions and a mean of 0.
    """
    n = int(label_ids.max()) + 1 if label_ids.size else 1
    wanted = None
    if needed is not None:
        wanted = np.zeros(n, bool)
        wanted[label_ids[np.asarray(needed, bool)]] = True
    if n > 2 ** 24:  # float32 can no longer hold every label exactly
        from scipy import ndimage as ndi

        size = (3, 3, 3) if labels.shape[0] > 1 else (1, 3, 3)
        grown = ndi.maximum_filter(labels, size=size)
        on_rim = (grown > 0) & (labels == 0)
        if wanted is not None:
            on_rim &= wanted[grown]
        owner, values, is_air, is_deep = grown[on_rim], hu[on_rim], internal_air[on_rim], deep[on_rim]
        where = np.flatnonzero(on_rim) if rim is not None else None
    else:
        owner, values, is_air, is_deep, where = _rim_owners(labels, hu, internal_air, deep, n, box,
                                                            index=rim is not None, wanted=wanted)
    total = np.maximum(np.bincount(owner, minlength=n).astype(np.float64), 1)
    if rim is not None:
        rim.update(owner=owner, where=where, total=total, n=n)
    dense = np.bincount(owner, weights=(values >= threshold), minlength=n)
    air = np.bincount(owner, weights=is_air, minlength=n)
    mean = np.bincount(owner, weights=np.clip(values, -200, 200), minlength=n) / total
    in_deep = np.bincount(owner, weights=is_deep, minlength=n) / total
    return ((dense + air) / total)[label_ids], mean[label_ids], in_deep[label_ids]


def _rim_in_deep(rim: dict, deep: np.ndarray, label_ids: np.ndarray, changed: Sequence[int] | None = None,
                 previous: np.ndarray | None = None) -> np.ndarray:
    """The third result of :func:`_rim_stats` (the fraction of each rim inside the deep
    core) again, for a changed ``deep``, from the rim voxels it kept in ``rim``.

    With ``changed`` (the slices whose deep core changed) and ``previous`` (the fractions
    before the change, per ``label_ids``), only the components with rim voxels in those
    slices are recomputed: each from its own rim voxels, in their order, so its sum is the
    one a full recomputation makes; the others keep their fractions, which no changed
    voxel enters."""
    where, owner, n = rim["where"], rim["owner"], rim["n"]
    if changed is None or previous is None:
        is_deep = deep[np.unravel_index(where, deep.shape)]
        return (np.bincount(owner, weights=is_deep, minlength=n) / rim["total"])[label_ids]
    hit = np.zeros(deep.shape[0], bool)
    hit[np.asarray(list(changed), dtype=np.intp)] = True
    affected = np.zeros(n, bool)
    affected[owner[hit[where // (deep.shape[1] * deep.shape[2])]]] = True
    sel = np.flatnonzero(affected[owner])
    is_deep = deep[np.unravel_index(where[sel], deep.shape)]
    fraction = np.bincount(owner[sel], weights=is_deep, minlength=n) / rim["total"]
    out = np.array(previous, dtype=np.float64, copy=True)
    again = affected[label_ids]
    out[again] = fraction[label_ids[again]]
    return out


def _refine_deep(anatomy, table: dict[str, np.ndarray], idx: np.ndarray, rim_deep: np.ndarray,
                 rim_limit: float) -> list[int]:
    """Replace the coarse deep core of some slices by the full-resolution core
    (``anatomy.exact_slice``): those of the components ``idx`` whose centre has deep and
    not-deep pixels within two coarse pixels, or whose rim fraction in the core is
    within 0.15 of ``rim_limit``.  Returns the replaced slices, ascending."""
    import cv2

    nz, ny, nx = anatomy.deep.shape
    f = anatomy.factor
    m = 2 * f
    idx = np.asarray(idx, dtype=np.intp)
    cz, cy, cx = (a[idx] for a in _centre_voxels(table, anatomy.deep.shape))
    # deep and not-deep pixels in the window of +-m full-resolution pixels around the
    # centre: on the coarse plane that window is the 5 x 5 coarse pixels around
    # (cy // f, cx // f) (m = 2f), clipped at the border as the window is, so a 5 x 5
    # maximum and minimum filter (OpenCV's default border ignores the outside) answer
    # it for every component of a slice at once
    mixed = np.zeros(idx.size, bool)
    coarse = isinstance(anatomy.deep, BlockMap)
    square = np.ones((5, 5), np.uint8)
    for z in np.unique(cz):
        on = np.flatnonzero(cz == z)
        plane = anatomy.deep.coarse_plane(int(z)) if coarse else None
        if plane is None:  # a full-resolution plane: the window itself
            for j in on:
                win = anatomy.deep[int(z), max(cy[j] - m, 0):cy[j] + m + 1, max(cx[j] - m, 0):cx[j] + m + 1]
                mixed[j] = bool(win.any() and not win.all())
            continue
        u = plane.view(np.uint8)
        hi, lo = cv2.dilate(u, square), cv2.erode(u, square)
        yc, xc = cy[on] // f, cx[on] // f
        mixed[on] = (hi[yc, xc] > 0) & (lo[yc, xc] == 0)
    slices: set[int] = set()
    for j in np.flatnonzero(mixed | (np.abs(rim_deep[idx] - rim_limit) <= 0.15)):
        i = idx[j]
        slices.update(range(max(int(table["bbox-0"][i]) - 1, 0), min(int(table["bbox-3"][i]) + 1, nz)))
    order = sorted(slices)
    # each exact slice is a whole full-resolution anatomy: compute them side by side
    _each_slice(lambda i: anatomy.exact_slice(order[i]), len(order), per_worker=1)
    for z in order:
        anatomy.deep[z] = anatomy.exact_slice(z).deep[0]
    return order


def _label_box(table: dict[str, np.ndarray], shape: tuple[int, ...]) -> tuple[slice, slice] | None:
    """Rows and columns holding every labelled voxel (from the table's boxes), plus one
    pixel; None when there are no labels."""
    if not table["label"].size:
        return None
    ny, nx = shape[1:]
    return (slice(max(int(table["bbox-1"].min()) - 1, 0), min(int(table["bbox-4"].max()) + 1, ny)),
            slice(max(int(table["bbox-2"].min()) - 1, 0), min(int(table["bbox-5"].max()) + 1, nx)))


def _rim_owners(labels, hu, internal_air, deep, n, box=None, index=False, wanted=None):
    """Rim voxels of the 3 x 3 (x 3) maximum filter of ``labels``, slice by slice.

    The same values as ``ndimage.maximum_filter`` (whose 'reflect' border equals
    ignoring the outside), computed with OpenCV's in-plane dilation and a maximum over
    the neighbouring slices, both passes on the slice threads: one box-sized volume of
    dilations (uint16 up to 65536 labels), several times faster.
    ``box`` (rows, cols; see :func:`_label_box`) limits the work to the part of each
    slice that holds the labels plus one pixel, outside which there is no rim.
    Returns the owner label, the HU, ``internal_air`` and ``deep`` of every rim voxel
    (``wanted``: a bool per label; only those whose owner it marks), in raster order, and
    (``index``; else None) their flat indices in the whole volume.
    """
    import cv2

    ny, nx = labels.shape[1:]
    r0 = c0 = 0
    whole_hu = hu  # read at the rim pixels, by their row and column in the slice
    if box is not None:
        r0, c0 = box[0].start or 0, box[1].start or 0
        labels = labels[(slice(None),) + box]
    dtype = np.uint16 if n <= 65536 else np.float32
    kernel = np.ones((3, 3), np.uint8)
    nz = labels.shape[0]

    grown = sparse_zeros(labels.shape, dtype)  # each slice's 3 x 3 dilation (no huge pages: sparse_zeros)

    def grow(z: int) -> None:
        grown[z] = cv2.dilate(labels[z].astype(dtype), kernel)

    bw = labels.shape[2]
    parts: list = [None] * nz

    def rim_of(z: int) -> None:
        g = grown[z]
        if z > 0:
            g = np.maximum(g, grown[z - 1])
        if z + 1 < nz:
            g = np.maximum(g, grown[z + 1])
        rim = (g > 0) & (labels[z] == 0)
        on = np.flatnonzero(rim)
        owner = g.reshape(-1)[on]
        if wanted is not None:
            mine = wanted.take(owner)  # uint16 owners: take is faster than indexing
            on, owner = on[mine], owner[mine]
        if on.size:
            rr, cc = np.divmod(on, bw)
            rr += r0
            cc += c0
            where = (z * ny + rr) * nx + cc if index else None
            # the maps at the rim pixels only (a BlockMap reads its coarse pixels)
            parts[z] = (owner.astype(np.intp), whole_hu[z][rr, cc], _map_at(internal_air, z, rr, cc),
                        _map_at(deep, z, rr, cc), where)

    # slices are independent in each pass (OpenCV and NumPy release the GIL)
    _each_slice(grow, nz)
    _each_slice(rim_of, nz)
    found = [p for p in parts if p is not None]
    owners = [p[0] for p in found]
    values = [p[1] for p in found]
    air = [p[2] for p in found]
    in_deep = [p[3] for p in found]
    where = [p[4] for p in found]
    if not owners:
        return (np.zeros(0, np.intp), np.zeros(0, np.float32), np.zeros(0, bool), np.zeros(0, bool),
                np.zeros(0, np.intp) if index else None)
    return (np.concatenate(owners), np.concatenate(values), np.concatenate(air), np.concatenate(in_deep),
            np.concatenate(where) if index else None)


def _map_at(m, k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values of slice ``k`` of a (slices, rows, cols) map at the pixels (rows, cols):
    an array, or a :class:`~calcdetect.detect.anatomy.BlockMap` (read from its coarse
    slice, or from the full-resolution plane that replaced it)."""
    if isinstance(m, BlockMap):
        return m.at(k, rows, cols)
    return m[k][rows, cols]


def _half_max_labels(
    labels: np.ndarray, hu: np.ndarray, table: dict[str, np.ndarray], body: np.ndarray, threshold: float,
) -> np.ndarray:
    """Shrink each thresholded lesion to the voxels at or above half maximum.

    Half maximum is halfway between the lesion's local background (median HU of the
    body voxels in a 2-voxel shell around it) and its peak.  Never below the threshold,
    so the result is a subset of the thresholded lesion.  One small crop per lesion:
    the loop is over findings, not pixels.  The voxels below half maximum are cleared in
    ``labels`` itself, which is returned (every level is found first, on the unchanged
    labels): no volume to allocate and first-touch.
    """
    import cv2

    from .anatomy import _disk

    nz, ny, nx = labels.shape
    margin = (1 if nz > 1 else 0, 3, 3)
    shell_kernel = _disk(2)  # a 2-voxel shell in each slice
    levels = []
    for i in range(len(table["label"])):
        lab = i + 1
        lo = [max(int(table[f"bbox-{a}"][i]) - margin[a], 0) for a in range(3)]
        hi = [min(int(table[f"bbox-{a + 3}"][i]) + margin[a], s) for a, s in zip(range(3), (nz, ny, nx))]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        comp = labels[sl] == lab
        sub = hu[sl]
        grown = np.stack([cv2.dilate(c.astype(np.uint8), shell_kernel) > 0 for c in comp])
        shell = grown & ~(labels[sl] > 0) & body[sl]
        if shell.any():
            bg = float(np.median(sub[shell]))
        elif (~comp).any():
            bg = float(np.median(sub[~comp]))
        else:
            bg = threshold
        peak = float(table["intensity_max"][i])
        # never below the threshold (subset of the lesion), never above the peak (non-empty)
        levels.append((sl, min(max(threshold, 0.5 * (bg + peak)), peak)))
    for lab, (sl, level) in enumerate(levels, start=1):
        view = labels[sl]
        view[(view == lab) & (hu[sl] < level)] = 0
    return labels


def _findings(image, size_t, thr_t, scores, anatomy, k, is_volume, has_spacing, spacing3, mass_cal):
    findings: list[Finding] = []
    if not k:
        return findings
    centroids = np.stack([size_t[f"centroid-{a}"] for a in range(3)], axis=1)
    patient = image.index_to_patient(centroids if is_volume else centroids[:, 1:]) if has_spacing else None
    cz, cy, cx = _centre_voxels(size_t, anatomy.body.shape)
    depth = anatomy.depth_at(cz, cy, cx).astype(np.float64)
    deep = anatomy.deep[cz, cy, cx]
    sides = _sides(image, anatomy, centroids, patient, is_volume)
    for i in range(k):
        axes = range(3) if is_volume else range(1, 3)
        bbox = [int(size_t[f"bbox-{a}"][i]) for a in axes] + [int(size_t[f"bbox-{a + 3}"][i]) for a in axes]
        mm = (lambda v: float(v)) if has_spacing else (lambda v: None)
        if deep[i]:
            region = "deep"
        elif np.isnan(depth[i]):
            region = None  # no skin surface visible in this slice
        else:
            region = "dermal" if depth[i] <= DERMIS_MM else "subcutaneous"
        extra: dict[str, Any] = {
            "agatston": float(scores["agatston"][i]) if has_spacing else None,
            "threshold_volume_mm3": float(scores["volume_mm3"][i]) if (has_spacing and is_volume) else None,
            "threshold_area_mm2": float(thr_t["max_slice_size"][i]) if has_spacing else None,
            "num_pixels": int(size_t["num_pixels"][i]),
        }
        if is_volume:
            extra["num_slices"] = int(size_t["num_slices"][i])
        if mass_cal is not None and is_volume and has_spacing:
            extra["mass_mg"] = float(mass_cal * scores["volume_mm3"][i] * thr_t["intensity_mean"][i])
        findings.append(Finding(
            id=i + 1,
            centroid_px=[float(c) for c in (centroids[i] if is_volume else centroids[i, 1:])],
            centroid_mm=None if patient is None else [float(v) for v in patient[i]],
            bbox_px=bbox,
            equivalent_diameter_mm=mm(size_t["equivalent_diameter"][i]),
            long_axis_mm=mm(size_t["axis_major_length"][i]),
            short_axis_mm=mm(size_t["axis_minor_length"][i]),
            area_mm2=mm(size_t["max_slice_size"][i]),
            volume_mm3=mm(size_t["size"][i]) if is_volume else None,
            peak=float(size_t["intensity_max"][i]),
            mean=float(size_t["intensity_mean"][i]),
            side=sides[i],
            depth_mm=None if np.isnan(depth[i]) else mm(depth[i]),
            region=region if has_spacing else None,
            extra=extra,
        ))
    return findings


def _sides(image: Image, anatomy, centroids, patient, is_volume) -> list[str | None]:
    """Patient side of each finding: LPS x against the body midline of its slice."""
    n = centroids.shape[0]
    if patient is None or image.affine is None:
        return [None] * n
    midlines: dict[int, float | None] = {}
    out: list[str | None] = []
    for i in range(n):
        z = int(np.clip(np.rint(centroids[i, 0]), 0, anatomy.body.shape[0] - 1))
        if z not in midlines:
            midlines[z] = _midline_x(image, anatomy.body[z], z, is_volume)
        mid = midlines[z]
        out.append(None if mid is None else side_from_patient_x(float(patient[i, 0]), mid))
    return out


def _midline_x(image: Image, body: np.ndarray, z: int, is_volume: bool) -> float | None:
    """LPS x of the body's midline in one slice: halfway between its left and right edges."""
    rows, cols = nonzero_rc(body)
    if rows.size == 0:
        return None
    idx = np.stack([np.full(rows.shape, float(z)), rows, cols], axis=1)
    pts = image.index_to_patient(idx if is_volume else idx[:, 1:])
    return 0.5 * (float(pts[:, 0].min()) + float(pts[:, 0].max()))
