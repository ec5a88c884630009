"""Contrast enhancement seen in a CT image, for scans whose header does not say.

De-identification blanks or removes ContrastBolusAgent/Route (the DICOM basic profile
empties the agent), so an enhanced research CT often looks unenhanced to its header.
On such a scan enhanced vessels, kidneys and bowel contrast exceed the 130 HU calcium
threshold; in ``soft-tissue`` mode a de-identified portal-venous abdomen (pydicom's
``explicit_VR-UN.dcm``) gave 92 "calcifications".

The evidence looked for is an **enhanced blood pool**: a region above the threshold whose
inside (1.5 mm in from its outline) is large (>= 100 mm^2, a vessel of 14 mm or more),
at blood-pool density (a median of 140-450 HU) and smooth (a robust SD of at most
35 HU: image noise only).  An unenhanced aorta or heart is 30-60 HU; cancellous bone
reaches the density but not the smoothness (its trabeculae give a robust SD of 58-137 HU
on the real CT slices of the test data, against 10-22 HU inside enhanced vessels), and
it lies inside a cortex: the band between the inside and the outline must not be more
than 100 HU denser than the inside (a vessel's band is partial volume with fat); a
skull, rib or table is too thin to have an inside.  What still looks the same is a
large homogeneous deposit of blood-pool density (milk of calcium): the report says where
the evidence lies, and ``contrast=False`` overrides it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Median HU range of an enhanced blood pool (portal-venous to arterial phase).
BLOOD_POOL_HU = (140.0, 450.0)
#: Largest robust SD (HU) inside a blood pool: image noise, no texture.
MAX_BLOOD_POOL_SD_HU = 35.0
#: Smallest inside (mm^2), 1.5 mm in from the outline: a vessel of about 14 mm (an adult
#: aorta or IVC of 20-25 mm has 230-380 mm^2), larger than the 13 mm spheres the CT
#: validation inserts.
MIN_INTERIOR_MM2 = 100.0
#: How far in from the outline the inside begins (mm): partial volume with fat.
INSET_MM = 1.5
#: The band around the inside may be at most this much denser than the inside (HU):
#: a vessel's band is partial volume with fat (less dense), a bone's is its cortex.
MAX_RIM_EXCESS_HU = 100.0


def blood_pool(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    threshold_hu: float = 130.0,
    max_slices: int = 12,
) -> dict | None:
    """Find an enhanced blood pool: evidence that a CT scan is contrast-enhanced.

    Parameters
    ----------
    hu : ndarray
        A CT slice ``(rows, cols)`` or volume ``(slices, rows, cols)`` in HU.
    spacing_mm : sequence of float
        Pixel spacing; the last two values are the in-plane (row, col) spacing in mm.
    threshold_hu : float
        Regions are taken above this (the calcium threshold).
    max_slices : int
        Slices looked at in a volume, evenly spaced (the evidence recurs on every slice
        of an enhanced scan; this bounds the cost to a few ms per slice).

    Returns
    -------
    dict or None
        The largest region found: ``slice``, ``row``, ``col`` (its centre, array
        indices), ``median_hu`` and ``sd_hu`` of its inside, ``interior_mm2``; ``None``
        when there is none.
    """
    import cv2

    vol = hu if hu.ndim == 3 else hu[None]
    dy, dx = (float(s) for s in tuple(spacing_mm)[-2:])
    px_mm2 = dy * dx
    r = max(1, int(round(INSET_MM / np.sqrt(px_mm2))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    min_px = MIN_INTERIOR_MM2 / px_mm2
    best: dict | None = None
    for z in np.unique(np.linspace(0, vol.shape[0] - 1, min(vol.shape[0], max(1, max_slices))).astype(int)):
        sl = vol[z]
        above = (sl >= threshold_hu).astype(np.uint8)
        # the inside of every region at once: erosion shrinks each region by the inset
        inside = cv2.erode(above, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        n, lab, stats, cents = cv2.connectedComponentsWithStats(inside, connectivity=8)
        for i in np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_px):
            if i == 0:
                continue
            x, y, w, h = stats[i, :4]
            vals = sl[y:y + h, x:x + w][lab[y:y + h, x:x + w] == i]
            med = float(np.median(vals))
            if not BLOOD_POOL_HU[0] <= med <= BLOOD_POOL_HU[1]:
                continue
            sd = 1.4826 * float(np.median(np.abs(vals - med)))
            if sd > MAX_BLOOD_POOL_SD_HU:
                continue
            # the band between the inside and the outline: partial volume with fat around
            # a vessel (lower than its inside), cortex around marrow (far higher)
            y0, x0 = max(0, y - r - 1), max(0, x - r - 1)
            y1, x1 = min(sl.shape[0], y + h + r + 1), min(sl.shape[1], x + w + r + 1)
            own = (lab[y0:y1, x0:x1] == i).astype(np.uint8)
            band = (cv2.dilate(own, kernel) > 0) & (above[y0:y1, x0:x1] > 0) & (own == 0)
            if band.any() and float(np.median(sl[y0:y1, x0:x1][band])) > med + MAX_RIM_EXCESS_HU:
                continue
            area = float(vals.size * px_mm2)
            if best is None or area > best["interior_mm2"]:
                best = {"slice": int(z), "row": int(round(cents[i][1])), "col": int(round(cents[i][0])),
                        "median_hu": round(med, 1), "sd_hu": round(sd, 1), "interior_mm2": round(area, 1)}
    return best
