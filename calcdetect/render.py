"""Overlay pictures a clinician can read: the image, each finding outlined and numbered
with its JSON id, a scale bar in mm and a legend.

Display conventions
-------------------
- CT: soft-tissue window (width 400 HU, level 40 HU).  Calcium (>= 130 HU) is at the
  bright end of this window and saturates white above 240 HU; the outline marks it.
- Radiographs: a VOI from the 1st to the 99.5th percentile of the exposed field (the
  ``valid_mask``), so collimation and burned-in labels do not set the contrast.
- Ultrasound: as stored (the original colour when the source was colour).

Geometry: non-square pixels are stretched to their physical aspect; small images are
enlarged (never beyond 8x) and large ones reduced, so the long side is 512-1024 pixels.
Outlines are drawn just outside each finding so the calcification itself stays visible;
findings smaller than a few screen pixels also get a circle.  A CT series becomes a
montage of the slices that hold findings (the fewest slices that show every finding,
at most 12; the others are listed in the legend).  CT tiles carry patient orientation
letters (R/L, A/P, S/I) from the DICOM geometry.

Only ASCII text is drawn (OpenCV's Hershey fonts have no other glyphs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from scipy import ndimage as ndi

from .image import Image
from .report import Report

__all__ = ["render_overlay", "save_overlay", "display_pixels", "CT_WINDOW"]

#: CT display window (width, level) in HU: the soft-tissue window.
CT_WINDOW = (400.0, 40.0)
#: Radiograph VOI percentiles of the exposed field.
XRAY_PERCENTILES = (1.0, 99.5)
#: Most slices shown in a CT montage.
MAX_TILES = 12

_OUTLINE = (0, 255, 255)      # BGR yellow, on grey images
_OUTLINE_ON_COLOUR = (255, 255, 0)  # BGR cyan, on colour (Doppler) ultrasound: red/yellow palettes
_TEXT = (235, 235, 235)
_PANEL = (38, 38, 38)
_DIM = (170, 170, 170)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_NICE_MM = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)


# --------------------------------------------------------------------------- grey levels
def display_pixels(image: Image) -> tuple[np.ndarray, str]:
    """Map an image to displayable 8-bit values by the modality's convention.

    Parameters
    ----------
    image : Image

    Returns
    -------
    pixels : ndarray of uint8
        Same shape as ``image.pixels``, or ``(rows, cols, 3)`` RGB for colour
        ultrasound.
    description : str
        The window used, for the legend.
    """
    px = image.pixels
    if image.modality == "CT":
        width, level = CT_WINDOW
        lo = level - width / 2.0
        out = np.clip((px - lo) * (255.0 / width), 0, 255).astype(np.uint8)
        return out, f"CT soft-tissue window W{width:g} L{level:g} HU (calcium >= 130 HU is near white)"
    if image.modality == "US" and image.color is not None and image.color.shape[:2] == px.shape[-2:] and px.ndim == 2:
        return np.ascontiguousarray(image.color.astype(np.uint8)), "ultrasound as stored (colour)"
    sample = px if image.valid_mask is None else px[image.valid_mask]
    if sample.size == 0:
        sample = px.ravel()
    step = max(1, sample.size // 2_000_000)
    sample = sample.ravel()[::step]
    if image.modality == "US":
        if sample.min() >= 0 and sample.max() <= 255:
            return px.astype(np.uint8), "ultrasound as stored"
        lo, hi = np.percentile(sample, (0.5, 99.9))
        desc = "ultrasound, stretched 0.5-99.9th percentile"
    else:
        lo, hi = np.percentile(sample, XRAY_PERCENTILES)
        desc = (f"radiograph VOI {XRAY_PERCENTILES[0]:g}-{XRAY_PERCENTILES[1]:g}th percentile "
                "of the exposed field (dense = bright)")
        full_lo, full_hi = float(sample.min()), float(sample.max())
        if hi - lo <= 0.02 * (full_hi - full_lo):
            # nearly uniform field (a synthetic or heavily processed image): the percentile
            # window would collapse and paint the tissue black; show the full range instead,
            # with the background as dark grey
            lo, hi = full_lo - 0.25 * (full_hi - full_lo), full_hi
            desc = "radiograph, full range (the field is nearly uniform; dense = bright)"
    hi = hi if hi > lo else lo + 1.0
    out = np.clip((px - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return out, desc


# --------------------------------------------------------------------------- geometry
def _display_size(rows: int, cols: int, spacing2d: Sequence[float] | None, long_side: int,
                  min_long: int) -> tuple[int, int]:
    """Display (height, width): physical aspect, long side between ``min_long`` and ``long_side``."""
    h, w = float(rows), float(cols)
    if spacing2d is not None:
        sy, sx = float(spacing2d[0]), float(spacing2d[1])
        if abs(sy / sx - 1.0) > 0.02:
            m = min(sy, sx)
            h, w = rows * sy / m, cols * sx / m
    big = max(h, w)
    if big < min_long:
        s = min(min_long / big, 8.0)
    elif big > long_side:
        s = long_side / big
    else:
        s = 1.0
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _orientation_letters(affine: np.ndarray | None) -> dict[str, str] | None:
    """Edge letters (top, bottom, left, right) from the index-to-LPS affine."""
    if affine is None:
        return None

    def letter(v: np.ndarray) -> str:
        # LPS: +x is the patient's left, +y posterior, +z superior
        i = int(np.argmax(np.abs(v)))
        return ("L", "P", "S")[i] if v[i] > 0 else ("R", "A", "I")[i]

    row_dir = affine[:3, 1]
    col_dir = affine[:3, 2]
    if not (np.linalg.norm(row_dir) > 0 and np.linalg.norm(col_dir) > 0):
        return None
    return {"top": letter(-row_dir), "bottom": letter(row_dir),
            "left": letter(-col_dir), "right": letter(col_dir)}


# --------------------------------------------------------------------------- drawing helpers
def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
          color: tuple[int, int, int] = _TEXT, thick: int = 1, outline: bool = True) -> None:
    x, y = int(org[0]), int(org[1])
    if outline:
        cv2.putText(img, text, (x, y), _FONT, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), _FONT, scale, color, thick, cv2.LINE_AA)


def _text_size(text: str, scale: float = 0.5, thick: int = 1) -> tuple[int, int]:
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thick)
    return w, h + base


def _scale_bar(tile: np.ndarray, mm_per_px: float) -> str:
    """Draw a scale bar at the bottom left; returns its label."""
    H, W = tile.shape[:2]
    target_mm = 0.22 * W * mm_per_px
    nice = [v for v in _NICE_MM if v <= target_mm]
    length_mm = nice[-1] if nice else _NICE_MM[0]
    length_px = int(round(length_mm / mm_per_px))
    if length_px < 4:
        return ""
    label = f"{length_mm:g} mm"
    x0, y0 = 12, H - 14
    cv2.line(tile, (x0, y0), (x0 + length_px, y0), (0, 0, 0), 6)
    cv2.line(tile, (x0, y0), (x0 + length_px, y0), (255, 255, 255), 3)
    for x in (x0, x0 + length_px):
        cv2.line(tile, (x, y0 - 5), (x, y0 + 4), (0, 0, 0), 4)
        cv2.line(tile, (x, y0 - 5), (x, y0 + 4), (255, 255, 255), 2)
    _text(tile, label, (x0, y0 - 9), 0.5)
    return label


def _draw_orientation(tile: np.ndarray, letters: dict[str, str] | None) -> None:
    if not letters:
        return
    H, W = tile.shape[:2]
    s = 0.6
    for key, (x, y) in {
        "top": (W // 2, 18), "bottom": (W // 2, H - 6),
        "left": (6, H // 2), "right": (W - 6, H // 2),
    }.items():
        t = letters[key]
        tw, th = _text_size(t, s, 2)
        if key in ("top", "bottom"):
            x = x - tw // 2
        if key == "right":
            x = x - tw
        if key == "bottom":
            x = x + 40 if x < 200 else x  # keep clear of the scale bar
        _text(tile, t, (x, y), s, (255, 255, 255), 2)


def _draw_findings(tile: np.ndarray, labels2d: np.ndarray, number_ids: set[int],
                   colour: tuple[int, int, int] = _OUTLINE) -> None:
    """Outline every labelled finding in a plane, then number those in ``number_ids``
    where the number covers neither another number nor another finding's outline."""
    H, W = tile.shape[:2]
    rows, cols = labels2d.shape
    fy, fx = H / rows, W / cols
    objects = ndi.find_objects(labels2d)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    drawn: list[tuple[int, np.ndarray, tuple[int, int], tuple[float, float], bool, tuple[int, int, int, int]]] = []
    for idx, sl in enumerate(objects):
        if sl is None:
            continue
        fid = idx + 1
        r0, r1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, rows)
        c0, c1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, cols)
        crop = (labels2d[r0:r1, c0:c1] == fid).astype(np.uint8)
        # display-space crop, with a margin so the dilated outline is not clipped
        y0, y1 = int(np.floor(r0 * fy)), int(np.ceil(r1 * fy))
        x0, x1 = int(np.floor(c0 * fx)), int(np.ceil(c1 * fx))
        big = cv2.resize(crop, (max(x1 - x0, 1), max(y1 - y0, 1)), interpolation=cv2.INTER_NEAREST)
        pad = 3
        big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        big = cv2.dilate(big, kernel)
        contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        offset = (x0 - pad, y0 - pad)
        cv2.drawContours(tile, contours, -1, (0, 0, 0), 3, cv2.LINE_AA, offset=offset)
        cv2.drawContours(tile, contours, -1, colour, 1, cv2.LINE_AA, offset=offset)
        ext_h, ext_w = (sl[0].stop - sl[0].start) * fy, (sl[1].stop - sl[1].start) * fx
        cy = (sl[0].start + sl[0].stop) / 2 * fy
        cx = (sl[1].start + sl[1].stop) / 2 * fx
        ringed = max(ext_h, ext_w) < 10
        box = (x0 - pad, y0 - pad, x1 + pad, y1 + pad)
        if ringed:  # too small to see the outline: add a ring
            cv2.circle(tile, (int(cx), int(cy)), 9, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.circle(tile, (int(cx), int(cy)), 9, colour, 1, cv2.LINE_AA)
            box = (min(box[0], int(cx) - 11), min(box[1], int(cy) - 11),
                   max(box[2], int(cx) + 11), max(box[3], int(cy) + 11))
        drawn.append((fid, crop, (r0, c0), (cy, cx), ringed, box))
    outlines = {fid: box for fid, *_, box in drawn}
    placed: list[tuple[int, int, int, int]] = []
    for fid, crop, origin, centre, ringed, _ in drawn:
        if fid in number_ids:
            others = [b for k, b in outlines.items() if k != fid]
            _place_number(tile, str(fid), crop, origin, (fy, fx), centre, ringed, placed, others, colour)


def _place_number(tile: np.ndarray, text: str, crop: np.ndarray, origin: tuple[int, int],
                  factor: tuple[float, float], centre: tuple[float, float], ringed: bool,
                  placed: list[tuple[int, int, int, int]], outlines: list[tuple[int, int, int, int]],
                  colour: tuple[int, int, int] = _OUTLINE) -> None:
    """Write a finding's number next to its outline: beside its upper-right-most pixel,
    else the lower-right, upper-left or lower-left one -- the first spot that covers no
    number already placed and no other finding's outline (else the least crowded)."""
    H, W = tile.shape[:2]
    tw, th = _text_size(text, 0.5)
    rr, cc = np.nonzero(crop)
    rr = rr + origin[0]
    cc = cc + origin[1]
    fy, fx = factor
    cy, cx = centre
    gap = 4
    cands = []
    for key, right, below in ((cc - rr, True, False), (cc + rr, True, True),
                              (-cc - rr, False, False), (rr - cc, False, True)):
        k = int(np.argmax(key))
        x = (cc[k] + 1) * fx + gap if right else cc[k] * fx - tw - gap
        y = (rr[k] + 1) * fy + th + gap if below else rr[k] * fy - gap
        if ringed:  # keep clear of the ring drawn round tiny findings
            x = max(x, cx + 12) if right else min(x, cx - 12 - tw)
            y = max(y, cy + 12 + th) if below else min(y, cy - 12)
        cands.append((int(np.clip(x, 2, W - tw - 2)), int(np.clip(y, th + 2, H - 4))))
    best, best_hits = cands[0], None
    for tx, ty in cands:
        box = (tx, ty - th, tx + tw, ty)
        hits = 2 * sum(_overlap(box, b) for b in placed) + sum(_overlap(box, b) for b in outlines)
        if best_hits is None or hits < best_hits:
            best, best_hits = (tx, ty), hits
        if hits == 0:
            break
    placed.append((best[0], best[1] - th, best[0] + tw, best[1]))
    _text(tile, text, best, 0.5, colour, 1)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _labels_from_findings(report: Report, shape: tuple[int, ...]) -> np.ndarray:
    """Fallback when a report has no label image (e.g. read back from JSON): each finding
    becomes its bounding box, so it can still be outlined and numbered."""
    lab = np.zeros(shape, dtype=np.int32)
    nd = len(shape)
    for f in report.findings:
        b = f.bbox_px
        if len(b) != 2 * nd:
            continue
        sl = tuple(slice(int(b[a]), max(int(b[a + nd]), int(b[a]) + 1)) for a in range(nd))
        lab[sl] = np.where(lab[sl] == 0, f.id, lab[sl])
    return lab


def _to_bgr(plane: np.ndarray) -> np.ndarray:
    if plane.ndim == 2:
        return cv2.cvtColor(plane, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(plane[:, :, ::-1])


def _render_plane(plane: np.ndarray, labels2d: np.ndarray, number_ids: set[int],
                  spacing2d: Sequence[float] | None, size: tuple[int, int],
                  letters: dict[str, str] | None, colour: tuple[int, int, int] = _OUTLINE) -> np.ndarray:
    H, W = size
    interp = cv2.INTER_CUBIC if H > plane.shape[0] else cv2.INTER_AREA
    tile = cv2.resize(_to_bgr(plane), (W, H), interpolation=interp)
    _draw_findings(tile, labels2d, number_ids, colour)
    if spacing2d is not None:
        _scale_bar(tile, float(spacing2d[1]) * plane.shape[1] / W)
    _draw_orientation(tile, letters)
    return tile


# --------------------------------------------------------------------------- montage
def choose_slices(labels: np.ndarray, n_findings: int, max_tiles: int = MAX_TILES) -> tuple[list[int], dict[int, int]]:
    """Pick the fewest slices (greedy set cover, at most ``max_tiles``) that show every
    finding of a 3D label image.

    Parameters
    ----------
    labels : numpy.ndarray
        3D label image ``(slices, rows, columns)``; 0 is background, finding ``i`` is
        labelled ``i``.
    n_findings : int
        Number of findings; 0 (or an all-zero ``labels``) picks the middle slice.
    max_tiles : int
        Most slices chosen (default :data:`MAX_TILES`); findings beyond the cover
        reached by then are shown on no slice.

    Returns
    -------
    slices : list of int
        Chosen slice indices, ascending.
    home : dict
        Finding id -> the chosen slice where it is numbered (the chosen slice holding
        the most of its voxels).  Findings on no chosen slice are absent.
    """
    nz = labels.shape[0]
    if n_findings == 0 or labels.max() == 0:
        return [nz // 2], {}
    # voxels of each finding on each slice: (n_ids + 1, nz)
    flat = labels.reshape(nz, -1)
    z_idx = np.repeat(np.arange(nz), flat.shape[1]).reshape(nz, -1)
    nz_mask = flat > 0
    ids = flat[nz_mask].astype(np.int64)
    zs = z_idx[nz_mask]
    n_ids = int(labels.max())
    counts = np.zeros((n_ids + 1, nz), dtype=np.int64)
    np.add.at(counts, (ids, zs), 1)
    present = counts[1:] > 0  # (n_ids, nz)
    uncovered = present.any(axis=1)
    chosen: list[int] = []
    while uncovered.any() and len(chosen) < max_tiles:
        gain = present[uncovered].sum(axis=0)
        gain[chosen] = -1
        z = int(np.argmax(gain))
        if gain[z] <= 0:
            break
        chosen.append(z)
        uncovered &= ~present[:, z]
    chosen.sort()
    home: dict[int, int] = {}
    if chosen:
        sub = counts[1:, chosen]
        for i in np.flatnonzero(sub.max(axis=1) > 0):
            home[int(i) + 1] = chosen[int(np.argmax(sub[i]))]
    return chosen, home


def _montage(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    th, tw = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    gap = 4
    out = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), 20, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * (th + gap): r * (th + gap) + th, c * (tw + gap): c * (tw + gap) + tw] = t
    return out


# --------------------------------------------------------------------------- legend
def _wrap(text: str, width_px: int, scale: float) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        trial = f"{cur} {w}".strip()
        if _text_size(trial, scale)[0] <= width_px or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = w
    if cur:
        lines.append(cur)
    return lines


def _ascii(text: str) -> str:
    return (str(text).replace("\u2013", "-").replace("\u2014", "-").replace("\u00b3", "3")
            .replace("\u00b2", "2").replace("\u2265", ">=").replace("\u2264", "<=")
            .encode("ascii", "replace").decode("ascii"))


def _fmt_mm(v: Any) -> str:
    return "?" if v is None else f"{float(v):.1f}"


def _finding_entry(f: Any, is_volume: bool) -> str:
    parts = [f"#{f.id}"]
    if f.equivalent_diameter_mm is not None:
        parts.append(f"{f.equivalent_diameter_mm:.1f}mm")
    if f.side:
        parts.append({"left": "L", "right": "R"}.get(f.side, f.side))
    if f.region:
        parts.append({"subcutaneous": "subcut", "dermal": "dermal", "deep": "deep"}.get(f.region, f.region))
    if is_volume:
        parts.append(f"sl{int(round(f.centroid_px[0])) + 1}")
    return " ".join(parts)


def _legend(report: Report, width: int, window_desc: str, scale_label: str, extra_lines: list[str],
            colour: tuple[int, int, int] = _OUTLINE) -> np.ndarray:
    scale = 0.5
    line_h = 20
    pad = 10
    usable = width - 2 * pad
    lines: list[tuple[str, tuple[int, int, int], float]] = []

    def add(text: str, color=_TEXT, s: float = scale) -> None:
        for ln in _wrap(_ascii(text), usable, s):
            lines.append((ln, color, s))

    name = Path(str(report.source)).name or str(report.source)
    shape = "x".join(str(s) for s in report.shape)
    if report.spacing_mm:
        sp = " x ".join(f"{s:.3g}" for s in report.spacing_mm)
        geo = f"{shape} px, spacing {sp} mm"
    else:
        geo = f"{shape} px, no pixel size"
    add(f"{name}  |  {report.modality}  |  {geo}", (255, 255, 255), 0.55)
    dist = report.distribution or {}
    size = dist.get("size_mm") or {}
    n = report.count
    if n == 0:
        add("No calcification found", (120, 220, 120), 0.6)
    else:
        head = f"{n} calcification{'s' if n != 1 else ''}"
        if size.get("min") is not None:
            head += (f", size {_fmt_mm(size['min'])} mm" if n == 1 else
                     f", size {_fmt_mm(size['min'])}-{_fmt_mm(size['max'])} mm (equivalent diameter)")
        elif not report.spacing_mm:
            head += ", no pixel size: sizes not in mm"
        add(head, colour, 0.6)
        if dist.get("summary"):
            add(f"Summary: {dist['summary']}")
    if report.scores:
        sc = report.scores
        bits = []
        if sc.get("agatston") is not None:
            bits.append(f"Agatston {sc['agatston']:.1f}")
        if sc.get("volume_mm3") is not None:
            bits.append(f"volume {sc['volume_mm3']:.1f} mm3")
        if sc.get("mass_mg") is not None:
            bits.append(f"mass {sc['mass_mg']:.1f} mg")
        if bits:
            add("Calcium score: " + ", ".join(bits) + f" (threshold {sc.get('threshold_hu', 130):g} HU)")
    scale_txt = f"scale bar {scale_label}" if scale_label else (
        "no pixel size: no scale bar, sizes not in mm" if not report.spacing_mm else "")
    add("Display: " + window_desc + (f"; {scale_txt}" if scale_txt else ""), _DIM)
    if n:
        name = "Cyan" if colour == _OUTLINE_ON_COLOUR else "Yellow"
        add(f"{name} outline (ring when tiny) = finding; number = its id in the JSON report.", _DIM)
    for ln in extra_lines:
        add(ln, _DIM)
    if n:
        is_volume = len(report.shape) == 3
        entries = [_finding_entry(f, is_volume) for f in report.findings[:40]]
        col_w = max(_text_size(e, 0.45)[0] for e in entries) + 18
        per_line = max(1, usable // col_w)
        rows_of_entries = [entries[i:i + per_line] for i in range(0, len(entries), per_line)]
        for row in rows_of_entries[:6]:
            lines.append(("\t".join(row), _TEXT, -col_w))  # negative scale marks a column row
        shown = min(len(entries), 6 * per_line)
        if n > shown:
            add(f"... and {n - shown} more findings in the JSON report", _DIM)
    for w in report.warnings[:2]:
        add("Note: " + (w if len(w) < 220 else w[:217] + "..."), (120, 200, 255))
    if len(report.warnings) > 2:
        add(f"+{len(report.warnings) - 2} more warning(s) in the JSON report", (120, 200, 255))
    height = pad * 2 + line_h * len(lines) + 4
    panel = np.full((height, width, 3), _PANEL, np.uint8)
    y = pad + 14
    for text, color, s in lines:
        if s < 0:  # a row of finding entries in columns
            for k, e in enumerate(text.split("\t")):
                _text(panel, e, (pad + k * int(-s), y), 0.45, color, 1, outline=False)
        else:
            _text(panel, text, (pad, y), s, color, 1, outline=False)
        y += line_h
    return panel


# --------------------------------------------------------------------------- public
def render_overlay(image: Image, report: Report, *, max_side: int = 1024) -> np.ndarray:
    """Draw the findings of ``report`` on ``image`` with a scale bar and a legend.

    Parameters
    ----------
    image : Image
        The image the report was made from (2D, or a 3D CT series).
    report : Report
        Its report; ``report.labels`` (the label image of the findings) gives the
        outlines.  Without it (a report read back from JSON) each finding's bounding
        box is outlined instead.
    max_side : int
        Longest side of a single image in the picture, in pixels.

    Returns
    -------
    ndarray
        ``(H, W, 3)`` uint8, BGR channel order (OpenCV's; write it with ``cv2.imencode``
        or :func:`save_overlay`).
    """
    shape = tuple(image.shape)
    labels = report.labels
    if labels is None or tuple(np.shape(labels)) != shape:
        labels = _labels_from_findings(report, shape)
    labels = np.asarray(labels)
    grey, window_desc = display_pixels(image)
    colour = _OUTLINE_ON_COLOUR if grey.ndim == 3 and image.ndim == 2 else _OUTLINE
    spacing2d = None if image.spacing_mm is None else tuple(image.spacing_mm[-2:])
    letters = _orientation_letters(image.affine) if image.modality == "CT" else None
    ids = {f.id for f in report.findings}
    extra_lines: list[str] = []
    if image.ndim == 2:
        size = _display_size(shape[0], shape[1], spacing2d, max_side, 512)
        picture = _render_plane(grey, labels, ids, spacing2d, size, letters, colour)
    else:
        nz = shape[0]
        chosen, home = choose_slices(labels, report.count)
        n_tiles = len(chosen)
        cols = 1 if n_tiles == 1 else 2 if n_tiles <= 4 else 3 if n_tiles <= 9 else 4
        long_side = max_side if cols == 1 else max(256, min(512, 1600 // cols))
        size = _display_size(shape[1], shape[2], spacing2d, long_side, min(512, long_side))
        tiles = []
        for z in chosen:
            tile = _render_plane(grey[z], labels[z], ids, spacing2d, size, letters, colour)
            caption = f"slice {z + 1}/{nz}"
            if image.affine is not None:
                pos = image.index_to_patient(np.array([z, (shape[1] - 1) / 2, (shape[2] - 1) / 2]))
                caption += f"  z={pos[2]:.1f} mm"
            tw, th = _text_size(caption, 0.55)
            cv2.rectangle(tile, (0, 0), (tw + 12, th + 10), (0, 0, 0), -1)
            _text(tile, caption, (6, th + 3), 0.55, (255, 255, 255), 1, outline=False)
            tiles.append(tile)
        picture = _montage(tiles, cols)
        if report.count:
            extra_lines.append(
                f"CT series of {nz} slices: showing {n_tiles} slice(s) "
                f"({', '.join(str(z + 1) for z in chosen)}), the fewest that show every finding; "
                "slices are numbered from 1 in ascending position (JSON slice index = number - 1)."
            )
            missing = sorted(ids - set(home))
            if missing:
                shown = ", ".join(f"#{i}" for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
                extra_lines.append(f"Not pictured (more than {MAX_TILES} slices needed): {shown}")
        else:
            extra_lines.append(f"CT series of {nz} slices: showing the middle slice.")
    width = max(picture.shape[1], 640)
    if picture.shape[1] < width:
        pad = width - picture.shape[1]
        picture = cv2.copyMakeBorder(picture, 0, 0, pad // 2, pad - pad // 2, cv2.BORDER_CONSTANT,
                                     value=_PANEL)
    scale_label = ""
    if spacing2d is not None:
        # the label the bar got: recompute from the first tile's geometry
        tile_w = size[1]
        mm_per_px = float(spacing2d[1]) * shape[-1] / tile_w
        nice = [v for v in _NICE_MM if v <= 0.22 * tile_w * mm_per_px]
        scale_label = f"{(nice[-1] if nice else _NICE_MM[0]):g} mm"
    legend = _legend(report, width, window_desc, scale_label, extra_lines, colour)
    return np.ascontiguousarray(np.vstack([picture, legend]))


def save_overlay(image: Image, report: Report, path: str | os.PathLike) -> Path:
    """Render the overlay and write it as PNG, atomically.

    Parameters
    ----------
    image : Image
    report : Report
    path : path
        Destination ``.png`` file (its folder is created).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    CalcdetectError
        The file cannot be written (see :func:`calcdetect.outputs.write_bytes_atomic`).
    """
    from .outputs import write_bytes_atomic

    picture = render_overlay(image, report)
    ok, buf = cv2.imencode(".png", picture, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR array
        raise RuntimeError("PNG encoding failed")
    return write_bytes_atomic(path, buf.tobytes())
