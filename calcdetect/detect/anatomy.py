"""CT anatomy needed to tell soft-tissue calcification from everything else bright.

All maps are computed slice by slice (axial planes) with OpenCV, whose morphology and
distance transforms are several times faster than SciPy's on 2D images; a series is a
stack of such planes.  In-plane processing is also what the anatomy calls for: the skin
normal of an axial CT lies (almost) in the plane, and the table is a per-slice shape.

Terms
-----
body
    Every part of the patient: HU above ``body_hu`` (-400), after an opening that cuts
    thin links, keeping only parts thick enough to be a body part (an inscribed radius
    of at least ``min_part_radius_mm``: a finger qualifies, the table top, mattress
    shells and head holders do not) and large enough next to the largest part (at
    least ``min_part_fraction`` of its area, or 20 cm^2: arms qualify, the table's end
    pieces do not); then internal air is added: holes (bowel gas, sinuses) and, where
    the field of view cuts through the patient, lung reaching the image edge.
outside air
    Background (HU <= ``body_hu``) regions that reach the image edge and whose median
    is below ``outside_air_hu`` (-900): room air and foam pads.  Lung (about -850 to
    -700 HU) is internal air even where it reaches the image edge.
depth
    Distance in mm from each body pixel to the nearest outside air.  The edge of the
    reconstruction field of view and the image border where the body is cut off are
    not skin.  A slice with no outside air at all (field of view inside the body) has
    no skin surface: depth is NaN there.
deep
    Inside the muscle fascia: the large connected soft-tissue cores (muscle, organs,
    bone and brain, HU > -30, but never lesion-sized dense foci lying in fat; at least
    ``min_core_area_mm2`` per slice after a 3 mm opening that removes septa, vessels and small nodules), closed with a 6 mm disk to
    bridge thin gaps in the muscle wall, then holes filled.  Everything
    in the body that is not deep is "skin": dermis plus subcutaneous fat.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FOV_PADDING_HU = -1500.0


@dataclass
class Anatomy:
    """Per-voxel maps of a CT volume ``(slices, rows, cols)``."""

    body: np.ndarray          # bool
    deep: np.ndarray          # bool, subset of body
    depth_mm: np.ndarray      # float32, 0 outside the body, NaN where no skin is visible
    fov: np.ndarray           # bool, inside the reconstruction field of view
    internal_air: np.ndarray  # bool, air inside the body (cavities, lung, bowel gas)


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(round(radius_px)), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes of a 2D uint8 mask (flood the background from the border)."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask > 0) | holes


def _keep_body_parts(mask: np.ndarray, min_radius_px: float, min_fraction: float,
                     abs_area_px: float) -> np.ndarray:
    """Components of a uint8 mask thick enough (largest inscribed radius) and large
    enough (relative to the largest thick component, or absolutely) to be body parts."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    best = np.zeros(n, np.float32)
    np.maximum.at(best, labels.ravel(), dist.ravel())
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    thick = best >= min_radius_px
    thick[0] = False
    if not thick.any():
        return np.zeros(mask.shape, bool)
    largest = area[thick].max()
    keep = thick & ((area >= min_fraction * largest) | (area >= abs_area_px))
    return keep[labels]


def _outside_air(background: np.ndarray, plane: np.ndarray, outside_air_hu: float) -> np.ndarray:
    """Background components that reach the image edge and are true air (median HU)."""
    n, labels = cv2.connectedComponents(background.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(background.shape, bool)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    keep = np.zeros(n, bool)
    for lab in edge:  # few components reach the edge
        if np.median(plane[labels == lab]) < outside_air_hu:
            keep[lab] = True
    return keep[labels]


def _foci_in_fat(dense: np.ndarray, plane: np.ndarray, max_area_px: float, fat_below_hu: float) -> np.ndarray:
    """Dense components no larger than ``max_area_px`` whose rim lies in fat.

    The rim is the 2-pixel ring around each component; when at least 45% of it is fat
    (-200 HU to ``fat_below_hu``) the focus sits in fat: a calcification, even one that
    fills the fat layer from skin to fascia, not a rib inside intercostal muscle (whose
    rim is muscle, pleura and lung).
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dense.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(dense.shape, bool)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area_px
    small[0] = False
    if not small.any():
        return np.zeros(dense.shape, bool)
    grown = cv2.dilate(labels.astype(np.float32), _disk(2)).astype(np.int64)
    rim = (grown > 0) & (labels == 0)
    owner = grown[rim]
    values = plane[rim]
    is_fat = (values > -200.0) & (values < fat_below_hu)
    total = np.bincount(owner, minlength=n)
    fat_fraction = np.bincount(owner, weights=is_fat, minlength=n) / np.maximum(total, 1)
    fatty = small & (fat_fraction >= 0.45)
    return fatty[labels]


def _keep_large_parts(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
    keep[0] = False
    return keep[labels]


def ct_anatomy(
    hu: np.ndarray,
    spacing_rc: tuple[float, float],
    *,
    body_hu: float = -400.0,
    min_part_radius_mm: float = 5.0,
    min_part_fraction: float = 0.02,
    outside_air_hu: float = -900.0,
    link_radius_mm: float = 2.0,
    core_hu: float = -30.0,
    core_open_mm: float = 3.0,
    core_close_mm: float = 6.0,
    min_core_area_mm2: float = 300.0,
    lesion_hu: float = 130.0,
    max_lesion_mm: float = 20.0,
    valid: np.ndarray | None = None,
) -> Anatomy:
    """Body, deep-core and depth maps of a CT volume.

    Parameters
    ----------
    hu : ndarray
        ``(slices, rows, cols)`` Hounsfield units.
    spacing_rc : (float, float)
        In-plane pixel size (row, col) in mm.  Without a real spacing pass
        ``(1.0, 1.0)``: the maps are then in pixel units.
    body_hu, min_part_radius_mm, min_part_fraction, outside_air_hu, link_radius_mm,
    core_hu, core_open_mm, core_close_mm, min_core_area_mm2
        See the module docstring.
    lesion_hu, max_lesion_mm
        Dense components (>= ``lesion_hu``) no larger in cross-section than
        ``max_lesion_mm`` (circle-equivalent) whose rim lies in fat are possible
        calcifications: they never seed the deep core, so a calcification next to the
        fascia is not absorbed into the muscle.  Ribs (rim in muscle) still do.
    valid : ndarray of bool, optional
        Pixels that hold image signal; others are treated as outside the field of view.

    Returns
    -------
    Anatomy
    """
    nz, h, w = hu.shape
    px = float(np.mean(spacing_rc))
    aniso = abs(spacing_rc[0] - spacing_rc[1]) > 1e-3 * px
    body = np.zeros(hu.shape, bool)
    deep = np.zeros(hu.shape, bool)
    internal_air = np.zeros(hu.shape, bool)
    depth = np.zeros(hu.shape, np.float32)
    fov = hu > FOV_PADDING_HU
    if valid is not None:
        fov &= valid
    link = _disk(link_radius_mm / px)
    core_kernel = _disk(core_open_mm / px)
    close_kernel = _disk(core_close_mm / px)
    pixel_area = spacing_rc[0] * spacing_rc[1]
    max_lesion_area_px = np.pi * (max_lesion_mm / 2) ** 2 / pixel_area
    pad = int(np.ceil(60.0 / px))  # the body cut off by the image edge continues beyond it
    for k in range(nz):
        plane = hu[k]
        raw = ((plane > body_hu) & fov[k]).astype(np.uint8)
        opened = cv2.morphologyEx(raw, cv2.MORPH_OPEN, link)
        parts = _keep_body_parts(opened, min_part_radius_mm / px, min_part_fraction, 2000.0 / pixel_area)
        if not parts.any():
            continue
        # give back the skin surface and small protrusions the opening shaved off
        grown = cv2.dilate(parts.astype(np.uint8), link, iterations=2)
        tissue = (raw & grown).astype(np.uint8)
        background = ~(raw > 0)
        outside = _outside_air(background | ~fov[k], np.where(fov[k], plane, -1000.0), outside_air_hu)
        # internal air: background that is not outside air and touches the patient
        inner = background & ~outside & fov[k]
        n_in, lab_in = cv2.connectedComponents(inner.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        touching = np.unique(lab_in[(cv2.dilate(tissue, _disk(1)) > 0) & inner])
        air_in = np.isin(lab_in, touching[touching > 0])
        b = _fill_holes((tissue > 0) | air_in)
        b &= ~outside
        body[k] = b
        internal_air[k] = b & (plane <= body_hu)
        if not outside.any():
            depth[k] = np.where(b, np.nan, 0)
        else:
            # depth: distance to outside air, not to field-of-view edges or the image border
            not_air = (~outside).astype(np.uint8)
            padded = cv2.copyMakeBorder(not_air, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            if aniso:
                from scipy import ndimage as ndi

                d = ndi.distance_transform_edt(padded, sampling=spacing_rc).astype(np.float32)
            else:
                d = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) * np.float32(px)
            d = d[pad:-pad, pad:-pad]
            # distance from a pixel centre to the nearest air pixel centre, less half a
            # pixel: the skin surface lies on the boundary between them
            depth[k] = np.where(b, np.maximum(d - 0.5 * px, 0), 0)
        # the deep core: soft tissue and bone below the dermis (bone counts at any depth:
        # the skull lies right under a thin scalp)
        below_dermis = (depth[k] > 2.0) | np.isnan(depth[k]) | (plane >= 300.0)
        # internal air (bowel gas, lung) lies in body cavities: always deep
        core = b & ((plane > core_hu) | internal_air[k]) & below_dermis
        core &= ~_foci_in_fat(plane >= lesion_hu, plane, max_lesion_area_px, core_hu)
        core = core.astype(np.uint8)
        core = cv2.morphologyEx(core, cv2.MORPH_OPEN, core_kernel)
        core = _keep_large_parts(core, min_core_area_mm2 / pixel_area)
        if core.any():
            # a closing bridges thin gaps in the muscle wall (linea alba, fascia) so
            # that the abdominal cavity's fat is filled in as deep, not subcutaneous
            closed = cv2.morphologyEx(core.astype(np.uint8), cv2.MORPH_CLOSE, close_kernel)
            deep[k] = _fill_holes(closed) & b
    return Anatomy(body=body, deep=deep, depth_mm=depth, fov=fov, internal_air=internal_air)
