"""Synthetic inputs for the benchmarks, built in NumPy in well under a second each.

Every generator is seeded, so two runs (or two machines) time the very same pixels.
The shapes are built to exercise every step of the detectors, not to look pretty:

CT (int16 HU, ``(slices, 512, 512)``, 0.78 mm pixels, 1.25 mm slices)
    air (-1000), a table plate below the patient (thin, 300 HU: above the calcium
    threshold but not body), an elliptic body whose radius varies along z, a
    subcutaneous fat layer (-100 HU) around a muscle core (40 HU), a vertebra (cortical
    ring 800 HU, trabecular 300 HU) and ribs (tubes along z, 700 HU), gas in the bowel
    (-1000 inside the core), and many small calcifications (spheres 1.5-8 mm, 250-900
    HU) in the subcutaneous fat: about one per 1.5 slices.  Gaussian noise (sigma 12
    HU) from a tiled noise block.
radiograph (float32, ``(n, n)``)
    a smooth soft-tissue background, two long bones (bright bands), and small bright
    foci of 0.3-1.5 mm at 0.14 mm pixels.
ultrasound frame (uint8, ``(480, 640)``)
    speckle, a bright skin line, echogenic foci with a dark shadow below them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CT_SPACING = (1.25, 0.78125, 0.78125)


@dataclass
class CTPhantom:
    """A synthetic CT volume and what was planted in it."""

    hu: np.ndarray  # int16 (slices, rows, cols)
    spacing_mm: tuple[float, float, float]
    calcifications: list[dict] = field(default_factory=list)  # centre_px, diameter_mm, hu


def _noise_block(rng: np.random.Generator, shape: tuple[int, int], sigma: float, depth: int = 7) -> np.ndarray:
    return (rng.standard_normal((depth,) + shape) * sigma).astype(np.int16)


def synthetic_ct(n_slices: int = 300, size: int = 512, *, seed: int = 0,
                 per_slice: float = 0.67, noise_hu: float = 12.0, clutter: float = 0.0) -> CTPhantom:
    """Build a synthetic abdominal CT with many small subcutaneous calcifications.

    Parameters
    ----------
    n_slices : int
        Number of axial slices.
    size : int
        Rows and columns (square slices).
    seed : int
        Random seed (the same seed gives the same volume).
    per_slice : float
        Calcifications per slice (their number grows linearly with the volume).
    noise_hu : float
        Standard deviation of the added noise.
    clutter : float
        Small dense specks per slice (enhanced vessels, bone edges cut by the slice) in
        the deep tissue, and, when above 0, the vertebra's cancellous bone as a 3D
        texture around the threshold (see :func:`_add_clutter`): what makes a real CT
        threshold into many small components.  Thresholded at 130 HU the real
        abdominal series of the tests has 58 components per slice (92 % of them 10
        voxels or fewer), the clean phantom (0) under 1; 45 gives 43 per slice (99 %).

    Returns
    -------
    CTPhantom
    """
    rng = np.random.default_rng(seed)
    dz, dy, dx = CT_SPACING
    s = size / 512.0
    hu = np.full((n_slices, size, size), -1000, np.int16)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = 0.5 * size, 0.5 * size
    # table plate (below the patient, rows increase towards posterior)
    ty0 = int(cy + 150 * s)
    hu[:, ty0:ty0 + max(int(3 * s), 2), int(40 * s):int(size - 40 * s)] = 300
    z = np.arange(n_slices)
    ry = (125 + 8 * np.sin(2 * np.pi * z / max(n_slices, 1))) * s  # body semi-axes vary along z
    rx = (190 + 10 * np.cos(2 * np.pi * z / max(n_slices, 1))) * s
    fat = 22 * s  # subcutaneous fat thickness in pixels (~17 mm)
    # slices are built from a few distinct templates (the body radius is quantised), so the
    # generator costs a few dozen 2D evaluations instead of one per slice
    keys = np.round(ry).astype(int) * 1000 + np.round(rx).astype(int)
    templates: dict[int, np.ndarray] = {}
    for k in range(n_slices):
        key = int(keys[k])
        if key not in templates:
            a, b = float(np.round(ry[k])), float(np.round(rx[k]))
            r_out = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2
            r_in = ((yy - cy) / (a - fat)) ** 2 + ((xx - cx) / (b - fat)) ** 2
            plane = np.full((size, size), -1000, np.int16)
            plane[r_out <= 1] = -100
            plane[r_in <= 1] = 40
            # vertebra: cortical ring, trabecular inside
            vy, vx = cy + (a - fat) - 45 * s, cx
            rv = np.hypot(yy - vy, xx - vx)
            plane[rv <= 16 * s] = 800
            plane[rv <= 13 * s] = 300
            # bowel gas pockets in the core
            for gy, gx, gr in ((-30, -50, 12), (10, 60, 9), (-60, 20, 7)):
                plane[np.hypot(yy - (cy + gy * s), xx - (cx + gx * s)) <= gr * s] = -1000
            # ribs: small discs just inside the muscle wall, continuous along z (tubes)
            for ang in np.deg2rad([200, 230, 310, 340]):
                ry_, rx_ = cy + (a - fat - 10 * s) * np.sin(ang), cx + (b - fat - 10 * s) * np.cos(ang)
                plane[np.hypot(yy - ry_, xx - rx_) <= 5 * s] = 700
            templates[key] = plane
        # keep the table where the body does not cover it
        body = templates[key] != -1000
        hu[k][body] = templates[key][body]
    # calcifications in the subcutaneous fat
    calcs: list[dict] = []
    n_calc = max(int(round(per_slice * n_slices)), 1)
    for _ in range(n_calc):
        d_mm = float(rng.uniform(1.5, 8.0))
        peak = int(rng.uniform(250, 900))
        zc = float(rng.uniform(3, max(n_slices - 4, 3.5)))
        k = int(np.clip(round(zc), 0, n_slices - 1))
        a, b = float(np.round(ry[k])), float(np.round(rx[k]))
        ang = float(rng.uniform(0, 2 * np.pi))
        depth = float(rng.uniform(0.3, 0.75)) * fat  # within the fat layer
        yc = cy + (a - depth) * np.sin(ang)
        xc = cx + (b - depth) * np.cos(ang)
        r = 0.5 * d_mm
        rz, rp = int(np.ceil(r / dz)) + 1, int(np.ceil(r / dy)) + 1
        z0, z1 = max(int(zc) - rz, 0), min(int(zc) + rz + 1, n_slices)
        y0, y1 = max(int(yc) - rp, 0), min(int(yc) + rp + 1, size)
        x0, x1 = max(int(xc) - rp, 0), min(int(xc) + rp + 1, size)
        gz, gy, gx = np.mgrid[z0:z1, y0:y1, x0:x1]
        d2 = ((gz - zc) * dz) ** 2 + ((gy - yc) * dy) ** 2 + ((gx - xc) * dx) ** 2
        inside = d2 <= r * r
        if not inside.any():
            continue
        crop = hu[z0:z1, y0:y1, x0:x1]
        crop[inside] = np.maximum(crop[inside], peak)
        calcs.append({"centre_px": [zc, yc, xc], "diameter_mm": d_mm, "hu": peak})
    if clutter > 0:
        _add_clutter(hu, rng, ry, rx, fat, s, clutter)
    # noise: a small random block tiled along z with a per-slab roll (cheap, not periodic per slice)
    block = _noise_block(rng, (size, size), noise_hu)
    for k0 in range(0, n_slices, block.shape[0]):
        k1 = min(k0 + block.shape[0], n_slices)
        shift = int(rng.integers(0, size))
        hu[k0:k1] += np.roll(block[: k1 - k0], shift, axis=2)
    return CTPhantom(hu=hu, spacing_mm=CT_SPACING, calcifications=calcs)


def _add_clutter(hu: np.ndarray, rng: np.random.Generator, ry: np.ndarray, rx: np.ndarray,
                 fat: float, s: float, specks_per_slice: float) -> None:
    """Cancellous bone texture and dense specks, in place (see :func:`synthetic_ct`).

    The vertebra's cancellous core (300 HU in the clean phantom) becomes a smoothed 3D
    random field of mean 120 and SD 70 HU, so at 130 HU it breaks into many trabecular
    islands that join and split from slice to slice; ``specks_per_slice`` blobs of 1-4
    voxels at 140-260 HU are scattered in the muscle core (small enhanced vessels, bone
    edges cut by the slice).
    """
    from scipy import ndimage as ndi

    n, size = hu.shape[0], hu.shape[1]
    cy = cx = 0.5 * size
    # the vertebra's cancellous disc: centre per slice as in synthetic_ct (rounded radii)
    r_trab = 13 * s
    half = int(np.ceil(r_trab)) + 1
    field = ndi.gaussian_filter(rng.standard_normal((n, 2 * half + 1, 2 * half + 1)), (0.8, 1.2, 1.2))
    field = 120.0 + 70.0 * field / max(float(field.std()), 1e-6)
    oy, ox = np.mgrid[-half:half + 1, -half:half + 1]
    disc = np.hypot(oy, ox) <= r_trab
    for k in range(n):
        a = float(np.round(ry[k]))
        vy, vx = int(round(cy + (a - fat) - 45 * s)), int(round(cx))
        view = hu[k, vy - half:vy + half + 1, vx - half:vx + half + 1]
        view[disc] = field[k][disc].astype(np.int16)
    # specks in the muscle core (inside the fat layer, outside the gas and bone)
    count = int(round(specks_per_slice * n))
    zs = rng.integers(0, n, count)
    ang = rng.uniform(0, 2 * np.pi, count)
    rad = np.sqrt(rng.uniform(0.05, 0.85, count))
    ys = np.round(cy + rad * (np.round(ry[zs]) - fat) * np.sin(ang)).astype(int)
    xs = np.round(cx + rad * (np.round(rx[zs]) - fat) * np.cos(ang)).astype(int)
    value = rng.integers(140, 260, count).astype(np.int16)
    soft = hu[zs, ys, xs] == 40  # muscle only (not gas, bone or ribs)
    zs, ys, xs, value = zs[soft], ys[soft], xs[soft], value[soft]
    hu[zs, ys, xs] = value
    grow = rng.random(zs.size) < 0.5  # half of them two voxels wide
    hu[zs[grow], ys[grow], np.minimum(xs[grow] + 1, size - 1)] = value[grow]


def synthetic_radiograph(n: int = 2000, *, seed: int = 0, n_foci: int | None = None) -> np.ndarray:
    """A square radiograph (float32, bright = dense) with small bright foci.

    Parameters
    ----------
    n : int
        Rows and columns.
    seed : int
        Random seed.
    n_foci : int, optional
        Number of foci (default grows with the area: 150 per 4 megapixels).

    Returns
    -------
    ndarray of float32
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:n, :n]
    img = (1000.0 + 300.0 * np.sin(yy / n * np.pi) * np.cos(xx / n * 2.0)).astype(np.float32)
    img = np.broadcast_to(img, (n, n)).copy()
    for c in (0.35, 0.65):  # two long bones
        band = np.abs(xx - c * n) < 0.04 * n
        img[:, band[0]] += 700.0
    n_foci = n_foci if n_foci is not None else int(150 * n * n / 4e6)
    for _ in range(n_foci):
        r = rng.uniform(2, 10)
        y, x = rng.uniform(r + 2, n - r - 2, size=2)
        y0, y1, x0, x1 = int(y - r - 1), int(y + r + 2), int(x - r - 1), int(x + r + 2)
        gy, gx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += 900.0 * ((gy - y) ** 2 + (gx - x) ** 2 <= r * r)
    noise = rng.standard_normal((256, n)).astype(np.float32) * 20.0
    img += np.tile(noise, (n // 256 + 1, 1))[:n]
    return img


RADIOGRAPH_THRESHOLD = 2050.0  # above background + bone, below background + focus


def synthetic_us_frames(n_frames: int = 30, *, seed: int = 0, shape: tuple[int, int] = (480, 640)) -> np.ndarray:
    """Ultrasound B-mode frames (uint8), echogenic foci with posterior shadows.

    Returns
    -------
    ndarray of uint8, ``(n_frames, rows, cols)``
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    base = rng.gamma(2.0, 30.0, size=(h, w)).clip(0, 200).astype(np.uint8)
    base[h // 12:h // 12 + max(h // 80, 2)] = 230  # skin line
    frames = np.empty((n_frames, h, w), np.uint8)
    for f in range(n_frames):
        img = np.roll(base, int(rng.integers(0, w)), axis=1).copy()
        for _ in range(12):
            r = int(rng.integers(3, 10))
            y, x = int(rng.integers(h // 6, h - h // 4)), int(rng.integers(r + 1, w - r - 1))
            gy, gx = np.ogrid[-r:r + 1, -r:r + 1]
            disk = gy ** 2 + gx ** 2 <= r * r
            sl = img[y - r:y + r + 1, x - r:x + r + 1]
            sl[disk] = 250
            img[y + r + 1:, max(x - r, 0):x + r + 1] //= 4  # posterior shadow
        frames[f] = img
    return frames


US_THRESHOLD = 240
