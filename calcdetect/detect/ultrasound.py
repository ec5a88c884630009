"""Ultrasound: hyperechoic foci confirmed by their posterior acoustic shadow.

A calcification reflects and absorbs the beam: it is a bright (hyperechoic) focus and
the tissue behind it *along the beam* is dark.  Bright spots without a shadow
(specular interfaces, fascia, fat lobules, speckle) are not calcifications.
Pipeline, per B-mode region (docs/ultrasound.md):

1. Beam geometry: ``"linear"`` probes send the beam down the columns; ``"sector"``
   (phased or curved) probes along rays from the apex of the fan.  ``probe="auto"``
   fits straight lines to the left and right edges of the fan: parallel edges are a
   linear probe, converging edges a sector whose apex is where they meet.
2. Speckle-robust smoothing: Gaussian of ``smooth_mm`` (0.5 mm).
3. Background at the same depth: median and upper spread ((Q3 - median) / 0.6745) of
   the tissue in a window ``background_mm`` (40 mm) wide across the beam and 3 mm
   along it, computed on a 1 mm grid in beam space (depth x lateral position for
   linear probes, radius x angle around the apex for sectors) and mapped back.
4. Candidates: smoothed signal at least ``z_threshold`` spreads above the
   background and ``ratio`` times it; each candidate is measured at half maximum
   between its background and its peak (size robust to blur), with
   :mod:`calcdetect.measure`.  Its peak must also reach the region's soft-tissue level
   (:func:`tissue_level`): beside a heart chamber or a cyst the same-depth background is
   the fluid's, and a speckle there is not hyperechoic.  Thin line echoes (short axis < 3 mm and long axis
   > 3 x short: fascia, valve leaflets, specular interfaces -- but also the bright
   surface of a large calcification) must show a strong shadow (contrast >= 0.6)
   and be at most 18 mm long.
5. Shadow test: along the beam behind the focus (from 1 mm past its far edge,
   ``shadow_mm`` deep) in a band as wide as the focus' central part, against bands
   of the same depth beside that path on both sides; ``shadow_contrast`` =
   1 - behind / beside (beside = mean of the two sides).  A focus is kept when
   ``shadow_contrast >= min_shadow_contrast`` (0.4), the path is not brighter than
   either side (a bright patch at the edge of a cyst has the cyst on one side only),
   the contrast holds (>= half the threshold) over the near and the far half of the
   depth range (a shadow persists), and the dark band is about as wide as the focus
   (twice the distance from the focus axis to the band's nearer edge <= 1.5 x focus
   width + 1.5 mm: an anechoic cavity behind a bright valve or interface is far
   wider).  Both sides must hold tissue, else the focus is untestable and not
   reported.
6. Report: focus size (equivalent diameter, axes, area), ``focus_width_mm`` (its
   extent across the beam: the size to read for a large calcification of which only
   the transducer-facing surface echoes), ``shadow_width_mm``,
   ``depth_mm`` below the transducer surface, ``region`` from depth (``dermal``
   <= 2.5 mm, ``subcutaneous`` <= 15 mm, ``deep`` beyond: a depth rule, the image does
   not show where fascia lies), the B-mode region index (``bmode_region``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..distribution import describe_distribution
from ..errors import InvalidParameterError
from ..image import Image
from ..measure import label, nonzero_rc, regionprops_table
from ..report import Finding, Report

PROBES = ("auto", "linear", "sector")

#: depth rule for ``region`` (mm below the transducer surface = skin)
DERMIS_MM = 2.5
SUBCUTIS_MM = 15.0
#: filter sizes when the image has no pixel size (a typical B-mode display pixel);
#: used only to size filters, never to report mm
ASSUMED_PIXEL_MM = 0.25
#: the shadow path must be darker than *each* side by this fraction of
#: min_shadow_contrast (0: at least not brighter than either side)
MIN_SIDE_FACTOR = 0.0
#: a thin line echo (short axis < LINE_SHORT_MM, long > 3 x short) needs this shadow
#: contrast, and is an interface (never a calcification) when longer than LINE_MAX_MM
#: (calcinosis foci are 2-13 mm; the arc of a 13 mm focus measures ~16 mm)
LINE_SHORT_MM = 3.0
LINE_SHADOW_CONTRAST = 0.6
LINE_MAX_MM = 18.0
#: the shadow's (symmetric) width may be at most a x focus width + b mm
SHADOW_WIDTH_RULE = (1.5, 1.5)


# --------------------------------------------------------------------------- geometry
def beam_geometry(fan: np.ndarray, spacing: tuple[float, float], probe: str = "auto") -> dict[str, Any]:
    """Probe type, apex and transducer surface of one fan.

    Parameters
    ----------
    fan : ndarray of bool
        The imaged field (one region).
    spacing : (float, float)
        Pixel size (row, col) in mm (or a stand-in, see ``ASSUMED_PIXEL_MM``).
    probe : {"auto", "linear", "sector"}
        ``"auto"`` decides from the fan's edges.

    Returns
    -------
    dict
        ``probe`` ("linear" or "sector"); ``apex_mm`` (row, col) in mm for sectors;
        ``surface_mm``: the transducer surface (row in mm for linear probes, radius
        from the apex for sectors); ``edge_slopes`` of the fitted edges (col per row).
    """
    if probe not in PROBES:
        raise InvalidParameterError(f"probe must be one of {PROBES}, got {probe!r}")
    dy, dx = spacing
    rows = np.flatnonzero(fan.any(axis=1))
    if rows.size < 4:
        return {"probe": "linear", "apex_mm": None, "surface_mm": float(rows.min() * dy) if rows.size else 0.0,
                "edge_slopes": None}
    r0, r1 = int(rows.min()), int(rows.max())
    # the upper part of the fan: sector edges are straight there (lower down a fan may
    # be cut by the display or end in its bottom arc)
    sel = np.arange(r0 + int(0.05 * (r1 - r0)), r0 + int(0.35 * (r1 - r0)) + 1)
    sel = sel[fan[sel].any(axis=1)]
    left = np.argmax(fan[sel], axis=1).astype(float)
    right = (fan.shape[1] - 1 - np.argmax(fan[sel][:, ::-1], axis=1)).astype(float)
    # in mm: col_mm = a * row_mm + b
    y = sel * dy
    al, bl = _robust_line(y, left * dx)
    ar, br = _robust_line(y, right * dx)
    kind = probe
    if probe == "auto":
        kind = "sector" if (al < -0.08 and ar > 0.08) else "linear"
    if kind == "sector" and (ar - al) > 1e-3:
        ay = (bl - br) / (ar - al)
        ax = al * ay + bl
        yy, xx = nonzero_rc(fan)
        r = np.hypot(yy * dy - ay, xx * dx - ax)
        surface = float(np.percentile(r, 0.5))
        return {"probe": "sector", "apex_mm": (float(ay), float(ax)), "surface_mm": surface,
                "edge_slopes": (float(al), float(ar))}
    # linear: the surface is the top of the fan (median over its columns, robust to
    # graphics masked at the top edge)
    cols = np.flatnonzero(fan.any(axis=0))
    tops = np.argmax(fan[:, cols], axis=0)
    return {"probe": "linear", "apex_mm": None, "surface_mm": float(np.percentile(tops, 10) * dy),
            "edge_slopes": (float(al), float(ar))}


def _robust_line(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Least-squares line x = a y + b, refitted without outliers (masked graphics)."""
    if y.size < 2:
        return 0.0, float(x.mean()) if x.size else 0.0
    a, b = np.polyfit(y, x, 1)
    for _ in range(2):
        res = np.abs(x - (a * y + b))
        keep = res <= max(3.0 * np.median(res), 1e-6) + 1e-9
        if keep.sum() < 2:
            break
        a, b = np.polyfit(y[keep], x[keep], 1)
    return float(a), float(b)


def _beam_coords(yy: np.ndarray, xx: np.ndarray, geom: dict, spacing: tuple[float, float]):
    """(depth along the beam, angle or lateral mm) of pixel coordinates."""
    dy, dx = spacing
    if geom["probe"] == "sector":
        ay, ax = geom["apex_mm"]
        py, px = yy * dy - ay, xx * dx - ax
        return np.hypot(py, px), np.arctan2(px, py)
    return yy * dy, xx * dx


def _beam_to_px(t: np.ndarray, s: np.ndarray, geom: dict, spacing: tuple[float, float]):
    """Inverse of :func:`_beam_coords`: (row, col) pixel coordinates."""
    dy, dx = spacing
    if geom["probe"] == "sector":
        ay, ax = geom["apex_mm"]
        return (ay + t * np.cos(s)) / dy, (ax + t * np.sin(s)) / dx
    return t / dy, s / dx


# --------------------------------------------------------------------------- background
def tissue_level(echo: np.ndarray) -> float:
    """The typical soft-tissue echo of a B-mode region: the median of its pixels that
    are not anechoic (brighter than a tenth of its 99th percentile: blood, fluid and
    the dark outside of the beam are left out).

    A calcification is hyperechoic: at least this bright.  The same-depth background
    of step 3 is not enough alone: beside a heart chamber or a cyst it is the fluid's
    near-zero echo, and a speckle there is many times brighter than it.

    Parameters
    ----------
    echo : ndarray
        The smoothed pixels of the region.

    Returns
    -------
    float
        0 for an empty or black region.
    """
    echo = np.asarray(echo, dtype=np.float32).ravel()
    if echo.size == 0:
        return 0.0
    top = float(np.percentile(echo, 99))
    if top <= 0:
        return 0.0
    return float(np.median(echo[echo > 0.1 * top]))



def _window_quantiles(grid: np.ndarray, kh: int, kw: int, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """25th, 50th and 75th percentiles of the finite values in a kh x kw window."""
    from numpy.lib.stride_tricks import sliding_window_view

    ph, pw = kh // 2, kw // 2
    padded = np.pad(grid, ((ph, kh - 1 - ph), (pw, kw - 1 - pw)), constant_values=np.nan)
    win = sliding_window_view(padded, (kh, kw)).reshape(grid.shape[0] * grid.shape[1], kh * kw)
    win = np.sort(win, axis=1)  # NaN sorts last
    n = np.isfinite(win).sum(axis=1)
    out = []
    for q in (0.25, 0.5, 0.75):
        k = np.clip(np.floor(q * (n - 1)).astype(np.int64), 0, kh * kw - 1)
        v = np.take_along_axis(win, k[:, None], axis=1)[:, 0]
        v[n < min_count] = np.nan
        out.append(v.reshape(grid.shape))
    return out[0], out[1], out[2]


def _background(smooth: np.ndarray, valid: np.ndarray, geom: dict, spacing: tuple[float, float],
                width_mm: float, height_mm: float, cell_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Same-depth background (median) and spread ((Q3 - median) / 0.6745), mapped to pixels.

    The smoothed image is sampled on a grid of ``cell_mm`` cells in beam coordinates
    (depth x lateral position for linear probes, radius x angle for sectors); the
    median and quartiles of the tissue samples in a window ``width_mm`` across the
    beam and ``height_mm`` along it give the background and its spread.  Medians
    ignore a focus filling up to a third of the window.
    """
    import cv2
    from scipy import ndimage as ndi

    yy, xx = nonzero_rc(valid)
    t, s = _beam_coords(yy.astype(np.float64), xx.astype(np.float64), geom, spacing)
    tmin, tmax = float(t.min()), float(t.max())
    smin, smax = float(s.min()), float(s.max())
    sector = geom["probe"] == "sector"
    # angular cell = cell_mm of arc at a shallow reference radius (the window is then
    # at least width_mm wide at most depths)
    rmid = max(float(np.percentile(t, 25)), cell_mm) if sector else 1.0
    ds = cell_mm / rmid if sector else cell_mm
    nr = int(np.ceil((tmax - tmin) / cell_mm)) + 1
    nc = int(np.ceil((smax - smin) / ds)) + 1
    T = (tmin + np.arange(nr) * cell_mm)[:, None] * np.ones((1, nc))
    S = np.ones((nr, 1)) * (smin + np.arange(nc) * ds)[None, :]
    py, px = _beam_to_px(T, S, geom, spacing)
    mapy, mapx = py.astype(np.float32), px.astype(np.float32)
    vals = cv2.remap(smooth.astype(np.float32), mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    ok = cv2.remap(valid.astype(np.uint8), mapx, mapy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT) > 0
    grid = np.where(ok, vals, np.nan).astype(np.float64)
    kh = max(1, int(round(height_mm / cell_mm)))
    kw = max(3, int(round(width_mm / cell_mm)))
    q1, med, q3 = _window_quantiles(grid, kh, kw, max(5, (kh * kw) // 5))
    # upper half-spread: only brighter-than-background matters here, and shadows or
    # cavities in the window (dark) must not raise the bar for a bright focus
    spread = (q3 - med) / 0.6745
    missing = ~np.isfinite(med)
    if missing.all():
        m = float(np.median(smooth[valid])) if valid.any() else 0.0
        return np.full(smooth.shape, m, np.float32), np.full(smooth.shape, 1.0, np.float32)
    if missing.any():
        idx = ndi.distance_transform_edt(missing, return_distances=False, return_indices=True)
        med = med[tuple(idx)]
        spread = spread[tuple(idx)]
    # back to the image: fractional cell index of every pixel
    gy, gx = np.mgrid[0:smooth.shape[0], 0:smooth.shape[1]]
    ti, si = _beam_coords(gy.astype(np.float32), gx.astype(np.float32), geom, spacing)
    iy = ((ti - tmin) / cell_mm).astype(np.float32)
    ix = ((si - smin) / ds).astype(np.float32)
    bg = cv2.remap(med.astype(np.float32), ix, iy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    sd = cv2.remap(spread.astype(np.float32), ix, iy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return bg, sd


# --------------------------------------------------------------------------- shadow test
def shadow_test(
    smooth: np.ndarray,
    valid: np.ndarray,
    comp_yy: np.ndarray,
    comp_xx: np.ndarray,
    geom: dict,
    spacing: tuple[float, float],
    *,
    shadow_mm: float = 15.0,
    gap_mm: float = 1.0,
) -> dict[str, Any]:
    """Measure the acoustic shadow behind one focus.

    Parameters
    ----------
    smooth : ndarray
        Speckle-smoothed image.
    valid : ndarray of bool
        Tissue pixels (fan minus overlays).
    comp_yy, comp_xx : ndarray
        Pixel coordinates of the focus.
    geom : dict
        From :func:`beam_geometry`.
    spacing : (float, float)
        Pixel size in mm.
    shadow_mm : float
        Depth range examined behind the focus.
    gap_mm : float
        Skipped between the focus' far edge and the examined range.

    Returns
    -------
    dict
        ``focus_width_mm`` (across the beam); ``contrast`` (1 - behind/beside,
        beside = mean of both sides; NaN when the shadow cannot be tested);
        ``contrast_min_side`` (the smaller of 1 - behind/left and 1 - behind/right);
        ``contrast_near`` / ``contrast_far`` (the two halves of the depth range);
        ``width_mm`` (the shadow's width across the beam); ``depth_tested_mm``;
        ``behind`` / ``beside`` mean signals.
    """
    dy, dx = spacing
    step = min(dy, dx)
    t, s = _beam_coords(comp_yy.astype(np.float64), comp_xx.astype(np.float64), geom, spacing)
    sector = geom["probe"] == "sector"
    t_c = float(t.mean())
    # lateral coordinate in mm (arc length at the focus' radius for sectors)
    lat = s * t_c if sector else s
    lat_c = float(lat.mean())
    half_w = 0.5 * (float(lat.max() - lat.min()) + step)
    t_far = float(t.max()) + 0.5 * step
    depths = t_far + gap_mm + np.arange(0.0, shadow_mm, step)
    inner = max(0.35 * 2 * half_w, 0.5 * step)
    off0 = half_w + 1.5
    side_w = float(np.clip(2 * half_w, 3.0, 5.0))  # as wide as the focus, 3-5 mm
    lat_behind = lat_c + np.arange(-inner, inner + 1e-9, step)
    lat_left = lat_c - off0 - np.arange(0.0, side_w, step)
    lat_right = lat_c + off0 + np.arange(0.0, side_w, step)
    # wide profile for the shadow width
    span = half_w + 2.0 + side_w
    lat_prof = lat_c + np.arange(-span, span + 1e-9, step)

    def sample(lats):
        T, L = np.meshgrid(depths, lats, indexing="ij")
        S = L / t_c if sector else L
        py, px = _beam_to_px(T, S, geom, spacing)
        iy, ix = np.rint(py).astype(int), np.rint(px).astype(int)
        inside = (iy >= 0) & (iy < smooth.shape[0]) & (ix >= 0) & (ix < smooth.shape[1])
        iyc, ixc = np.clip(iy, 0, smooth.shape[0] - 1), np.clip(ix, 0, smooth.shape[1] - 1)
        v = smooth[iyc, ixc].astype(np.float64)
        ok = inside & valid[iyc, ixc]
        return v, ok

    out = {"focus_width_mm": 2 * half_w, "width_sym_mm": float("nan"), "contrast": float("nan"), "contrast_min_side": float("nan"), "contrast_near": float("nan"), "contrast_far": float("nan"),
           "width_mm": float("nan"), "depth_tested_mm": 0.0, "behind": float("nan"), "beside": float("nan")}
    vb, ob = sample(lat_behind)
    vl, ol = sample(lat_left)
    vr, orr = sample(lat_right)
    # depth rows usable: behind band mostly tissue and at least one side band mostly tissue
    row_b = ob.mean(axis=1) >= 0.6
    row_l = ol.mean(axis=1) >= 0.6
    row_r = orr.mean(axis=1) >= 0.6
    # stop at the first depth where the behind band leaves the tissue for good
    usable = row_b & (row_l | row_r)
    if not usable.any():
        return out
    out["depth_tested_mm"] = float(usable.sum() * step)
    if usable.sum() * step < min(4.0, 0.5 * shadow_mm):
        return out

    # a shadow is judged against tissue on both sides (at the edge of the fan, or
    # beside an anechoic area cut by the fan edge, one side alone misleads)
    if (usable & row_l).sum() < 0.5 * usable.sum() or (usable & row_r).sum() < 0.5 * usable.sum():
        return out

    def masked_mean(v, o, rows):
        o = o & rows[:, None]
        return float(v[o].mean()) if o.any() else float("nan")

    def contrast(rows):
        """(1 - behind / mean of both sides, 1 - behind / each side)."""
        sides, per_side = [], []
        for v, o, rs in ((vl, ol, row_l), (vr, orr, row_r)):
            rr = rows & rs
            if rr.sum() * step >= 2.0:
                side = masked_mean(v, o, rr)
                bb = masked_mean(vb, ob, rr)
                if side > 0:
                    sides.append(side)
                    per_side.append(1.0 - bb / side)
        if not sides:
            return float("nan"), float("nan")
        b = masked_mean(vb, ob, rows)
        return 1.0 - b / float(np.mean(sides)), min(per_side)

    idx = np.flatnonzero(usable)
    half = idx[len(idx) // 2]
    near = usable & (np.arange(usable.size) < half)
    far = usable & (np.arange(usable.size) >= half)
    c, c_min = contrast(usable)
    out["contrast"] = c
    out["contrast_min_side"] = c_min
    b = masked_mean(vb, ob, usable)
    out["behind"] = b
    out["contrast_near"] = contrast(near)[0]
    out["contrast_far"] = contrast(far)[0]
    sides = [masked_mean(v, o, usable & rs) for v, o, rs in ((vl, ol, row_l), (vr, orr, row_r))]
    sides = [x for x in sides if np.isfinite(x)]
    beside = float(np.mean(sides)) if sides else float("nan")
    out["beside"] = beside
    # shadow width: lateral profile (mean over the usable depths), below halfway
    # between the shadow and the beside level, contiguous around the focus' centre
    vp, op = sample(lat_prof)
    op = op & usable[:, None]
    cnt = op.sum(axis=0)
    prof = np.where(cnt > 0, (vp * op).sum(axis=0) / np.maximum(cnt, 1), np.nan)
    if np.isfinite(beside) and np.isfinite(b) and beside > b:
        level = 0.5 * (b + beside)
        centre = int(np.argmin(np.abs(lat_prof - lat_c)))
        below = np.nan_to_num(prof, nan=beside) < level
        if below[centre]:
            lo = centre
            while lo > 0 and below[lo - 1]:
                lo -= 1
            hi = centre
            while hi < below.size - 1 and below[hi + 1]:
                hi += 1
            out["width_mm"] = float((hi - lo + 1) * step)
            # symmetric width: twice the nearer edge's distance from the focus axis (a
            # shadow that runs into an anechoic area on one side keeps its other edge)
            out["width_sym_mm"] = float((2 * min(centre - lo, hi - centre) + 1) * step)
    return out


# --------------------------------------------------------------------------- detector
def detect_ultrasound(
    image: Image,
    *,
    probe: str = "auto",
    smooth_mm: float = 0.5,
    background_mm: float = 40.0,
    z_threshold: float = 3.0,
    ratio: float = 1.4,
    min_size_mm: float = 1.0,
    max_size_mm: float = 20.0,
    shadow_mm: float = 15.0,
    min_shadow_contrast: float = 0.4,
    mask: np.ndarray | None = None,
    explain: bool = False,
) -> Report:
    """Find calcifications on a B-mode ultrasound image: echogenic foci with a shadow.

    Parameters
    ----------
    image : Image
        ``modality="US"``; 2D, or 3D ``(frames, rows, cols)`` from
        ``load(..., frame="all")`` (each frame analysed on its own).
    probe : {"auto", "linear", "sector"}
        Beam geometry; ``"auto"`` decides from the edges of the fan (sector and curved
        probes both count as ``"sector"``: rays from an apex).  A known geometry per
        B-mode region may be given in ``image.geometry["beams"]`` (a list of dicts as
        returned by :func:`beam_geometry`); it is used unless ``probe`` forces
        another type.
    smooth_mm : float
        Gaussian smoothing (sigma, mm) against speckle.
    background_mm : float
        Width across the beam of the same-depth background window.
    z_threshold : float
        A focus is at least this many background spreads above the same-depth
        median...
    ratio : float
        ...and at least ``ratio`` times that median.
    min_size_mm, max_size_mm : float
        Equivalent diameter limits of a focus.
    shadow_mm : float
        Depth range behind the focus examined for a shadow (mm).
    min_shadow_contrast : float
        Keep foci whose shadow contrast (1 - behind/beside) reaches this.
    mask : ndarray of bool, optional
        Region of interest: only foci whose centre lies in it are reported.
    explain : bool
        Also list every rejected candidate with the reason (and its shadow
        measures) in ``report.extra["rejected"]``.

    Returns
    -------
    Report
        Findings with ``shadow_contrast``, ``depth_mm``, ``region`` and extras
        ``shadow_width_mm``, ``bmode_region``, ``probe`` (and ``frame`` and ``track``
        for a cine). ``report.extra["beam"]`` holds the probe type and apex per region.
        For a cine the same calcification seen in several frames is reported once per
        frame; findings of one calcification share a ``track`` number
        (:func:`link_cine_findings`) and ``report.extra["frames"]`` holds the findings
        per frame and ``distinct_calcifications``, the number of tracks.
    """
    if probe not in PROBES:
        raise InvalidParameterError(f"probe must be one of {PROBES}, got {probe!r}")
    for name, v in (("smooth_mm", smooth_mm), ("background_mm", background_mm), ("shadow_mm", shadow_mm),
                    ("min_size_mm", min_size_mm), ("max_size_mm", max_size_mm), ("ratio", ratio)):
        if not (np.isfinite(v) and v > 0):
            raise InvalidParameterError(f"{name} must be a positive number, got {v!r}")
    if not np.isfinite(min_shadow_contrast) or not np.isfinite(z_threshold):
        raise InvalidParameterError("min_shadow_contrast and z_threshold must be finite numbers")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise InvalidParameterError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    params = dict(probe=probe, smooth_mm=smooth_mm, background_mm=background_mm, z_threshold=z_threshold,
                  ratio=ratio, min_size_mm=min_size_mm, max_size_mm=max_size_mm, shadow_mm=shadow_mm,
                  min_shadow_contrast=min_shadow_contrast, roi_mask=mask is not None)
    warnings = list(image.warnings)
    has_spacing = image.spacing_mm is not None
    if not has_spacing:
        warnings.append(
            f"no pixel spacing: sizes and depths are not reported in mm; filter sizes assumed "
            f"{ASSUMED_PIXEL_MM} mm pixels"
        )
    frames = [image.pixels] if image.ndim == 2 else list(image.pixels)
    valids = ([image.valid_mask] if image.ndim == 2 else list(image.valid_mask)) if image.valid_mask is not None \
        else [None] * len(frames)
    masks = ([mask] if image.ndim == 2 else list(mask)) if mask is not None else [None] * len(frames)
    all_rows: list[dict[str, Any]] = []
    labels_out = np.zeros(image.shape, np.int32)
    stats = {"candidates": 0, "no_shadow": 0, "untestable": 0, "size": 0, "line": 0, "overlay": 0, "dim": 0}
    rejected: list[dict[str, Any]] | None = [] if explain else None
    geoms: list[dict[str, Any]] = []
    for f, (pix, val, roi) in enumerate(zip(frames, valids, masks)):
        n_rej = len(rejected) if rejected is not None else 0
        rows, geoms_f = _detect_frame(image, pix, val, roi, params, stats, rejected)
        if rejected is not None and image.ndim == 3:
            for r in rejected[n_rej:]:
                r["frame"] = f
        if f == 0:
            geoms = geoms_f
        for r in rows:
            r["frame"] = f if image.ndim == 3 else None
        all_rows.extend(rows)
    # stable ids: frame, region, row, col
    all_rows.sort(key=lambda r: (r["frame"] or 0, r["bmode_region"] if r["bmode_region"] is not None else -1,
                                 r["centroid"][0], r["centroid"][1]))
    findings = []
    side = _laterality(image)
    for i, r in enumerate(all_rows):
        fid = i + 1
        yy, xx = r["pixels"]
        if image.ndim == 3:
            labels_out[r["frame"], yy, xx] = fid
        else:
            labels_out[yy, xx] = fid
        findings.append(_finding(fid, r, image, has_spacing, side))
    distribution = describe_distribution(findings)
    params.update({f"components_{k}": v for k, v in stats.items()})
    cine: dict[str, Any] = {}
    if image.ndim == 3:
        per = np.bincount([r["frame"] for r in all_rows], minlength=len(frames)).tolist()
        tracks = link_cine_findings(findings)
        for f, t in zip(findings, tracks):
            f.extra["track"] = int(t)
        cine = {"frames": {"analysed": len(frames), "findings_per_frame": per,
                           "frames_with_findings": int(sum(1 for c in per if c)),
                           "distinct_calcifications": int(tracks.max()) if tracks.size else 0}}
    extra = {"probe": [g["probe"] for g in geoms],
             "apex_mm": [g.get("apex_mm") for g in geoms] if has_spacing else None}
    return Report(
        source=image.source,
        modality="US",
        shape=list(image.shape),
        spacing_mm=None if not has_spacing else list(image.spacing_mm),
        findings=findings,
        warnings=warnings,
        distribution=distribution,
        scores=None,
        parameters=params,
        spacing_source=image.spacing_source,
        extra={"beam": extra, **({"rejected": rejected} if rejected is not None else {}), **cine},
        labels=labels_out,
    )


def link_cine_findings(findings: list[Finding], max_gap_frames: int = 2) -> np.ndarray:
    """Group the per-frame findings of a cine into tracks, one per calcification.

    A calcification seen in consecutive frames is one object: two findings are linked
    when their frames differ by 1..``max_gap_frames`` (one dropped detection is
    bridged) and their centroids lie within ``max(2 mm, 0.75 x the larger equivalent
    diameter)``, the tolerance :func:`calcdetect.validation.match_findings` uses to call
    a finding the same object.  Linked findings form tracks (connected components of the
    links).

    Parameters
    ----------
    findings : list of Finding
        Findings of a cine, each with ``extra["frame"]``; positions are their in-plane
        ``centroid_mm`` (each region's own pixel size), or without spacing ``centroid_px``
        ``[frame, row, col]`` at the assumed pixel size ``ASSUMED_PIXEL_MM``, as the
        detector's filters are.
    max_gap_frames : int
        Largest frame difference that is still linked.

    Returns
    -------
    ndarray of int
        Track number (1..n_tracks, in order of first appearance) for each finding.
    """
    n = len(findings)
    if n == 0:
        return np.zeros(0, np.int64)
    frame = np.array([f.extra["frame"] for f in findings], float)
    pos = np.array([f.centroid_mm if f.centroid_mm is not None
                    else [c * ASSUMED_PIXEL_MM for c in f.centroid_px[1:]] for f in findings], float)
    diam = np.array([(f.equivalent_diameter_mm if f.equivalent_diameter_mm is not None
                      else 2.0 * np.sqrt(f.extra["num_pixels"] / np.pi) * ASSUMED_PIXEL_MM) for f in findings])
    # candidate pairs by position only (a KD-tree keeps this linear in the findings),
    # then the frame gap and each pair's own tolerance
    pairs = cKDTree(pos).query_pairs(r=max(2.0, 0.75 * float(diam.max())), output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    df = np.abs(frame[i] - frame[j])
    tol = np.maximum(2.0, 0.75 * np.maximum(diam[i], diam[j]))
    ok = (df >= 1) & (df <= max_gap_frames) & (np.hypot(*(pos[i] - pos[j]).T) <= tol)
    links = coo_matrix((np.ones(int(ok.sum())), (i[ok], j[ok])), shape=(n, n))
    _, comp = connected_components(links, directed=False)
    first = {}
    for c in comp[np.argsort(frame, kind="stable")]:
        first.setdefault(int(c), len(first) + 1)
    return np.array([first[int(c)] for c in comp], np.int64)


def _laterality(image: Image) -> str | None:
    lat = str(image.metadata.get("ImageLaterality") or image.metadata.get("Laterality") or "").upper()
    return {"L": "left", "R": "right"}.get(lat)


def _regions(image: Image, shape: tuple[int, int]) -> list[dict[str, Any]]:
    regs = image.geometry.get("regions") or []
    if regs:
        return [dict(r, number=k) for k, r in enumerate(regs)]
    sp = tuple(image.spacing_mm[-2:]) if image.spacing_mm is not None else None
    return [{"box": (0, 0, shape[1] - 1, shape[0] - 1), "spacing_mm": sp, "number": None}]


def _detect_frame(image, pix, val, roi, params, stats, rejected):
    import cv2

    shape = pix.shape
    valid_all = np.ones(shape, bool) if val is None else val
    fan_all = image.geometry.get("fan")
    if fan_all is None or np.shape(fan_all) != shape:
        # an image that did not come through the DICOM loader (a PNG/JPEG frame, an
        # array): find the fan and the overlays here, as the loader would
        from ..io.ultrasound import fan_mask, overlay_mask

        color = image.color if image.color is not None and image.color.shape[:2] == shape else None
        over = overlay_mask(pix, color)
        fan_all = fan_mask(pix, None, over)
        valid_all = valid_all & fan_all & ~over
    has_spacing = image.spacing_mm is not None
    out_rows = []
    geoms = []
    for reg in _regions(image, shape):
        x0, y0, x1, y1 = reg["box"]
        box = np.zeros(shape, bool)
        box[y0:y1 + 1, x0:x1 + 1] = True
        sp = reg.get("spacing_mm") if has_spacing else None
        if sp is None or not has_spacing:
            sp = (ASSUMED_PIXEL_MM, ASSUMED_PIXEL_MM) if not has_spacing else tuple(image.spacing_mm[-2:])
        sp = (float(sp[0]), float(sp[1]))
        # when the user overrode the pixel size, it wins over the region tags
        if has_spacing and image.spacing_source and image.spacing_source.startswith("user"):
            sp = tuple(float(v) for v in image.spacing_mm[-2:])
        valid = valid_all & box
        fan = fan_all & box
        if valid.sum() < 100:
            continue
        # a known beam geometry (geometry["beams"][k], as from beam_geometry) wins
        # over the estimate from the fan, unless the caller forces another probe type
        k = reg["number"] or 0
        known = image.geometry.get("beams") or []
        geom = dict(known[k]) if k < len(known) and known[k] else None
        if not geom or (params["probe"] != "auto" and geom.get("probe") != params["probe"]):
            geom = beam_geometry(fan, sp, params["probe"])
        geoms.append(geom)
        sig = params["smooth_mm"] / np.array(sp)
        smooth = cv2.GaussianBlur(pix.astype(np.float32), (0, 0), sigmaX=float(sig[1]), sigmaY=float(sig[0]))
        # a lighter smoothing to measure the size: the focus borders its own dark shadow,
        # and a wide blur would pull its far edge in
        sig2 = 0.5 * sig
        fine = cv2.GaussianBlur(pix.astype(np.float32), (0, 0), sigmaX=float(sig2[1]), sigmaY=float(sig2[0]))
        bg, sd = _background(smooth, valid, geom, sp, params["background_mm"], 3.0)
        floor = 2.0 + 0.05 * bg
        z = (smooth - bg) / np.maximum(sd, floor)
        cand = valid & (z >= 0.5 * params["z_threshold"]) & (smooth >= params["ratio"] * bg)
        labels, n = label(cand)
        if n == 0:
            continue
        tissue = tissue_level(smooth[valid])
        tab = regionprops_table(labels, z, spacing=sp)
        keep = tab["intensity_max"] >= params["z_threshold"]
        # quick size screen before the half-max refinement
        keep &= tab["equivalent_diameter"] >= 0.7 * params["min_size_mm"]
        stats["candidates"] += int(keep.sum())
        for i in np.flatnonzero(keep):
            lab = int(tab["label"][i])
            # half maximum between the same-depth background and the peak, grown from
            # the candidate by up to 1 mm (the candidate threshold may sit above it)
            grow = int(np.ceil(1.0 / min(sp)))
            r0 = max(int(tab["bbox-0"][i]) - grow, 0)
            c0 = max(int(tab["bbox-1"][i]) - grow, 0)
            r1 = min(int(tab["bbox-2"][i]) + grow, shape[0])
            c1 = min(int(tab["bbox-3"][i]) + grow, shape[1])
            comp = labels[r0:r1, c0:c1] == lab
            s_crop = fine[r0:r1, c0:c1]
            b_level = float(np.median(bg[r0:r1, c0:c1][comp]))
            peak = float(s_crop[comp].max())
            level = b_level + 0.5 * (peak - b_level)
            near = cv2.dilate(comp.astype(np.uint8), cv2.getStructuringElement(
                cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))) > 0
            core = near & (s_crop >= level) & valid_all[r0:r1, c0:c1] | comp & (s_crop >= level)
            # the connected piece holding the peak
            nl, cl = cv2.connectedComponents(core.astype(np.uint8), connectivity=8)
            if nl > 2:
                py, px = np.unravel_index(np.argmax(np.where(core, s_crop, -np.inf)), core.shape)
                core = cl == cl[py, px]
            yy, xx = nonzero_rc(core)
            yy = yy + r0
            xx = xx + c0
            area = yy.size * sp[0] * sp[1]
            eqd = float(np.sqrt(4 * area / np.pi))
            if peak < tissue:
                # brighter than the blood or fluid around it, but not than soft tissue:
                # not hyperechoic (a speckle in a heart chamber or a cyst)
                reason, sh = f"dim: peak {peak:.0f} below the tissue level {tissue:.0f}", None
            else:
                reason, sh = _judge(yy, xx, eqd, smooth, valid, geom, sp, params)
            if reason is not None:
                stats[reason.split(":")[0]] += 1
                if rejected is not None:
                    rejected.append({
                        "centroid_px": [float(yy.mean()), float(xx.mean())], "reason": reason,
                        "equivalent_diameter_px": float(np.sqrt(4 * yy.size / np.pi)),
                        "bmode_region": reg["number"],
                        **({} if sh is None else {k: float(v) for k, v in sh.items()}),
                    })
                continue
            cy, cx = float(yy.mean()), float(xx.mean())
            if roi is not None and not roi[int(round(cy)), int(round(cx))]:
                continue
            t, _ = _beam_coords(np.array([cy]), np.array([cx]), geom, sp)
            depth = float(t[0]) - float(geom["surface_mm"])
            out_rows.append({
                "pixels": (yy, xx), "centroid": (cy, cx), "spacing": sp, "shadow": sh,
                "depth_mm": max(depth, 0.0), "bmode_region": reg["number"], "probe": geom["probe"],
                "peak": peak, "background": b_level, "intensity": pix,
            })
    return out_rows, geoms


def _judge(yy, xx, eqd, smooth, valid, geom, sp, params):
    """Why a candidate is not reported (None when it is), and its shadow measures."""
    if eqd < params["min_size_mm"] or eqd > params["max_size_mm"]:
        return "size: outside min_size_mm..max_size_mm", None
    # a thin line echo: fascia, a valve leaflet, a specular interface -- or the bright
    # surface of a large calcification, whose body the beam does not enter.  Only
    # the last casts a strong shadow, so a line must pass a stricter shadow test.
    lab1 = np.zeros((int(yy.max() - yy.min()) + 1, int(xx.max() - xx.min()) + 1), np.int32)
    lab1[yy - yy.min(), xx - xx.min()] = 1
    ax = regionprops_table(lab1, spacing=sp)
    line = bool(ax["axis_minor_length"][0] < LINE_SHORT_MM and ax["axis_major_length"][0] > 3.0 * ax["axis_minor_length"][0])
    if line and ax["axis_major_length"][0] > LINE_MAX_MM:
        return "line: thin line echo longer than a calcification's surface", None
    # mostly graphics-free: the focus lies in tissue
    if valid[yy, xx].mean() < 0.5:
        return "overlay: mostly on graphics", None
    sh = shadow_test(smooth, valid, yy, xx, geom, sp, shadow_mm=params["shadow_mm"])
    if not np.isfinite(sh["contrast"]):
        return "untestable: too little tissue behind or beside", sh
    thr = params["min_shadow_contrast"]
    # a clear shadow: dark against the tissue beside it, darker than each side, over
    # the near and the far half of the examined depth
    if line and sh["contrast"] < max(thr, LINE_SHADOW_CONTRAST):
        return "line: thin line echo without a strong shadow", sh
    if sh["contrast"] < thr:
        return "no_shadow: contrast below min_shadow_contrast", sh
    if sh["contrast_min_side"] < MIN_SIDE_FACTOR * thr:
        return "no_shadow: not darker than both sides", sh
    if sh["contrast_near"] < 0.5 * thr or sh["contrast_far"] < 0.5 * thr:
        return "no_shadow: does not persist with depth", sh
    # the shadow is cast by the focus: about as wide as it (an anechoic area behind a
    # bright interface is much wider than the interface's echo)
    a, b = SHADOW_WIDTH_RULE
    if not (np.isfinite(sh["width_sym_mm"]) and sh["width_sym_mm"] <= a * sh["focus_width_mm"] + b):
        return "no_shadow: dark band much wider than the focus", sh
    return None, sh


def _finding(fid: int, r: dict[str, Any], image: Image, has_spacing: bool, side: str | None) -> Finding:
    yy, xx = r["pixels"]
    sp = r["spacing"]
    lab = np.zeros((int(yy.max()) - int(yy.min()) + 1, int(xx.max()) - int(xx.min()) + 1), np.int32)
    lab[yy - yy.min(), xx - xx.min()] = 1
    crop = r["intensity"][int(yy.min()):int(yy.max()) + 1, int(xx.min()):int(xx.max()) + 1]
    t = regionprops_table(lab, crop, spacing=sp)
    mm = (lambda v: float(v)) if has_spacing else (lambda v: None)
    cy, cx = r["centroid"]
    frame = r.get("frame")
    centroid_px = [cy, cx] if frame is None else [float(frame), cy, cx]
    bbox = [int(yy.min()), int(xx.min()), int(yy.max()) + 1, int(xx.max()) + 1]
    if frame is not None:
        bbox = [frame] + bbox[:2] + [frame + 1] + bbox[2:]
    centroid_mm = None
    if has_spacing:
        centroid_mm = [cy * sp[0], cx * sp[1]]
    depth = r["depth_mm"]
    if has_spacing:
        region = "dermal" if depth <= DERMIS_MM else ("subcutaneous" if depth <= SUBCUTIS_MM else "deep")
    else:
        region = None
    sh = r["shadow"]
    extra = {
        "focus_width_mm": mm(sh["focus_width_mm"]),
        "shadow_width_mm": mm(sh["width_mm"]) if np.isfinite(sh["width_mm"]) else None,
        "shadow_depth_tested_mm": mm(sh["depth_tested_mm"]),
        "bmode_region": r["bmode_region"],
        "probe": r["probe"],
        "background": float(r["background"]),
        "num_pixels": int(yy.size),
    }
    if frame is not None:
        extra["frame"] = frame
    return Finding(
        id=fid,
        centroid_px=centroid_px,
        centroid_mm=centroid_mm,
        bbox_px=bbox,
        equivalent_diameter_mm=mm(t["equivalent_diameter"][0]),
        long_axis_mm=mm(t["axis_major_length"][0]),
        short_axis_mm=mm(t["axis_minor_length"][0]),
        area_mm2=mm(t["size"][0]),
        volume_mm3=None,
        peak=float(t["intensity_max"][0]),
        mean=float(t["intensity_mean"][0]),
        side=side,
        depth_mm=mm(depth) if has_spacing else None,
        region=region,
        shadow_contrast=float(sh["contrast"]),
        extra=extra,
    )
