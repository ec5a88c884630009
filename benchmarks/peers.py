"""The segmentation loop as each library's user would write it.

Every function takes the same NumPy input (an image and a threshold) and does the whole
loop: threshold -> label -> per-component measures, returning the number of components
(a cross-check: every tool must find the same number).  Peers that are not installed
are reported as missing, never faked.

What each one measures per component:

calcdetect   everything of :func:`calcdetect.measure.regionprops_table`: count, centroid,
             bbox, size in mm, equivalent diameter, major/minor axes, intensity max /
             mean / min, 3D: largest cross-section and slices spanned.
skimage      the naive script: ``label`` then a loop over ``regionprops`` reading area,
             centroid, bbox, intensity max / mean, equivalent diameter, major/minor
             axes (the same columns).
scipy        ``ndimage.label`` + ``find_objects`` + ``sum_labels`` / ``mean`` / ``maximum``
             with an index over the foreground voxels (count, centroid, bbox, max, mean);
             the naive form (whole volume into ``maximum`` / ``center_of_mass``) takes
             10 s and more per call on 100 slices, so it is not the one timed.
cc3d         ``connected_components`` + ``statistics`` (count, centroid, bbox; no intensity).
sitk         ``ConnectedComponent`` + ``LabelShapeStatisticsImageFilter`` (count,
             centroid, bbox, physical size; no intensity), NumPy -> SimpleITK conversion
             included, every label's values read out.
opencv       ``connectedComponentsWithStats`` (2D only: count, centroid, bbox).
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np


def available(tool: str) -> bool:
    """True when the library behind ``tool`` can be imported."""
    module = {"calcdetect": "calcdetect", "skimage": "skimage", "scipy": "scipy", "cc3d": "cc3d",
              "sitk": "SimpleITK", "opencv": "cv2"}[tool]
    return importlib.util.find_spec(module) is not None


def loop_calcdetect(img: np.ndarray, thr: float, spacing) -> int:
    from calcdetect import measure

    labels, n = measure.label(img >= thr)
    table = measure.regionprops_table(labels, img, spacing=spacing)
    return int(table["label"].size)


def loop_skimage(img: np.ndarray, thr: float, spacing) -> int:
    from skimage import measure

    labels = measure.label(img >= thr, connectivity=img.ndim)
    rows = []
    for r in measure.regionprops(labels, intensity_image=img, spacing=spacing):
        rows.append((r.label, r.area, r.centroid, r.bbox, r.intensity_max, r.intensity_mean,
                     r.equivalent_diameter_area, r.axis_major_length, r.axis_minor_length))
    return len(rows)


def loop_scipy(img: np.ndarray, thr: float, spacing) -> int:
    from scipy import ndimage as ndi

    mask = img >= thr
    labels, n = ndi.label(mask, structure=np.ones((3,) * img.ndim))
    index = np.arange(1, n + 1)
    ndi.find_objects(labels)
    # measurements over the foreground voxels only: handing the whole volume to
    # ndimage.maximum / center_of_mass / sum_labels takes 3 s each on 100 slices
    fg = labels[mask]
    ndi.sum_labels(np.ones(fg.shape), fg, index)
    for coord in np.nonzero(mask):
        ndi.mean(coord, fg, index)
    ndi.maximum(img[mask], fg, index)
    ndi.mean(img[mask], fg, index)
    return int(n)


def loop_cc3d(img: np.ndarray, thr: float, spacing) -> int:
    import cc3d

    labels = cc3d.connected_components(img >= thr, connectivity=26 if img.ndim == 3 else 8)
    stats = cc3d.statistics(labels)
    return int(len(stats["voxel_counts"]) - 1)  # row 0 is the background


def loop_sitk(img: np.ndarray, thr: float, spacing) -> int:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(img)
    image.SetSpacing([float(s) for s in spacing[::-1]])  # SimpleITK spacing is x, y(, z)
    top = float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) else 3.0e38
    mask = sitk.BinaryThreshold(image, lowerThreshold=float(thr), upperThreshold=top)
    labels = sitk.ConnectedComponent(mask, True)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOff()
    shape.ComputeFeretDiameterOff()
    shape.Execute(labels)
    rows = [(lab, shape.GetNumberOfPixels(lab), shape.GetCentroid(lab), shape.GetBoundingBox(lab),
             shape.GetPhysicalSize(lab)) for lab in shape.GetLabels()]
    return len(rows)


def loop_opencv(img: np.ndarray, thr: float, spacing) -> int:
    import cv2

    if img.ndim != 2:
        raise ValueError("OpenCV labels 2D images only")
    mask = (img >= thr).view(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    return int(n - 1)


LOOPS: dict[str, Callable[[np.ndarray, float, tuple], int]] = {
    "calcdetect": loop_calcdetect,
    "skimage": loop_skimage,
    "scipy": loop_scipy,
    "cc3d": loop_cc3d,
    "sitk": loop_sitk,
    "opencv": loop_opencv,
}
