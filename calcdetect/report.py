"""Findings and reports: the public output contract (design.md section 3).

A :class:`Report` is plain data plus, in memory only, the label image of its findings
(``Report.labels``) so pictures and DICOM SEG can be drawn from exactly what was
measured.  ``to_dict``/``to_json`` give the contract's JSON; ``to_rows`` one flat row per
finding; ``to_dataframe`` the same as a pandas DataFrame when pandas is installed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is optional: annotations only
    import pandas as pd



def _clean(value: Any) -> Any:
    """Convert numpy scalars/arrays and non-finite floats into JSON-ready values."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def _round(value: Any, digits: int = 3) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    return value


@dataclass
class Finding:
    """One calcification.

    Sizes are in mm and ``None`` when the image has no physical spacing.  ``peak`` and
    ``mean`` are HU on CT and image units otherwise.  Modality-specific extras
    (``agatston`` on CT, ``shadow_contrast`` on ultrasound, ...) live in ``extra`` and
    are flattened into the JSON object.
    """

    id: int
    centroid_px: list[float]
    centroid_mm: list[float] | None
    bbox_px: list[int]
    equivalent_diameter_mm: float | None
    long_axis_mm: float | None
    short_axis_mm: float | None
    area_mm2: float | None
    volume_mm3: float | None
    peak: float
    mean: float
    side: str | None = None
    depth_mm: float | None = None
    region: str | None = None
    shadow_contrast: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The finding as a JSON-ready dict (contract field names)."""
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return _round(_clean(d))


@dataclass
class Report:
    """Everything found in one image or series.

    Attributes
    ----------
    source : str
        The input path.
    modality : str
        ``"CT"``, ``"XRAY"`` or ``"US"``.
    shape : list of int
        Array shape analysed.
    spacing_mm : list of float or None
        Pixel spacing per axis, ``None`` when unknown.
    findings : list of Finding
    warnings : list of str
    distribution : dict
        Side, region, pattern and size summary (see :mod:`calcdetect.distribution`).
    scores : dict or None
        CT calcium scores: ``agatston``, ``volume_mm3``, ``mass_mg``.
    parameters : dict
        The detector options used, for reproducibility.
    labels : ndarray or None
        In memory only: label image whose value ``i`` marks finding ``id == i``.
    """

    source: str
    modality: str
    shape: list[int]
    spacing_mm: list[float] | None
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    distribution: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    spacing_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def count(self) -> int:
        """Number of findings."""
        return len(self.findings)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready plain data (the public JSON contract)."""
        from . import __version__

        d: dict[str, Any] = {
            "source": self.source,
            "modality": self.modality,
            "shape": list(self.shape),
            "spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "spacing_source": self.spacing_source,
            "count": self.count,
            "warnings": list(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
            "distribution": _round(_clean(self.distribution)),
        }
        if self.scores is not None:
            d["scores"] = _round(_clean(self.scores))
        d.update(_round(_clean(self.extra)))
        d["parameters"] = _clean(self.parameters)
        d["calcdetect_version"] = __version__
        return _clean(d)

    def to_json(self, **kwargs: Any) -> str:
        """The report as a JSON string (``kwargs`` go to :func:`json.dumps`)."""
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per finding, with the source and modality, for tables/CSV.

        List-valued fields become ``name_0``, ``name_1``, ... columns.
        """
        rows = []
        for f in self.findings:
            row: dict[str, Any] = {"source": self.source, "modality": self.modality}
            for key, value in f.to_dict().items():
                if isinstance(value, list):
                    for i, v in enumerate(value):
                        row[f"{key}_{i}"] = v
                else:
                    row[key] = value
            rows.append(row)
        return rows

    def to_dataframe(self) -> pd.DataFrame:
        """The rows of :meth:`to_rows` as a ``pandas.DataFrame``.

        Returns
        -------
        pandas.DataFrame
            One row per finding.  With no findings: no rows, and the columns every
            finding has (``source``, ``modality``, the :class:`Finding` fields with
            list fields expanded for this image's dimensions), so tables of several
            reports concatenate.

        Raises
        ------
        CalcdetectError
            When pandas is not installed (``pip install 'calcdetect[pandas]'``).
        """
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on environment
            from .errors import CalcdetectError

            raise CalcdetectError(
                "to_dataframe() needs pandas", fix="pip install 'calcdetect[pandas]'"
            ) from exc
        rows = self.to_rows()
        if rows:
            return pd.DataFrame(rows)
        return pd.DataFrame(columns=self._base_columns())

    def _base_columns(self) -> list[str]:
        """Column names of :meth:`to_rows` that every finding of this report would have."""
        nd = len(self.shape)
        widths = {"centroid_px": nd, "bbox_px": 2 * nd}
        if self.spacing_mm is not None:  # without spacing centroid_mm is one null column
            widths["centroid_mm"] = nd
        cols = ["source", "modality"]
        for name in Finding.__dataclass_fields__:
            if name == "extra":
                continue
            cols += [f"{name}_{i}" for i in range(widths[name])] if name in widths else [name]
        return cols

    def summary_row(self) -> dict[str, Any]:
        """One row describing the whole image/series (for summary tables)."""
        d = self.distribution or {}
        size = d.get("size_mm") or {}
        row: dict[str, Any] = {
            "source": self.source,
            "modality": self.modality,
            "count": self.count,
            "size_min_mm": size.get("min"),
            "size_median_mm": size.get("median"),
            "size_max_mm": size.get("max"),
            "pattern": d.get("pattern"),
            "summary": d.get("summary"),
            "warnings": " | ".join(self.warnings),
        }
        for side, n in (d.get("by_side") or {}).items():
            row[f"side_{side}"] = n
        for region, n in (d.get("by_region") or {}).items():
            row[f"region_{region}"] = n
        if self.scores:
            for key, value in self.scores.items():
                row[f"score_{key}"] = value
        return _round(_clean(row))
