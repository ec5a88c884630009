"""CT phantoms with known truth, and insertion of calcifications into real CT.

The anatomy is analytic (ellipses in mm): skin (2 mm, 40 HU), subcutaneous fat
(-100 HU), a muscle ring (50 HU), abdominal contents (35 HU), a vertebra (cortex 700,
trabecular 250 HU), ribs (cortex 700 HU), optional arms with a humerus, and an optional
scanner table below an air gap.  Calcified nodules are spheres of chosen diameter and
density.  Partial volume is real: each pixel is the area fraction covered (3 x 3
supersampling in-plane) averaged over the slice profile (``slice_thickness_mm``, 5
sub-slices), then blurred by a Gaussian point-spread function and given Gaussian noise.

Every generator returns ``(Image, truth)`` where ``truth`` is a list of plain dicts:
``centroid_px`` (array index order), ``centroid_mm`` (patient LPS), ``diameter_mm``,
``hu``, ``side`` and ``depth_mm`` (below the skin, for nodules placed by depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..image import Image, affine_from_dicom

SUPERSAMPLE = 3


def _grid(shape: tuple[int, int], spacing: tuple[float, float], ss: int = SUPERSAMPLE):
    """mm coordinates (y, x) of a supersampled grid centred on the image centre."""
    h, w = shape
    ys = (np.arange(h * ss) + 0.5) / ss - 0.5 - (h - 1) / 2.0
    xs = (np.arange(w * ss) + 0.5) / ss - 0.5 - (w - 1) / 2.0
    return ys[:, None] * spacing[0], xs[None, :] * spacing[1]


def _down(a: np.ndarray, ss: int = SUPERSAMPLE) -> np.ndarray:
    h, w = a.shape[0] // ss, a.shape[1] // ss
    return a.reshape(h, ss, w, ss).mean(axis=(1, 3))


def _ellipse(y, x, cy, cx, ry, rx):
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def body_slice(
    shape: tuple[int, int] = (256, 256),
    spacing_mm: tuple[float, float] = (0.8, 0.8),
    *,
    body_mm: tuple[float, float] = (70.0, 95.0),
    fat_mm: float = 14.0,
    bone: bool = True,
    table: bool = True,
    arms: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Noise-free HU of the anatomy (no nodules), with its geometry in mm.

    Returns
    -------
    hu : ndarray (rows, cols) float32
    geometry : dict
        ``body_mm`` semi-axes (y, x), ``fat_mm``, ``skin_mm`` and the centre (0, 0).
    """
    y, x = _grid(shape, spacing_mm)
    by, bx = body_mm
    skin = 2.0
    hu = np.full(y.shape[:1] + x.shape[1:], -1000.0)
    inside = _ellipse(y, x, 0, 0, by, bx)
    hu[inside] = 40.0
    hu[_ellipse(y, x, 0, 0, by - skin, bx - skin)] = -100.0
    m_out = (by - skin - fat_mm, bx - skin - fat_mm)
    hu[_ellipse(y, x, 0, 0, *m_out)] = 50.0
    hu[_ellipse(y, x, 0, 0, m_out[0] - 10, m_out[1] - 10)] = 35.0
    if bone:
        vy = m_out[0] - 10 - 16  # vertebral body near the back (rows increase posteriorly)
        hu[_ellipse(y, x, vy, 0, 14, 15)] = 700.0
        hu[_ellipse(y, x, vy, 0, 12, 13)] = 250.0
        # spinous process behind it, inside the muscle
        hu[(np.abs(x) < 3) & (y > vy + 14) & (y < m_out[0] - 3)] = 650.0
        for ang in np.deg2rad([25, 60, 120, 155, 205, 240, 300, 335]):
            ry, rx = (m_out[0] - 5) * np.sin(ang), (m_out[1] - 5) * np.cos(ang)
            hu[_ellipse(y, x, ry, rx, 5, 7)] = 700.0
            hu[_ellipse(y, x, ry, rx, 3, 5)] = 200.0
    if arms:
        for sx in (-1, 1):
            cx = sx * (bx + 12 + 30)
            hu[_ellipse(y, x, 0, cx, 32, 30)] = 40.0
            hu[_ellipse(y, x, 0, cx, 30, 28)] = -100.0
            hu[_ellipse(y, x, 0, cx, 22, 20)] = 50.0
            hu[_ellipse(y, x, 0, cx, 9, 9)] = 750.0
            hu[_ellipse(y, x, 0, cx, 6, 6)] = 20.0
    if table:
        ty = by + 12.0
        curve = ty + 0.002 * x ** 2
        shell = ((y >= curve) & (y <= curve + 3)) | ((y >= curve + 25) & (y <= curve + 28))
        hu[shell & (np.abs(x) < bx * 1.6)] = 400.0
    return _down(hu).astype(np.float32), {"body_mm": body_mm, "fat_mm": fat_mm, "skin_mm": skin}


def _nodule_fraction(shape, spacing, slice_z_mm, thickness_mm, centre_mm, diameter_mm):
    """Fraction of each pixel of one slice covered by a sphere (slab-averaged)."""
    y, x = _grid(shape, spacing)
    r = diameter_mm / 2.0
    subs = slice_z_mm + (np.arange(5) + 0.5) / 5 * thickness_mm - thickness_mm / 2
    frac = np.zeros(y.shape[:1] + x.shape[1:])
    cz, cy, cx = centre_mm
    for zz in subs:
        dz = zz - cz
        if abs(dz) >= r:
            continue
        rr = np.sqrt(r * r - dz * dz)
        frac += ((y - cy) ** 2 + (x - cx) ** 2 <= rr * rr)
    return _down(frac / len(subs))


def place_in_fat(
    n: int,
    *,
    body_mm: tuple[float, float] = (70.0, 95.0),
    fat_mm: float = 14.0,
    diameters_mm: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
    min_gap_mm: float = 6.0,
    depth_range_mm: tuple[float, float] | None = None,
) -> list[dict[str, float]]:
    """Random nodule centres in the subcutaneous fat of :func:`body_slice`'s anatomy.

    Returns a list of ``{"y_mm", "x_mm", "diameter_mm", "depth_mm"}`` (depth of the centre
    below the skin, approximately, along the ellipse normal).
    """
    rng = rng or np.random.default_rng(0)
    if diameters_mm is not None:
        n = len(diameters_mm)
    diameters = list(diameters_mm) if diameters_mm is not None else list(rng.uniform(2, 8, n))
    out: list[dict[str, float]] = []
    tries = 0
    while len(out) < n and tries < 10000:
        tries += 1
        d = diameters[len(out)]
        lo = 2.0 + d / 2 + 0.5
        hi = 2.0 + fat_mm - d / 2 - 0.5
        if depth_range_mm is not None:
            lo, hi = max(lo, depth_range_mm[0]), min(hi, depth_range_mm[1])
        if hi < lo:
            hi = lo
        depth = rng.uniform(lo, hi)
        ang = rng.uniform(0, 2 * np.pi)
        # avoid the posterior side where the table and spine are (keeps cases clean)
        if np.sin(ang) > 0.8:
            continue
        yy = (body_mm[0] - depth) * np.sin(ang)
        xx = (body_mm[1] - depth) * np.cos(ang)
        if any(np.hypot(yy - o["y_mm"], xx - o["x_mm"]) < (d + o["diameter_mm"]) / 2 + min_gap_mm for o in out):
            continue
        out.append({"y_mm": float(yy), "x_mm": float(xx), "diameter_mm": float(d), "depth_mm": float(depth)})
    return out


def ct_phantom(
    shape: tuple[int, int] = (256, 256),
    spacing_mm: tuple[float, float] = (0.8, 0.8),
    *,
    n_slices: int | None = None,
    slice_spacing_mm: float = 2.0,
    slice_thickness_mm: float = 3.0,
    nodules: Sequence[dict[str, float]] | None = None,
    n_nodules: int = 4,
    nodule_hu: float | tuple[float, float] = (400.0, 900.0),
    diameters_mm: Sequence[float] | None = None,
    bone: bool = True,
    table: bool = True,
    arms: bool = False,
    noise_hu: float = 10.0,
    psf_sigma_mm: float = 0.5,
    seed: int = 0,
) -> tuple[Image, list[dict[str, Any]]]:
    """A CT slice (``n_slices=None``) or series with calcified nodules of known truth.

    Parameters
    ----------
    shape, spacing_mm : in-plane matrix and pixel size (row, col) in mm.
    n_slices : int, optional
        Number of slices for a series; ``None`` for one 2D slice.
    slice_spacing_mm, slice_thickness_mm : slice step and nominal thickness (slices
        overlap when the thickness exceeds the step, as in clinical reconstructions).
    nodules : sequence of dict, optional
        Each ``{"y_mm", "x_mm", "diameter_mm"}`` (mm from the image centre, +y posterior,
        +x patient left), optional ``"z_mm"`` (series; default the middle) and ``"hu"``.
        Default: ``n_nodules`` placed at random in the subcutaneous fat.
    nodule_hu : float or (low, high)
        Density of the nodules (a range draws uniformly).
    bone, table, arms : anatomy switches.
    noise_hu, psf_sigma_mm : image noise (SD, HU) and blur.
    seed : int

    Returns
    -------
    image : Image
        HU, with DICOM-like geometry: LPS affine whose first pixel is at
        ``(-x_extent/2, -y_extent/2, z0)``.
    truth : list of dict
    """
    rng = np.random.default_rng(seed)
    base, geo = body_slice(shape, spacing_mm, bone=bone, table=table, arms=arms)
    if nodules is None:
        nodules = place_in_fat(n_nodules, body_mm=geo["body_mm"], fat_mm=geo["fat_mm"],
                               diameters_mm=diameters_mm, rng=rng)
    nz = 1 if n_slices is None else int(n_slices)
    z_centres = np.arange(nz) * slice_spacing_mm
    z_mid = float(z_centres.mean())
    vol = np.repeat(base[None], nz, axis=0).astype(np.float64)
    truth: list[dict[str, Any]] = []
    h, w = shape
    origin = np.array([-(w - 1) / 2 * spacing_mm[1], -(h - 1) / 2 * spacing_mm[0], 0.0])
    for nod in nodules:
        d = float(nod["diameter_mm"])
        hu = nod.get("hu")
        if hu is None:
            hu = float(rng.uniform(*nodule_hu)) if isinstance(nodule_hu, tuple) else float(nodule_hu)
        cz = float(nod.get("z_mm", z_mid))
        centre = (cz, float(nod["y_mm"]), float(nod["x_mm"]))
        for k, zc in enumerate(z_centres):
            if abs(zc - cz) > d / 2 + slice_thickness_mm / 2:
                continue
            f = _nodule_fraction(shape, spacing_mm, zc, slice_thickness_mm, centre, d)
            vol[k] = vol[k] * (1 - f) + hu * f
        row = centre[1] / spacing_mm[0] + (h - 1) / 2
        col = centre[2] / spacing_mm[1] + (w - 1) / 2
        c_px = [row, col] if n_slices is None else [cz / slice_spacing_mm, row, col]
        truth.append({
            "centroid_px": [float(v) for v in c_px],
            "centroid_mm": [float(origin[0] + col * spacing_mm[1]), float(origin[1] + row * spacing_mm[0]), cz],
            "diameter_mm": d,
            "hu": float(hu),
            "side": "left" if centre[2] > 5 else ("right" if centre[2] < -5 else None),
            "depth_mm": nod.get("depth_mm"),
        })
    sigma = (0, psf_sigma_mm / spacing_mm[0], psf_sigma_mm / spacing_mm[1])
    vol = ndi.gaussian_filter(vol, sigma)
    vol += rng.normal(0, noise_hu, vol.shape)
    vol = np.clip(vol, -1024, 3071).astype(np.float32)
    affine = affine_from_dicom(origin, [1, 0, 0, 0, 1, 0], spacing_mm, (0.0, 0.0, slice_spacing_mm))
    pixels = vol if n_slices is not None else vol[0]
    spacing = (slice_spacing_mm, *spacing_mm) if n_slices is not None else tuple(spacing_mm)
    image = Image(pixels=pixels, spacing_mm=spacing, modality="CT", affine=affine, source="<ct phantom>",
                  metadata={"SliceThickness": slice_thickness_mm}, spacing_source="phantom")
    return image, truth


def insert_calcifications(
    image: Image,
    nodules: Sequence[dict[str, float]],
    *,
    slice_thickness_mm: float | None = None,
    psf_sigma_mm: float = 0.5,
) -> tuple[Image, list[dict[str, Any]]]:
    """Insert spherical calcifications into a real CT image or series.

    Parameters
    ----------
    image : Image
        A CT image with spacing.
    nodules : sequence of dict
        Each ``{"centroid_px": [row, col] or [slice, row, col], "diameter_mm", "hu"}``.
    slice_thickness_mm : float, optional
        Slice profile width (default: the image's SliceThickness, else the slice step,
        else 1 mm for a single slice).
    psf_sigma_mm : float
        Gaussian blur applied to the inserted sphere only.

    Returns
    -------
    (Image, truth) : a new image (the input is not modified) and the truth list.
    """
    sp = image.require_spacing("inserting calcifications")
    vol = image.pixels.astype(np.float64).copy()
    is_vol = image.ndim == 3
    if not is_vol:
        vol = vol[None]
        sp3 = (1.0, *sp)
    else:
        sp3 = tuple(sp)
    thick = slice_thickness_mm or image.metadata.get("SliceThickness") or (sp3[0] if is_vol else 1.0)
    thick = float(thick)
    h, w = vol.shape[1:]
    truth = []
    for nod in nodules:
        c = list(nod["centroid_px"])
        cz_idx = c[0] if is_vol else 0.0
        row, col = c[-2], c[-1]
        d = float(nod["diameter_mm"])
        hu = float(nod["hu"])
        centre = (cz_idx * sp3[0], (row - (h - 1) / 2) * sp3[1], (col - (w - 1) / 2) * sp3[2])
        reach = int(np.ceil((d / 2 + thick / 2) / sp3[0])) + 1 if is_vol else 0
        for k in range(max(0, int(round(cz_idx)) - reach), min(vol.shape[0], int(round(cz_idx)) + reach + 1)):
            f = _nodule_fraction((h, w), sp3[1:], k * sp3[0], thick, centre, d)
            if not f.any():
                continue
            f = ndi.gaussian_filter(f, (psf_sigma_mm / sp3[1], psf_sigma_mm / sp3[2]))
            vol[k] = vol[k] * (1 - f) + hu * f
        entry = {"centroid_px": [float(v) for v in (c if is_vol else c[-2:])], "diameter_mm": d, "hu": hu}
        entry.update({k: v for k, v in nod.items() if k not in entry})
        truth.append(entry)
    out = vol if is_vol else vol[0]
    return image.with_pixels(out.astype(np.float32), source=image.source + " (+inserted)"), truth


def write_dicom_series(image: Image, folder: str | Path, *, slice_thickness_mm: float | None = None,
                       series_description: str = "calcdetect phantom") -> list[Path]:
    """Write a CT :class:`Image` (2D or 3D, with an affine) as a DICOM CT series.

    Stored as int16 with RescaleIntercept -1024 (values clipped to -1024..31743 HU),
    ImagePositionPatient per slice from the affine, ImageOrientationPatient, PixelSpacing
    and SliceThickness.  Returns the written paths (one file per slice).
    """
    from pydicom.uid import CTImageStorage, generate_uid

    from ._dicom import new_dataset, set_grey_pixels, write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vol = image.pixels if image.ndim == 3 else image.pixels[None]
    sp = image.require_spacing("writing DICOM")
    sp_rc = sp[-2:]
    aff = image.affine if image.affine is not None else affine_from_dicom([0, 0, 0], [1, 0, 0, 0, 1, 0], sp_rc,
                                                                         (0, 0, sp[0] if image.ndim == 3 else 1.0))
    iop = list(aff[:3, 2] / sp_rc[1]) + list(aff[:3, 1] / sp_rc[0])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    thick = slice_thickness_mm or image.metadata.get("SliceThickness") or (sp[0] if image.ndim == 3 else 1.0)
    paths = []
    for k in range(vol.shape[0]):
        ds = new_dataset(CTImageStorage, "CT", "Phantom^CT", study_uid=study, series_uid=series)
        ds.FrameOfReferenceUID = frame
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in aff[:3, 3] + k * aff[:3, 0]]
        ds.ImageOrientationPatient = [float(round(v, 6)) for v in iop]
        ds.PixelSpacing = [float(sp_rc[0]), float(sp_rc[1])]
        ds.SliceThickness = float(thick)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        set_grey_pixels(ds, np.clip(np.rint(vol[k] + 1024), -32768, 32767).astype(np.int16))
        paths.append(write(ds, folder / f"slice_{k:04d}.dcm"))
    return paths
