"""Where the calcifications lie and how they are arranged.

Rules (documented in docs/algorithms.md, tested on phantoms built to each pattern):

side
    Patient left/right.  CT: the finding's LPS x against the body midline of its slice
    (halfway between the body's left and right edges); within ``MIDLINE_MM`` of the
    midline the side is null.  Radiographs and ultrasound: from orientation/laterality
    tags when present, else null (image left is not patient left).
pattern
    ``"none"`` (0 findings); ``"confluent mass"`` when any finding's long axis is at
    least ``CONFLUENT_MM`` (30 mm); ``"solitary"`` (1 finding); ``"clustered"`` when all
    findings lie within ``CLUSTER_MM`` (30 mm) of each other (largest centroid-to-
    centroid distance); otherwise ``"scattered"`` (speckled: several separate foci
    spread over a region).  Without mm coordinates the pattern is counted only
    (none/solitary/multiple).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MIDLINE_MM = 5.0
CONFLUENT_MM = 30.0
CLUSTER_MM = 30.0


def side_from_patient_x(x_lps: float, midline_x: float, tolerance_mm: float = MIDLINE_MM) -> str | None:
    """``"left"``/``"right"`` from an LPS x coordinate (+x is the patient's left).

    Parameters
    ----------
    x_lps : float
        The finding's x coordinate in the patient (LPS) frame, mm.
    midline_x : float
        The body midline's x coordinate in the same frame, mm.
    tolerance_mm : float
        Half-width of the band around the midline that has no side (default
        :data:`MIDLINE_MM`, 5 mm).

    Returns
    -------
    str or None
        ``"left"`` when ``x_lps`` is at least ``tolerance_mm`` to the patient's left of
        the midline, ``"right"`` when at least that far to the right, ``None`` within
        the band (strictly closer than ``tolerance_mm``).
    """
    d = x_lps - midline_x
    if abs(d) < tolerance_mm:
        return None
    return "left" if d > 0 else "right"


def nearest_neighbour_mm(points: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest other point (NaN when alone).

    Parameters
    ----------
    points : numpy.ndarray
        Shape ``(n, d)``: one point per row (e.g. finding centroids in mm).

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``, float64, in the points' units (mm for mm input): Euclidean
        distance to the nearest other point (0 for coincident points); all NaN when
        ``n < 2``.
    """
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=2)
    return dist[:, 1]


def classify_pattern(points_mm: np.ndarray | None, long_axes_mm: Sequence[float | None], n: int) -> str:
    """The overall pattern (see the module docstring for the rule).

    Parameters
    ----------
    points_mm : numpy.ndarray or None
        Finding centroids in mm, shape ``(n, d)``; ``None`` when any finding has no mm
        coordinates.
    long_axes_mm : sequence of float or None
        Each finding's long axis in mm (``None`` entries are ignored).
    n : int
        Number of findings.

    Returns
    -------
    str
        ``"none"`` (``n == 0``), ``"confluent mass"`` (a long axis of at least
        :data:`CONFLUENT_MM`, whatever ``n``), ``"solitary"`` (``n == 1``),
        ``"multiple"`` (several findings, ``points_mm`` is ``None``), ``"clustered"``
        (largest centroid-to-centroid distance at most :data:`CLUSTER_MM`) or
        ``"scattered"``.
    """
    if n == 0:
        return "none"
    axes = [a for a in long_axes_mm if a is not None]
    if axes and max(axes) >= CONFLUENT_MM:
        return "confluent mass"
    if n == 1:
        return "solitary"
    if points_mm is None:
        return "multiple"
    from scipy.spatial.distance import pdist

    extent = float(pdist(np.asarray(points_mm, dtype=np.float64)).max())
    return "clustered" if extent <= CLUSTER_MM else "scattered"


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def describe_distribution(findings: Sequence[Any]) -> dict[str, Any]:
    """Summary of a list of findings: counts by side/region, sizes, spacing, pattern.

    Parameters
    ----------
    findings : sequence of Finding

    Returns
    -------
    dict
        ``pattern``, ``by_side``, ``by_region``, ``size_mm`` (min/median/max of the
        equivalent diameters, null without spacing), ``nearest_neighbour_mm``
        (min/median/max), ``extent_mm`` and a one-line ``summary``.
    """
    n = len(findings)
    sizes = [f.equivalent_diameter_mm for f in findings if f.equivalent_diameter_mm is not None]
    pts = [f.centroid_mm for f in findings if f.centroid_mm is not None]
    points = np.asarray(pts, dtype=np.float64) if (n and len(pts) == n) else None
    by_side: dict[str, int] = {}
    by_region: dict[str, int] = {}
    for f in findings:
        key = f.side or "unknown"
        by_side[key] = by_side.get(key, 0) + 1
        key = f.region or "unknown"
        by_region[key] = by_region.get(key, 0) + 1
    pattern = classify_pattern(points, [f.long_axis_mm for f in findings], n)
    size = None
    if sizes and len(sizes) == n:
        size = {"min": float(np.min(sizes)), "median": float(np.median(sizes)), "max": float(np.max(sizes))}
    nn = None
    extent = None
    if points is not None and n >= 2:
        d = nearest_neighbour_mm(points)
        nn = {"min": float(d.min()), "median": float(np.median(d)), "max": float(d.max())}
        from scipy.spatial.distance import pdist

        extent = float(pdist(points).max())
    return {
        "pattern": pattern,
        "by_side": by_side,
        "by_region": by_region,
        "size_mm": size,
        "nearest_neighbour_mm": nn,
        "extent_mm": extent,
        "summary": summary_text(n, size, by_side, by_region, pattern),
    }


def summary_text(n: int, size: dict[str, float] | None, by_side: dict[str, int], by_region: dict[str, int],
                 pattern: str) -> str:
    """A clinician's one-liner, e.g. "3 calcifications, 2.1-5.6 mm, both sides, subcutaneous, scattered".

    Parameters
    ----------
    n : int
        Number of findings.
    size : dict or None
        ``{"min", "median", "max"}`` equivalent diameters in mm (as
        :func:`describe_distribution` computes them); ``None`` or empty leaves sizes out.
    by_side : dict
        Side (``"left"``, ``"right"``, ``"unknown"``) -> count; only the keys matter.
    by_region : dict
        Region (``"dermal"``, ``"subcutaneous"``, ``"deep"``, ...) -> count; only the
        keys matter, other regions are left out.
    pattern : str
        From :func:`classify_pattern`.

    Returns
    -------
    str
        ``"no calcification found"`` when ``n == 0``; otherwise the count, the size (one
        value for one finding, else min-max, mm to 0.1), "both sides" or "<side> side",
        the regions joined by ``/``, and the pattern, separated by commas.
    """
    if n == 0:
        return "no calcification found"
    parts = [f"{n} calcification{'s' if n != 1 else ''}"]
    if size:
        parts.append(f"{_fmt(size['min'])} mm" if n == 1 else f"{_fmt(size['min'])}-{_fmt(size['max'])} mm")
    sides = {s for s in by_side if s in ("left", "right")}
    if sides == {"left", "right"}:
        parts.append("both sides")
    elif sides:
        parts.append(f"{sides.pop()} side")
    regions = [r for r in ("dermal", "subcutaneous", "deep") if r in by_region]
    if regions:
        parts.append("/".join(regions))
    parts.append(pattern)
    return ", ".join(parts)
