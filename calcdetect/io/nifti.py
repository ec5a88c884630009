"""NIfTI volumes through nibabel (optional extra ``calcdetect[nifti]``).

NIfTI stores voxels as ``(i, j, k)`` with an affine to RAS+ millimetres.  calcdetect's
index order is ``(slice, row, col)`` and its patient coordinates are DICOM LPS, so the
array is transposed to ``(k, j, i)`` and the affine re-expressed for that order with x
and y negated.  NIfTI carries no modality: it is taken as CT in HU (the scaling in the
header, ``scl_slope``/``scl_inter``, is applied), which the warnings say.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MissingDecoderError, UnreadableFileError, UnsupportedImageError
from ..image import Image
from .dicom import check_budget, positive_spacing

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    """True for ``.nii`` and ``.nii.gz`` names.

    Parameters
    ----------
    path : str or Path
        Only the name is looked at (case ignored); the file is not opened.

    Returns
    -------
    bool
    """
    name = Path(path).name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def load_nifti(path: str | Path, *, budget: int | None = None) -> Image:
    """Load a 3D NIfTI CT volume as an :class:`Image` in HU with an LPS affine.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` file.
    budget : int, optional
        Pixel budget (see :func:`calcdetect.io.dicom.max_pixels`).

    Returns
    -------
    Image
        ``modality="CT"``; ``pixels`` float32 ``(k, j, i)`` (the NIfTI axes reversed:
        slice, row, column) with ``scl_slope``/``scl_inter`` applied, taken as HU;
        ``spacing_mm`` the voxel size in mm in that order and ``affine`` (LPS, mm), both
        ``None`` when the affine gives no plausible voxel size; a warning says the
        modality is assumed.

    Raises
    ------
    MissingDecoderError
        nibabel is not installed.
    UnreadableFileError
        The file or its voxel data cannot be read.
    UnsupportedImageError
        The image is not 3D (a 4D volume with one volume counts as 3D).
    PixelBudgetError
        The volume is above the pixel budget.
    """
    try:
        import nibabel as nib
    except ImportError:
        raise MissingDecoderError("reading NIfTI needs nibabel", path=path,
                                  fix="pip install 'calcdetect[nifti]'") from None
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged files
        raise UnreadableFileError(f"NIfTI file cannot be read ({type(exc).__name__}: {exc})", path=path) from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UnsupportedImageError(f"NIfTI image has shape {img.shape}; a 3D volume is needed", path=path)
    check_budget(int(np.prod(shape)), path, budget)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise UnreadableFileError(f"NIfTI voxel data cannot be read ({type(exc).__name__}: {exc})", path=path) from exc
    pixels = np.ascontiguousarray(data.transpose(2, 1, 0))
    ras = np.asarray(img.affine, dtype=np.float64)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ ras
    affine = np.eye(4)
    affine[:, 0], affine[:, 1], affine[:, 2], affine[:, 3] = lps[:, 2], lps[:, 1], lps[:, 0], lps[:, 3]
    spacing = positive_spacing([float(np.linalg.norm(affine[:3, a])) for a in range(3)])
    warnings = [f"{Path(path).name}: NIfTI carries no modality; taken as CT in Hounsfield units"]
    if spacing is None:
        affine = None
        warnings.append("the NIfTI affine has no usable voxel size; sizes are not reported in mm")
    else:
        spacing = tuple(spacing)
    return Image(pixels=pixels, spacing_mm=spacing, modality="CT", affine=affine, source=str(path),
                 metadata={"format": "nifti"}, warnings=warnings,
                 spacing_source="NIfTI affine" if spacing else None)
