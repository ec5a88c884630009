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

import functools
import os
import queue
import threading

import cv2
import numpy as np

from .._threads import parallel_each
from ..measure import nonzero_rc, sparse_zeros

FOV_PADDING_HU = -1500.0


@dataclass
class Anatomy:
    """Per-voxel maps of a CT volume ``(slices, rows, cols)``.

    ``depth_mm`` (and ``fov``, which only the maps themselves need) is None when
    :func:`ct_anatomy` was asked not to build the depth map (``depth_map=False``);
    :meth:`depth_at` and :meth:`skin_missing` give the same values either way.
    """

    body: np.ndarray          # bool (a BlockMap from ct_anatomy_reduced)
    deep: np.ndarray          # bool, subset of body (idem)
    depth_mm: np.ndarray | None  # float32, 0 outside the body, NaN where no skin is visible
    fov: np.ndarray | None    # bool, inside the reconstruction field of view (None with depth_map=False)
    internal_air: np.ndarray  # bool, air inside the body (cavities, lung, bowel gas) (idem)
    no_skin: np.ndarray | None = None  # bool per slice: body but no outside air (depth NaN)
    air_edges: list | None = None  # per slice, outside-air pixels next to tissue (depth_mm None, no refine_depths)
    spacing_rc: tuple[float, float] = (1.0, 1.0)
    refine_edges: object = None  # reduced anatomy: slice -> the whole slice's full-resolution air edges (refine_depths' fallback)
    refine_depths: object = None  # reduced anatomy: (slice, rows, cols) -> depth_at of those pixels
    factor: int = 1  # in-plane reduction of the maps (ct_anatomy_reduced)
    exact_slice: object = None  # reduced anatomy: slice -> its full-resolution Anatomy (1 slice)

    def skin_missing(self) -> np.ndarray:
        """Per slice: True where the slice has body but no skin surface (depth is NaN)."""
        if self.no_skin is not None:
            return self.no_skin
        return np.array([np.isnan(d).any() for d in self.depth_mm])  # slice-wise: no volume temporary

    def depth_at(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``depth_mm[z, y, x]`` (float32), from the map or, without one, computed exactly
        for these voxels only (see :func:`_depth_points`)."""
        if self.depth_mm is not None:
            return self.depth_mm[z, y, x]
        z, y, x = (np.asarray(a, dtype=np.intp) for a in (z, y, x))
        out = np.zeros(z.shape, np.float32)
        inside = self.body[z, y, x]
        out[inside & self.no_skin[z]] = np.nan
        todo = inside & ~self.no_skin[z]
        for k in np.unique(z[todo]):
            sel = np.flatnonzero(todo & (z == k))
            if self.refine_depths is not None:
                out[sel] = self.refine_depths(int(k), y[sel], x[sel])
            else:
                out[sel] = _depth_points(self.air_edges[k], y[sel], x[sel], float(np.mean(self.spacing_rc)))
        return out


def _slice_workers(nz: int, per_worker: int = 8) -> int:
    """Threads for the slice loop: the usable cores (``CALCDETECT_THREADS`` overrides),
    at most one per ``per_worker`` slices."""
    env = os.environ.get("CALCDETECT_THREADS")
    try:
        n = int(env) if env else len(os.sched_getaffinity(0))
    except (ValueError, AttributeError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8, nz // max(per_worker, 1)))


def _each_slice(fn, nz: int, per_worker: int = 8) -> None:
    """Call ``fn(k)`` for every slice index, on :func:`_slice_workers` threads (OpenCV and
    NumPy release the GIL, so the slices overlap).  ``per_worker``: the fewest slices
    worth a thread (8 for the cheap per-slice steps; 1 for whole-slice anatomies).

    OpenCV's own thread pool is left as it is: holding it at one thread inside these
    threads saved about a tenth of the CPU, but ``cv2.setNumThreads`` rebuilds the pool,
    and a process forked afterwards (``multiprocessing`` with fork, as ``annotate
    --jobs`` and many research scripts use) then hangs in its first parallel OpenCV
    call."""
    workers = _slice_workers(nz, per_worker)
    if workers > 1:
        parallel_each(fn, nz, workers)
    else:
        for k in range(nz):
            fn(k)


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(round(radius_px)), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a 2D 0/1 uint8 mask: count (with the background), labels,
    and the pixel area of each label (0 for the background, which no caller keeps).  ``connectedComponentsWithStats`` gives the same
    areas, but its other statistics make it about three times slower than the labelling
    alone plus a ``bincount``."""
    n, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    area = np.bincount(labels[mask.view(bool)], minlength=n)  # the foreground only: area[0] = 0
    return n, labels, area


def _select(keep: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``keep[labels]`` (a bool lookup per label), by a few comparisons when only a few
    labels are kept or only a few foreground labels dropped (the usual case: one trunk,
    one core), which is several times faster than the gather."""
    n = keep.size
    kept = np.flatnonzero(keep)
    if kept.size <= 3:
        out = np.zeros(labels.shape, bool)
        for lab in kept:
            out |= labels == lab
        return out
    if not keep[0] and n - 1 - kept.size <= 3:
        out = labels != 0
        for lab in np.flatnonzero(~keep[1:]) + 1:
            out &= labels != lab
        return out
    return keep.take(labels)  # the same lookup; NumPy's fancy indexing by int32 is ~3x slower


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
    n, labels, area = _components(mask)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    area = area.astype(np.float64)
    thick = _surely_thick(mask, labels, n, min_radius_px)
    # the distance transform decides the rest, unless none of the rest can matter: a
    # component no larger than the largest surely-thick one cannot be the largest, and
    # one below both area limits is dropped whether it is thick or not
    if thick.any():
        largest = area[thick].max()
        rest = ~thick
        rest[0] = False
        matters = rest & ((area > largest) | (area >= min_fraction * largest) | (area >= abs_area_px))
    else:
        matters = np.ones(1, bool)
    if matters.any():
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        # a component is thick when any of its pixels is deep enough (its maximum distance
        # reaches the radius): a bincount of the deep pixels' labels, not a scatter-max
        thick = np.bincount(labels[dist >= min_radius_px], minlength=n) > 0
    thick[0] = False
    if not thick.any():
        return np.zeros(mask.shape, bool)
    largest = area[thick].max()
    keep = thick & ((area >= min_fraction * largest) | (area >= abs_area_px))
    return _select(keep, labels)


def _surely_thick(mask: np.ndarray, labels: np.ndarray, n: int, radius_px: float) -> np.ndarray:
    """Components that certainly have a pixel whose 5x5 chamfer distance to the
    background (``cv2.distanceTransform(mask, DIST_L2, 5)``) reaches ``radius_px``: those
    holding a full square of half-side ceil(r) - 1 (a cheap separable erosion; outside
    the image counts as foreground, as in the transform).  A chamfer path is at least as
    long as its Chebyshev length (steps of 1, 1.4 and 2.1969 per 1, 1 and 2 pixels), so
    the centre of such a square is at least ceil(r) >= r from the background.  The others
    may be thick too: this is a sufficient test, not the transform."""
    half = max(int(np.ceil(radius_px)) - 1, 0)
    core = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * half + 1, 2 * half + 1)))
    thick = np.zeros(n, bool)
    thick[labels[core.view(bool)].astype(np.intp)] = True  # intp indices: a faster scatter
    thick[0] = False
    return thick


def _outside_air(background: np.ndarray, plane: np.ndarray, outside_air_hu: float,
                 extra: list[tuple[tuple[int, int], int, int]] | None = None) -> np.ndarray | None:
    """Background components that reach the image edge and are true air (median HU).

    ``extra`` (for a crop of the slice, see :func:`_crop_window`): ``((row, col), n, m)``,
    n background pixels outside the crop, m of them below ``outside_air_hu``, that belong
    to the component at (row, col).
    Returns None when such a component is not outside air or its median cannot be
    decided by counting: the caller then processes the whole slice.
    """
    n, labels = cv2.connectedComponents(background.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return None if extra else np.zeros(background.shape, bool)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    edge = np.flatnonzero(np.bincount(border, minlength=n)[1:]) + 1  # ascending, as np.unique
    keep = np.zeros(n, bool)
    below = plane < outside_air_hu
    exact = bool(np.isnan(plane).any())  # NaN: keep np.median's semantics
    added = np.zeros(n, np.int64)
    added_below = np.zeros(n, np.int64)
    for pos, count, count_below in extra or ():
        added[labels[pos]] += count
        added_below[labels[pos]] += count_below
    if exact and added.any():
        return None
    for lab in edge:  # few components reach the edge
        comp = labels == lab
        if exact:
            keep[lab] = np.median(plane[comp]) < outside_air_hu
        else:
            decided = _median_below(plane, comp, below, outside_air_hu, int(added[lab]), int(added_below[lab]))
            if decided is None:
                return None
            keep[lab] = decided
    if extra and not keep[added > 0].all():
        return None
    return _select(keep, labels)


def _foci_in_fat(dense: np.ndarray, plane: np.ndarray, max_area_px: float, fat_below_hu: float,
                 inside: np.ndarray | None = None) -> np.ndarray:
    """Dense components no larger than ``max_area_px`` whose rim lies in fat.

    The rim is the 2-pixel ring around each component; when at least 45% of it is fat
    (-200 HU to ``fat_below_hu``) the focus sits in fat: a calcification, even one that
    fills the fat layer from skin to fascia, not a rib inside intercostal muscle (whose
    rim is muscle, pleura and lung).
    """
    n, labels, area = _components(dense.astype(np.uint8))
    if n <= 1:
        return np.zeros(dense.shape, bool)
    small = area <= max_area_px
    small[0] = False
    if not small.any():
        return np.zeros(dense.shape, bool)
    # uint16 holds every label exactly when there are few (float32 up to 2**24)
    grown = cv2.dilate(labels.astype(np.uint16 if n <= 65536 else np.float32), _disk(2))
    rim = (grown > 0) & ~dense
    if inside is not None:  # a mosaic of slices (see _deep_cores): only their own pixels
        rim &= inside
    owner = grown[rim].astype(np.intp)
    values = plane[rim]
    is_fat = (values > -200.0) & (values < fat_below_hu)
    total = np.bincount(owner, minlength=n)
    fat_fraction = np.bincount(owner, weights=is_fat, minlength=n) / np.maximum(total, 1)
    fatty = small & (fat_fraction >= 0.45)
    return _select(fatty, labels)


def _median_below(plane: np.ndarray, comp: np.ndarray, below: np.ndarray, t: float,
                  added: int = 0, added_below: int = 0) -> bool | None:
    """``np.median(plane[comp]) < t`` by counting instead of sorting (NaN-free input).

    With ``m`` of the ``n`` values below ``t``: for odd ``n`` the median is below iff
    ``m > n // 2``; for even ``n`` it is the mean of the two middle values, below iff
    both are (``m > n/2``), not below iff neither is (``m < n/2``), and when ``m == n/2``
    exactly it is the mean of the largest value below and the smallest value at or above
    ``t``, computed as np.median does.  ``added`` values from outside ``plane``
    (``added_below`` of them below ``t``) join the component; then the tie is not decided
    here (None).
    """
    n = int(np.count_nonzero(comp)) + added
    m = int(np.count_nonzero(comp & below)) + added_below
    if n == 0:
        return False
    if n % 2 or m != n // 2:
        return m > n // 2
    if added:
        return None
    vals = plane[comp]
    lo, hi = vals[vals < t].max(), vals[vals >= t].min()
    return bool(np.mean(np.array([lo, hi], dtype=vals.dtype)) < t)


def _crop_window(plane: np.ndarray, fov: np.ndarray, body_hu: float, outside_air_hu: float,
                 margin: int) -> tuple[tuple[slice, slice], list[tuple[tuple[int, int], int, int]] | None]:
    """The part of a slice that holds everything above ``body_hu``, plus ``margin``.

    Outside it there is only background, so the slice can be processed on the crop with
    identical results: the margin exceeds every morphological reach, the background
    outside joins the component of the crop's (all-background) border ring, and its
    pixel counts (all, and below ``outside_air_hu``, fov padding counting as -1000) go
    to that component's outside-air median (``extra``).  When the crop would not save
    much, or there is NaN outside it, returns the whole slice and ``extra=None``.
    """
    h, w = plane.shape
    whole = (slice(0, h), slice(0, w))
    raw = (plane > body_hu) & fov
    rows = np.flatnonzero(raw.any(axis=1))
    if rows.size == 0:
        return whole, None
    cols = np.flatnonzero(raw.any(axis=0))
    r0, r1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)
    c0, c1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)
    if (r1 - r0) * (c1 - c0) > 0.85 * h * w:
        return whole, None
    # strips outside the crop, each with a crop pixel (on the crop's all-background
    # border) of the component it joins
    strips = []
    if r0 > 0:
        strips.append(((slice(0, r0), slice(0, w)), (0, 0)))
    if r1 < h:
        strips.append(((slice(r1, h), slice(0, w)), (r1 - r0 - 1, 0)))
    if c0 > 0:
        strips.append(((slice(r0, r1), slice(0, c0)), (0, 0)))
    if c1 < w:
        strips.append(((slice(r0, r1), slice(c1, w)), (0, c1 - c0 - 1)))
    extra = []
    for region, pos in strips:
        values = np.where(fov[region], plane[region], -1000.0)
        n_below = int(np.count_nonzero(values < outside_air_hu))
        if n_below < values.size and np.isnan(values).any():
            return whole, None
        extra.append((pos, int(values.size), n_below))
    return (slice(r0, r1), slice(c0, c1)), extra


def _pad_px(px: float) -> int:
    """Padding of the depth transform: the body cut off by the image edge continues
    beyond it (60 mm)."""
    return int(np.ceil(60.0 / px))


def _depth_from_sq(k: np.ndarray, px: float) -> np.ndarray:
    """Depth in mm (float32) from the squared pixel distance ``k`` to the nearest outside
    air: the arithmetic of the depth map (the exact transform is the correctly rounded
    float32 square root of the squared distance, then scaled in float32 and less half a
    pixel: the skin surface lies between the pixel centres)."""
    d = np.sqrt(np.asarray(k).astype(np.float32)) * np.float32(px)
    return np.maximum(d - 0.5 * px, 0)


def _air_edge(outside: np.ndarray, offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the outside-air pixels of one slice that have a 4-neighbour
    that is not air: the only candidates for the air pixel nearest to a body pixel (one
    step from any other air pixel towards the body pixel is nearer, and stays in the
    image).  The map's replicate padding adds no nearer air: a padding pixel copies an
    image-edge pixel that is at least as near to every pixel of the image.  ``outside``
    may be a crop whose border is outside air (the rest of the slice is), with
    ``offset`` its corner: the replicated border then says what the slice says."""
    air = outside.astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    edge = (cv2.erode(air, cross, borderType=cv2.BORDER_REPLICATE) == 0) & outside
    ey, ex = nonzero_rc(edge)
    return ey.astype(np.int64) + offset[0], ex.astype(np.int64) + offset[1]


def _depth_points(edge: tuple[np.ndarray, np.ndarray], y: np.ndarray, x: np.ndarray, px: float) -> np.ndarray:
    """Depth (as in the map) of body pixels (y, x) of one slice with outside air,
    isotropic pixels: the map is the exact Euclidean distance transform, whose value is
    the square root of the smallest squared distance to an air pixel; ``edge`` (from
    :func:`_air_edge`) holds every air pixel that can be the nearest."""
    return _depth_from_sq(_nearest_sq(edge, y, x), px)


def _nearest_sq(edge: tuple[np.ndarray, np.ndarray], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Smallest squared pixel distance (int64) from each pixel (y, x) to the ``edge``
    pixels (rows, columns); at least one edge pixel."""
    ey, ex = edge
    y, x = y.astype(np.int64), x.astype(np.int64)
    k = np.empty(y.shape, np.int64)
    step = max(1, (1 << 22) // max(ey.size, 1))  # bound the (points x edge) temporary
    for i in range(0, y.size, step):
        dy = ey[None, :] - y[i:i + step, None]
        dx = ex[None, :] - x[i:i + step, None]
        k[i:i + step] = (dy * dy + dx * dx).min(axis=1)
    return k


@functools.lru_cache(maxsize=32)
def _depth_kernel(px: float, limit_mm: float) -> tuple[int, np.ndarray] | None:
    """Radius and disk of offsets of :func:`_deeper_than` (the same for every slice of a
    volume, so computed once), or None when the padding would not hold the disk."""
    ks = np.arange(0, int(np.ceil((limit_mm / px + 2.0) ** 2)) + 2)
    above = np.flatnonzero(_depth_from_sq(ks, px) > limit_mm)
    if above.size == 0:
        return None
    kk = int(above[0])
    r = int(np.floor(np.sqrt(max(kk - 1, 0)))) + 1
    if r > _pad_px(px):
        return None
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = ((oy ** 2 + ox ** 2) < kk).astype(np.uint8)
    kernel.setflags(write=False)
    return r, kernel


def _deeper_than(not_air: np.ndarray, win: tuple[slice, slice], px: float, limit_mm: float) -> np.ndarray | None:
    """``depth > limit_mm`` on the window ``win`` of a slice, as the depth map would say
    it, without the distance transform: depth is a non-decreasing function of the squared
    distance k to the nearest air pixel, so it exceeds the limit exactly when k >= K for
    the smallest such K, that is when no air pixel lies at a squared distance below K:
    an erosion of the (replicate-padded) not-air mask by that disk of offsets.
    Returns None when the padding would not hold the disk (then use the map)."""
    found = _depth_kernel(px, limit_mm)
    if found is None:
        return None
    r, kernel = found
    padded = cv2.copyMakeBorder(not_air, r, r, r, r, cv2.BORDER_REPLICATE)
    rs, cs = win
    sub = padded[rs.start:rs.stop + 2 * r, cs.start:cs.stop + 2 * r]
    # outside the padded slice nothing is air (the transform never looks there)
    eroded = cv2.erode(sub, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return eroded[r:-r, r:-r] > 0


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The rows and columns holding a 2D mask's pixels, plus ``margin``, inside the
    mask's shape; None when the mask is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)),
            slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)))


def _slice_box(mask, k: int) -> tuple[slice, slice] | None:
    """Rows and columns holding slice ``k``'s pixels of a ``(slices, rows, cols)`` map,
    an array or a :class:`BlockMap` (which reads it from the coarse slice)."""
    return mask.box(k) if isinstance(mask, BlockMap) else _box(mask[k], 0)


def _touching_air(inner: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``inner`` (air that is not outside air) that touch
    ``tissue`` (a uint8 mask) within one pixel, worked out on the box of ``inner``: its
    components lie in it, and one pixel more holds all the tissue they can touch."""
    out = np.zeros(inner.shape, bool)
    box = _box(inner, 0)
    if box is None:
        return out
    h, w = inner.shape
    grown_box = (slice(max(box[0].start - 1, 0), min(box[0].stop + 1, h)),
                 slice(max(box[1].start - 1, 0), min(box[1].stop + 1, w)))  # _box(inner, 1)
    sub = inner[box]
    n, lab = cv2.connectedComponents(sub.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    grown = cv2.dilate(tissue[grown_box], _disk(1))
    r, c = box[0].start - grown_box[0].start, box[1].start - grown_box[1].start
    grown = grown[r:r + sub.shape[0], c:c + sub.shape[1]] > 0
    touching = np.zeros(n, bool)  # a lookup table of the touching components (not np.isin)
    touching[lab[grown & sub].astype(np.intp)] = True
    touching[0] = False
    out[box] = _select(touching, lab)
    return out


def _keep_large_parts(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    n, labels, area = _components(mask)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    keep = area >= min_area_px
    keep[0] = False
    return _select(keep, labels)


class BlockMap:
    """A boolean ``(slices, rows, cols)`` map stored at ``factor`` x coarser in-plane
    pixels and read at full resolution, as if each coarse pixel were repeated over its
    ``factor`` x ``factor`` block (the blocks cut at the last row and column).

    Never expanded as a whole: a full volume of bool costs more to write (page faults)
    than the coarse anatomy costs to compute, and the detector reads the maps only at a
    few voxels, slices and boxes.  Indexing follows NumPy for what the detector uses:
    ``m[k]`` (one full-resolution slice), ``m[z, y, x]`` with integer arrays
    (one value per voxel), and any mix of integers, slices and (on the first axis only)
    integer arrays, e.g. ``m[k, r0:r1, c0:c1]`` or ``m[[3, 9]]``.  ``m[k] = plane``
    replaces one slice by a full-resolution plane (the detector's exact slices);
    ``np.asarray(m)`` expands the whole volume (tests, debugging).

    Parameters
    ----------
    coarse : ndarray of bool
        ``(slices, ceil(rows / factor), ceil(cols / factor))``.
    factor : int
        In-plane block size.
    shape : tuple of int
        The full-resolution shape.
    """

    dtype = np.dtype(bool)
    ndim = 3

    def __init__(self, coarse: np.ndarray, factor: int, shape: tuple[int, int, int]) -> None:
        self.coarse = coarse
        self.factor = int(factor)
        self.shape = tuple(int(s) for s in shape)
        self._planes: dict[int, np.ndarray] = {}  # full-resolution replacements

    def __len__(self) -> int:
        return self.shape[0]

    def plane(self, k: int) -> np.ndarray:
        """Slice ``k`` at full resolution (a new array, or the replacement plane)."""
        k = range(self.shape[0])[k]
        if k in self._planes:
            return self._planes[k]
        f, (_, h, w) = self.factor, self.shape
        src = self.coarse[k]
        big = cv2.resize(src.view(np.uint8), (src.shape[1] * f, src.shape[0] * f),
                         interpolation=cv2.INTER_NEAREST_EXACT)
        return big[:h, :w].view(bool)

    def coarse_plane(self, k: int) -> np.ndarray | None:
        """Slice ``k`` at the coarse resolution, or None when it was replaced by a
        full-resolution plane."""
        k = range(self.shape[0])[k]
        return None if k in self._planes else self.coarse[k]

    def at(self, k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Slice ``k`` at the full-resolution pixels (rows, cols), without expanding it."""
        k = range(self.shape[0])[k]
        if k in self._planes:
            return self._planes[k][rows, cols]
        f = self.factor
        return self.coarse[k][rows // f, cols // f]

    def block_areas(self) -> np.ndarray:
        """Full-resolution pixels in each coarse pixel of a slice (``factor ** 2``, less
        in the cut last row and column), float64 ``(ceil(rows / f), ceil(cols / f))``."""
        f, (_, h, w) = self.factor, self.shape
        hc, wc = self.coarse.shape[1:]
        rows = np.minimum(f, h - f * np.arange(hc)).astype(np.float64)
        cols = np.minimum(f, w - f * np.arange(wc)).astype(np.float64)
        return np.outer(rows, cols)

    def box(self, k: int, margin: int = 0) -> tuple[slice, slice] | None:
        """Rows and columns (full resolution) holding slice ``k``'s true pixels, plus
        ``margin``; None when the slice has none."""
        if k in self._planes:
            return _box(self._planes[k], margin)
        b = _box(self.coarse[k], 0)
        if b is None:
            return None
        f, (_, h, w) = self.factor, self.shape
        return (slice(max(b[0].start * f - margin, 0), min(b[0].stop * f + margin, h)),
                slice(max(b[1].start * f - margin, 0), min(b[1].stop * f + margin, w)))

    def _region(self, k: int, rows: slice, cols: slice) -> np.ndarray:
        """Full-resolution ``plane(k)[rows, cols]`` for unit-step slices, upsampling only
        the coarse blocks under the region."""
        f, (_, h, w) = self.factor, self.shape
        r0, r1, _ = rows.indices(h)
        c0, c1, _ = cols.indices(w)
        if k in self._planes:
            return self._planes[k][r0:r1, c0:c1]
        if r1 <= r0 or c1 <= c0:
            return np.zeros((max(r1 - r0, 0), max(c1 - c0, 0)), bool)
        br0, br1, bc0, bc1 = r0 // f, (r1 - 1) // f + 1, c0 // f, (c1 - 1) // f + 1
        big = cv2.resize(self.coarse[k, br0:br1, bc0:bc1].view(np.uint8), ((bc1 - bc0) * f, (br1 - br0) * f),
                         interpolation=cv2.INTER_NEAREST_EXACT)
        return big[r0 - br0 * f:r1 - br0 * f, c0 - bc0 * f:c1 - bc0 * f].view(bool)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.plane(int(key))
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3:
            raise IndexError("too many indices for a 3D map")
        key = key + (slice(None),) * (3 - len(key))
        f = self.factor
        arrays = [not isinstance(k, slice) and np.ndim(k) > 0 for k in key]
        if arrays[1] and arrays[2] and not isinstance(key[0], slice):  # one value per voxel
            z, y, x = np.broadcast_arrays(*(np.asarray(k, dtype=np.intp) for k in key))
            z, y, x = (np.where(a < 0, a + n, a) for a, n in zip((z, y, x), self.shape))
            out = self.coarse[z, y // f, x // f]
            for k in self._planes.keys() & set(np.unique(z).tolist()):
                sel = z == k
                out[sel] = self._planes[k][y[sel], x[sel]]
            return out
        if any(arrays[1:]):
            raise IndexError("BlockMap: integer arrays are supported on the slice axis, or on all three axes")
        zs = np.arange(self.shape[0])[key[0]]
        rows, cols = key[1], key[2]
        unit = all(isinstance(s, slice) and s.step in (None, 1) for s in (rows, cols))

        def one(k: int) -> np.ndarray:
            return self._region(k, rows, cols) if unit else self.plane(k)[rows, cols]

        if np.ndim(zs) == 0:
            return one(int(zs))
        if zs.size == 0:
            return np.zeros((0,) + self.plane(0)[rows, cols].shape, bool) if self.shape[0] else np.zeros((0, 0, 0), bool)
        return np.stack([one(int(k)) for k in zs])

    def __setitem__(self, key, value) -> None:
        if not isinstance(key, (int, np.integer)):
            raise IndexError("BlockMap: only a whole slice can be replaced (m[k] = plane)")
        k = range(self.shape[0])[int(key)]
        plane = np.asarray(value, dtype=bool)
        if plane.shape != self.shape[1:]:
            raise ValueError(f"plane shape {plane.shape} differs from the slice shape {self.shape[1:]}")
        self._planes[k] = plane.copy()

    def __array__(self, dtype=None, copy=None):
        out = np.zeros(self.shape, bool)
        for k in range(self.shape[0]):
            out[k] = self.plane(k)
        return out if dtype is None else out.astype(dtype)


#: Slices per mosaic of :func:`_deep_cores`.
DEEP_CORE_BATCH = 12


def _deep_cores(jobs: list, deep: np.ndarray, *, lesion_hu: float, max_lesion_area_px: float, core_hu: float,
                core_kernel: np.ndarray, close_kernel: np.ndarray, min_core_px: float,
                only: list[int] | None = None, threads: bool = True) -> None:
    """The deep core's last steps for every slice with a core: dense foci in fat taken
    out, an opening, the large parts kept, a closing, holes filled, and the body kept.

    ``jobs[k]`` is None or ``(win, plane, body, core)`` of slice ``k`` (its crop, the HU,
    body and core candidates on it).  The result goes to ``deep[k][win]``.

    The slices are worked on in mosaics of up to :data:`DEEP_CORE_BATCH` crops, stacked
    with background rows between them wider than any kernel reaches: a few large OpenCV
    and NumPy calls instead of many small ones, which the slice threads overlap well
    (small calls on two threads mostly wait for each other).  Every step keeps each
    slice's own result exactly:
    - components (foci, core parts) never cross the rows between crops;
    - the rim of a focus counts only its own crop's pixels;
    - the erosions see the outside of each crop as foreground and the dilations as
      background, as OpenCV's default borders do for a slice on its own;
    - the hole filling floods from the mosaic's border, which reaches every crop's
      border through the rows between them.
    """
    todo = [k for k, job in enumerate(jobs) if job is not None] if only is None else list(only)
    if not todo:
        return
    reach = max(core_kernel.shape[0], close_kernel.shape[0], 5) // 2
    gap = reach + 1
    batches = [todo[i:i + DEEP_CORE_BATCH] for i in range(0, len(todo), DEEP_CORE_BATCH)]

    def one(i: int) -> None:
        ks = batches[i]
        crops = [jobs[k] for k in ks]
        width = max(c[1].shape[1] for c in crops)
        tops, height = [], 0
        for c in crops:
            tops.append(height)
            height += c[1].shape[0] + gap
        height -= gap
        plane = np.zeros((height, width), np.float32)
        body = np.zeros((height, width), bool)
        core = np.zeros((height, width), bool)
        inside = np.zeros((height, width), bool)
        for top, (_, p, b, c) in zip(tops, crops):
            h, w = p.shape
            plane[top:top + h, :w] = p
            body[top:top + h, :w] = b
            core[top:top + h, :w] = c
            inside[top:top + h, :w] = True
        core &= ~_foci_in_fat((plane >= lesion_hu) & inside, plane, max_lesion_area_px, core_hu, inside)
        outside = ~inside
        u = core.view(np.uint8)
        u[outside] = 1  # erosion: the outside of each crop does not erode it
        u = cv2.erode(u, core_kernel)
        u[outside] = 0
        u = cv2.dilate(u, core_kernel)
        u = _keep_large_parts(u, min_core_px).view(np.uint8)
        u = cv2.dilate(u, close_kernel)
        u[outside] = 1
        u = cv2.erode(u, close_kernel)
        u[outside] = 0
        filled = _fill_holes(u) & body
        for k, top, (win, p, _, _) in zip(ks, tops, crops):
            h, w = p.shape
            deep[k][win] = filled[top:top + h, :w]

    if threads:
        _each_slice(one, len(batches), per_worker=1)
    else:
        for i in range(len(batches)):
            one(i)


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
    depth_map: bool = True,
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
    depth_map : bool
        Build the full depth map (default).  With False (what the detector uses) the
        distance transform of every slice is skipped: the deep core's "below the
        dermis" test is an exactly equivalent erosion, ``depth_mm`` is None and
        :meth:`Anatomy.depth_at` computes the same depths for the voxels asked about.
        Anisotropic pixels always build the map.

    Returns
    -------
    Anatomy
    """
    nz, h, w = hu.shape
    px = float(np.mean(spacing_rc))
    aniso = abs(spacing_rc[0] - spacing_rc[1]) > 1e-3 * px
    # written only inside each slice's crop, and without huge pages (sparse_zeros)
    body = sparse_zeros(hu.shape, bool)
    deep = sparse_zeros(hu.shape, bool)
    internal_air = sparse_zeros(hu.shape, bool)
    lazy = not depth_map and not aniso
    depth = None if lazy else np.zeros(hu.shape, np.float32)
    air_edges: list | None = [None] * nz if lazy else None
    no_skin = np.zeros(nz, bool)
    if lazy:  # slice by slice, no volume (see fov_slice)
        fov = None
    else:
        fov = hu > FOV_PADDING_HU
        if valid is not None:
            fov &= valid

    def fov_slice(k: int) -> np.ndarray:
        if fov is not None:
            return fov[k]
        f = hu[k] > FOV_PADDING_HU
        if valid is not None:
            f &= valid[k]
        return f
    link = _disk(link_radius_mm / px)
    core_kernel = _disk(core_open_mm / px)
    close_kernel = _disk(core_close_mm / px)
    pixel_area = spacing_rc[0] * spacing_rc[1]
    max_lesion_area_px = np.pi * (max_lesion_mm / 2) ** 2 / pixel_area
    pad = _pad_px(px)  # the body cut off by the image edge continues beyond it
    # a crop margin beyond the reach of every morphological step (the grown body, the
    # core opening, the closing's dilation and erosion), see _crop_window
    margin = 2 * max(2 * link.shape[0] // 2, core_kernel.shape[0] // 2, close_kernel.shape[0] // 2) + 3

    def one_slice(k: int, crop: bool = True) -> None:
        # work on the crop holding the patient (and table): identical maps, less area
        fov_k = fov_slice(k)
        win, extra = (_crop_window(hu[k], fov_k, body_hu, outside_air_hu, margin) if crop
                      else ((slice(0, h), slice(0, w)), None))
        plane = hu[k][win]
        fk = fov_k[win]
        all_fov = bool(fk.all())  # the usual case: skip the field-of-view masking
        raw = (plane > body_hu) if all_fov else ((plane > body_hu) & fk)
        raw = raw.astype(np.uint8)
        opened = cv2.morphologyEx(raw, cv2.MORPH_OPEN, link)
        parts = _keep_body_parts(opened, min_part_radius_mm / px, min_part_fraction, 2000.0 / pixel_area)
        if not parts.any():
            return
        # give back the skin surface and small protrusions the opening shaved off
        grown = cv2.dilate(parts.astype(np.uint8), link, iterations=2)
        tissue = (raw & grown).astype(np.uint8)
        background = ~(raw > 0)
        outside = (_outside_air(background, plane, outside_air_hu, extra) if all_fov else
                   _outside_air(background | ~fk, np.where(fk, plane, -1000.0), outside_air_hu, extra))
        if outside is None:  # the crop cannot decide this slice exactly: redo it whole
            return one_slice(k, crop=False)
        # internal air: background that is not outside air and touches the patient
        inner = background & ~outside
        if not all_fov:
            inner &= fk
        air_in = _touching_air(inner, tissue)
        b = _fill_holes((tissue > 0) | air_in)
        b &= ~outside
        body[k][win] = b
        internal_air[k][win] = b & (plane <= body_hu)
        has_outside = bool(outside.any())
        if not has_outside:
            no_skin[k] = bool(b.any())
        if lazy:
            if not has_outside:
                below_dermis = np.ones(b.shape, bool)
            else:
                # outside the crop all is outside air: the air next to tissue lies in it
                air_edges[k] = _air_edge(outside, (win[0].start, win[1].start))
                not_air = np.zeros((h, w), np.uint8)
                not_air[win] = ~outside
                below_dermis = _deeper_than(not_air, win, px, 2.0)
                if below_dermis is None:  # pragma: no cover - pixels far below 0.1 mm
                    raise ValueError("pixel spacing too fine for the depth padding")
                below_dermis |= plane >= 300.0
            core = b & ((plane > core_hu) | internal_air[k][win]) & below_dermis
            return finish_core(k, win, plane, b, core)
        depth_k = depth[k][win]
        if not has_outside:
            depth_k[...] = np.where(b, np.nan, 0)
        else:
            # depth: distance to outside air, not to field-of-view edges or the image border.
            # Always on the whole padded slice, even when the rest works on a crop: the
            # exact transform's float rounding depends on the image size and offset
            # (outside the crop everything is outside air)
            not_air = np.zeros((h, w), np.uint8)
            not_air[win] = ~outside
            padded = cv2.copyMakeBorder(not_air, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            if aniso:
                from scipy import ndimage as ndi

                d = ndi.distance_transform_edt(padded, sampling=spacing_rc).astype(np.float32)
            else:
                d = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) * np.float32(px)
            d = d[pad:-pad, pad:-pad][win]
            # distance from a pixel centre to the nearest air pixel centre, less half a
            # pixel: the skin surface lies on the boundary between them
            depth_k[...] = np.where(b, np.maximum(d - 0.5 * px, 0), 0)
        # the deep core: soft tissue and bone below the dermis (bone counts at any depth:
        # the skull lies right under a thin scalp)
        below_dermis = (depth_k > 2.0) | np.isnan(depth_k) | (plane >= 300.0)
        # internal air (bowel gas, lung) lies in body cavities: always deep
        core = b & ((plane > core_hu) | internal_air[k][win]) & below_dermis
        finish_core(k, win, plane, b, core)

    def finish_core(k, win, plane, b, core) -> None:
        # the deep core's last steps run on mosaics of several slices (_deep_cores)
        jobs[k] = (win, plane, b, core)

    jobs: list = [None] * nz
    params = dict(lesion_hu=lesion_hu, max_lesion_area_px=max_lesion_area_px, core_hu=core_hu,
                  core_kernel=core_kernel, close_kernel=close_kernel, min_core_px=min_core_area_mm2 / pixel_area)
    if _slice_workers(nz) > 1:
        # a pipeline: the slices on this thread, and the deep-core mosaics of the slices
        # already done on a second one (its large calls leave the GIL to this thread; two
        # threads on the slices' small calls mostly wait for each other)
        ready: queue.SimpleQueue = queue.SimpleQueue()
        failed: list = []

        def mosaics() -> None:
            while (batch := ready.get()) is not None:
                if not failed:
                    try:
                        _deep_cores(jobs, deep, only=batch, threads=False, **params)
                    except BaseException as exc:  # noqa: BLE001 - re-raised below
                        failed.append(exc)

        worker = threading.Thread(target=mosaics, daemon=True)
        worker.start()
        try:
            pending: list[int] = []
            for k in range(nz):
                one_slice(k)
                if jobs[k] is not None:
                    pending.append(k)
                    if len(pending) == DEEP_CORE_BATCH:
                        ready.put(pending)
                        pending = []
            if pending:
                ready.put(pending)
        finally:
            ready.put(None)
            worker.join()
        if failed:
            raise failed[0]
    else:
        _each_slice(one_slice, nz)  # slices are independent
        _deep_cores(jobs, deep, **params)
    return Anatomy(body=body, deep=deep, depth_mm=depth, fov=fov, internal_air=internal_air,
                   no_skin=no_skin, air_edges=air_edges, spacing_rc=tuple(float(s) for s in spacing_rc))


#: Working pixel of the detector's anatomy (mm): the in-plane factor is the integer
#: nearest to this over the pixel size (0.78 mm -> 2, 0.43 mm -> 3, >= 1.07 mm -> 1).
ANATOMY_PIXEL_MM = 1.5


def anatomy_factor(spacing_rc: tuple[float, float], pixel_mm: float = ANATOMY_PIXEL_MM) -> int:
    """In-plane reduction factor of :func:`ct_anatomy_reduced` for this pixel size."""
    px = float(min(spacing_rc))
    if not np.isfinite(px) or px <= 0:
        return 1
    return max(1, int(round(pixel_mm / px)))


def ct_anatomy_reduced(hu: np.ndarray, spacing_rc: tuple[float, float], factor: int, *,
                       valid: np.ndarray | None = None, **kwargs) -> Anatomy:
    """:func:`ct_anatomy` (``depth_map=False``) at ``factor`` x coarser in-plane pixels,
    read at full resolution.

    Each slice is reduced by the block mean of ``factor`` x ``factor`` pixels (OpenCV
    ``INTER_AREA``; the border replicated up to a multiple of the factor), a block is
    valid when all its pixels are, and the maps are computed on the coarse slices.
    They are returned as :class:`BlockMap` objects, which read them at full resolution
    as if each coarse pixel were repeated over its block, without ever writing the
    full-resolution volumes (three such bool volumes cost more in page faults than the
    coarse anatomy itself).  Depths
    (:meth:`Anatomy.depth_at`) are exact distances, at full resolution, to the
    repeated outside-air mask: the air edges hold every full-resolution pixel of the
    coarse edge blocks.
    """
    nz, h, w = hu.shape
    f = int(factor)
    if f <= 1:
        return ct_anatomy(hu, spacing_rc, valid=valid, depth_map=False, **kwargs)
    hc, wc = -(-h // f), -(-w // f)
    ph, pw = hc * f - h, wc * f - w
    coarse = sparse_zeros((nz, hc, wc), np.float32)  # see sparse_zeros: no huge pages
    vcoarse = None if valid is None else np.empty((nz, hc, wc), bool)

    def reduce(k: int) -> None:
        plane = np.asarray(hu[k], dtype=np.float32)
        if ph or pw:
            plane = cv2.copyMakeBorder(plane, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
        coarse[k] = cv2.resize(plane, (wc, hc), interpolation=cv2.INTER_AREA)
        if vcoarse is not None:
            v = np.pad(valid[k], ((0, ph), (0, pw)), mode="edge")
            vcoarse[k] = v.reshape(hc, f, wc, f).all(axis=(1, 3))

    _each_slice(reduce, nz)
    small = ct_anatomy(coarse, tuple(f * float(s) for s in spacing_rc), valid=vcoarse,
                       depth_map=False, **kwargs)
    del coarse
    # the maps stay coarse: read at full resolution through BlockMap, never expanded
    body = BlockMap(small.body, f, hu.shape)
    deep = BlockMap(small.deep, f, hu.shape)
    internal_air = BlockMap(small.internal_air, f, hu.shape)
    oy, ox = np.mgrid[0:f, 0:f]
    oy, ox = oy.ravel(), ox.ravel()

    def expanded(e):
        # every full-resolution pixel of the coarse edge blocks (inside the image)
        ey = (e[0][:, None] * f + oy[None, :]).ravel()
        ex = (e[1][:, None] * f + ox[None, :]).ravel()
        ok = (ey < h) & (ex < w)
        return ey[ok], ex[ok]

    body_hu = kwargs.get("body_hu", -400.0)
    band_kernel = np.ones((2 * f + 1, 2 * f + 1), np.uint8)
    cache: dict = {}

    def band_air(k: int, rows: slice, cols: slice) -> np.ndarray:
        # outside air at full resolution near the skin, on the window (rows, cols): the
        # background pixels within one block of the coarse air edge (the coarse edge
        # blocks mix skin and air).  Every edge block within one block of the window
        # enters the band (a dilation by +-f pixels), so the band on the window is the
        # band of the whole slice there.
        ey, ex = small.air_edges[k]
        br0, br1 = max(rows.start // f - 1, 0), min(-(-rows.stop // f) + 1, hc)
        bc0, bc1 = max(cols.start // f - 1, 0), min(-(-cols.stop // f) + 1, wc)
        near = (ey >= br0) & (ey < br1) & (ex >= bc0) & (ex < bc1)
        m = np.zeros((br1 - br0, bc1 - bc0), np.uint8)
        m[ey[near] - br0, ex[near] - bc0] = 1
        big = cv2.resize(m, ((bc1 - bc0) * f, (br1 - br0) * f), interpolation=cv2.INTER_NEAREST_EXACT)
        band = cv2.dilate(big[:min(br1 * f, h) - br0 * f, :min(bc1 * f, w) - bc0 * f], band_kernel)
        air = ~(hu[k][rows, cols] > body_hu)  # background (the padding outside the field of view too)
        if valid is not None:
            air |= ~valid[k][rows, cols]
        air &= band[rows.start - br0 * f:rows.stop - br0 * f, cols.start - bc0 * f:cols.stop - bc0 * f].view(bool)
        return air

    def refine(k: int):
        # the full-resolution air edges of the whole slice; only for the slices whose
        # depths are asked for and that the window of refine_depths cannot settle
        if k in cache:
            return cache[k]
        if small.air_edges[k] is None:
            return None
        ey, ex = small.air_edges[k]
        if ey.size == 0:
            cache[k] = expanded(small.air_edges[k])
            return cache[k]
        # on the box of the coarse edge blocks plus two blocks (the band stays inside it,
        # or reaches the image border, where the slice's own border rule applies)
        r0, r1 = max(int(ey.min()) - 2, 0), min(int(ey.max()) + 3, hc)
        c0, c1 = max(int(ex.min()) - 2, 0), min(int(ex.max()) + 3, wc)
        win = (slice(r0 * f, min(r1 * f, h)), slice(c0 * f, min(c1 * f, w)))
        air = band_air(k, *win)
        cache[k] = out = (_air_edge(air, (win[0].start, win[1].start)) if air.any()
                          else expanded(small.air_edges[k]))
        return out

    px = float(np.mean(spacing_rc))

    def refine_depths(k: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        # depth_at for points of slice k: the air edges of a window around the points,
        # when that settles every point exactly, else those of the whole slice.  An edge
        # pixel missing from the window's edges lies on or beyond a window side that is
        # not the image border (there the window's replicated border may hide it): no
        # nearer to a point than that side.  A point whose nearest window edge is at
        # most that far has its exact depth.
        ey, ex = small.air_edges[k]
        if k in cache or ey.size == 0:
            return _depth_points(refine(k), y, x, px)
        # the window reaches a little beyond the nearest coarse edge block of each point
        cy, cx = ey * f + (f - 1) / 2.0, ex * f + (f - 1) / 2.0
        reach = max(float(np.sqrt(((cy[None, :] - y[:, None]) ** 2 + (cx[None, :] - x[:, None]) ** 2)
                                  .min(axis=1).max())) + 2 * f, 2 * f)
        m = int(np.ceil(reach))
        rows = slice(max(int(y.min()) - m, 0), min(int(y.max()) + m + 1, h))
        cols = slice(max(int(x.min()) - m, 0), min(int(x.max()) + m + 1, w))
        air = band_air(k, rows, cols)
        if air.any():
            sq = _nearest_sq(_air_edge(air, (rows.start, cols.start)), y, x)
            side = np.full(y.shape, np.iinfo(np.int64).max, np.int64)
            if rows.start > 0:
                side = np.minimum(side, y - rows.start)
            if rows.stop < h:
                side = np.minimum(side, rows.stop - 1 - y)
            if cols.start > 0:
                side = np.minimum(side, x - cols.start)
            if cols.stop < w:
                side = np.minimum(side, cols.stop - 1 - x)
            if bool((sq <= side.astype(np.float64) ** 2).all()):
                return _depth_from_sq(sq, px)
        return _depth_points(refine(k), y, x, px)

    exact_cache: dict = {}

    def exact(k: int) -> Anatomy:
        if k not in exact_cache:
            exact_cache[k] = ct_anatomy(hu[k:k + 1], spacing_rc, depth_map=False,
                                        valid=None if valid is None else valid[k:k + 1], **kwargs)
        return exact_cache[k]

    return Anatomy(body=body, deep=deep, depth_mm=None, fov=None, internal_air=internal_air,
                   no_skin=small.no_skin, air_edges=None, spacing_rc=tuple(float(s) for s in spacing_rc),
                   refine_edges=refine, refine_depths=refine_depths, factor=f, exact_slice=exact)
