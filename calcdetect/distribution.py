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
    """``"left"``/``"right"`` from an LPS x coordinate (+x is the patient's left)."""
    d = x_lps - midline_x
    if abs(d) < tolerance_mm:
        return None
    return "left" if d > 0 else "right"


def nearest_neighbour_mm(points: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest other point (NaN when alone)."""
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=2)
    return dist[:, 1]


def classify_pattern(points_mm: np.ndarray | None, long_axes_mm: Sequence[float | None], n: int) -> str:
    """The overall pattern (see the module docstring for the rule)."""
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


def summary_text(n: int, size: dict | None, by_side: dict, by_region: dict, pattern: str) -> str:
    """A clinician's one-liner, e.g. "3 calcifications, 2.1-5.6 mm, both sides, subcutaneous, scattered"."""
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
