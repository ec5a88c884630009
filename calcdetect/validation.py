"""Scoring detections against known truth (phantoms, inserted calcifications).

Matching rule (docs/validation.md): a truth is found when a finding's centroid lies
within ``max(2 mm, 0.75 x its diameter)`` of the truth's centre; matching is one-to-one,
closest pairs first.  Unmatched findings are false findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class MatchResult:
    """Outcome of matching findings to truths for one image."""

    matched: list[tuple[int, int]] = field(default_factory=list)  # (truth index, finding index)
    missed: list[int] = field(default_factory=list)               # truth indices
    false: list[int] = field(default_factory=list)                # finding indices
    size_errors_mm: list[float] = field(default_factory=list)     # finding - truth diameter

    @property
    def found(self) -> int:
        """Number of truths found (matched one-to-one to a finding).

        Returns
        -------
        int
            ``len(matched)``.
        """
        return len(self.matched)


def match_findings(
    truths: Sequence[dict[str, Any]],
    findings: Sequence[Any],
    spacing_mm: Sequence[float],
    *,
    min_radius_mm: float = 2.0,
    diameter_factor: float = 0.75,
) -> MatchResult:
    """Match findings to ground truth.

    Parameters
    ----------
    truths : sequence of dict
        Each with ``centroid_px`` (array index order, same as the findings) and
        ``diameter_mm``.
    findings : sequence of Finding or dict
        Reported findings (``centroid_px``, ``equivalent_diameter_mm``).
    spacing_mm : sequence of float
        Pixel spacing per axis, to measure distances in mm.

    Returns
    -------
    MatchResult
    """
    sp = np.asarray(spacing_mm, dtype=np.float64)

    def get(obj, key):
        return obj[key] if isinstance(obj, dict) else getattr(obj, key)

    t_pos = np.array([np.asarray(get(t, "centroid_px"), float) * sp for t in truths]).reshape(len(truths), sp.size)
    f_pos = np.array([np.asarray(get(f, "centroid_px"), float) * sp for f in findings]).reshape(len(findings), sp.size)
    result = MatchResult()
    if len(truths) and len(findings):
        d = np.linalg.norm(t_pos[:, None, :] - f_pos[None, :, :], axis=2)
        radius = np.array([max(min_radius_mm, diameter_factor * float(get(t, "diameter_mm"))) for t in truths])
        pairs = [(d[i, j], i, j) for i in range(len(truths)) for j in range(len(findings)) if d[i, j] <= radius[i]]
        pairs.sort()
        used_t, used_f = set(), set()
        for _, i, j in pairs:
            if i in used_t or j in used_f:
                continue
            used_t.add(i)
            used_f.add(j)
            result.matched.append((i, j))
            size = get(findings[j], "equivalent_diameter_mm")
            if size is not None:
                result.size_errors_mm.append(float(size) - float(get(truths[i], "diameter_mm")))
    matched_t = {i for i, _ in result.matched}
    matched_f = {j for _, j in result.matched}
    result.missed = [i for i in range(len(truths)) if i not in matched_t]
    result.false = [j for j in range(len(findings)) if j not in matched_f]
    return result
