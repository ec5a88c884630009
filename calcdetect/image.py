"""The :class:`Image`: pixels, physical spacing and geometry travelling together.

Modelled on nibabel (array + affine + header) and highdicom (image + geometry): an
``Image`` is what every loader returns and what every detector takes.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import CalcdetectError, InvalidParameterError, NoSpacingError, UnreadableFileError

MODALITIES = ("CT", "XRAY", "US")

#: ``Image.spacing_source`` of a pixel size the user stated (``--pixel-size``,
#: ``pixel_size_mm=`` or a raster sidecar) rather than one read from the file.
USER_SPACING = "user (--pixel-size)"

#: Physical pixel sizes outside this range (mm) are not images calcdetect can measure:
#: they are unit mistakes (micrometres, metres) or damaged headers.  Detectors convert
#: mm to pixels, so a 1e-30 mm pixel would ask for absurd filter sizes.
SPACING_RANGE_MM = (0.005, 1000.0)


def plausible_spacing(value: float) -> bool:
    """True when ``value`` is a finite pixel size inside :data:`SPACING_RANGE_MM`."""
    return bool(np.isfinite(value) and SPACING_RANGE_MM[0] <= value <= SPACING_RANGE_MM[1])


def _as_spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...] | None:
    """Validate a spacing: ``None`` or one finite, positive value per axis."""
    if spacing is None:
        return None
    if np.isscalar(spacing):
        spacing = [float(spacing)] * ndim
    values = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(values) != ndim:
        raise InvalidParameterError(
            f"spacing_mm has {len(values)} values but the image has {ndim} axes",
            fix="give one spacing per axis in array order",
        )
    if not all(plausible_spacing(v) for v in values):
        raise InvalidParameterError(
            f"spacing_mm {values} is not a pixel size between {SPACING_RANGE_MM[0]:g} and "
            f"{SPACING_RANGE_MM[1]:g} mm",
            fix="pass the real pixel size in mm, or None when it is unknown",
        )
    return values


def _all_finite(pixels: np.ndarray) -> bool:
    """True when every pixel is finite.  Checked a few million pixels at a time: one
    read of the image and a small reused mask, where ``np.isfinite(pixels).any()``
    wrote two image-sized masks (a fifth of the time of loading a CT series)."""
    step = max(1, (1 << 22) // max(1, pixels[0].size))
    return all(bool(np.isfinite(pixels[i:i + step]).all()) for i in range(0, pixels.shape[0], step))


#: The float32 array a loader has proven finite (see :func:`known_finite`), or ``None``.
_KNOWN_FINITE: ContextVar[np.ndarray | None] = ContextVar("calcdetect_known_finite", default=None)


@contextmanager
def known_finite(pixels: np.ndarray | None) -> Iterator[None]:
    """Within this block, an :class:`Image` built on exactly this float32 array skips
    its NaN/inf scan.

    For loaders that know every value is finite without reading them again (integer
    stored values times a rescale too small to overflow float32): the scan is a whole
    extra pass over the volume, a sixth of a 300-slice series load.

    Parameters
    ----------
    pixels : numpy.ndarray or None
        The float32 array that will be passed as ``Image(pixels=...)``; any other array
        is still scanned (all of them with ``None``).
    """
    token = _KNOWN_FINITE.set(pixels)
    try:
        yield
    finally:
        _KNOWN_FINITE.reset(token)


@dataclass
class Image:
    """A 2D image or 3D volume with its physical geometry.

    Parameters
    ----------
    pixels : ndarray
        2D ``(rows, cols)`` or 3D ``(slices, rows, cols)`` array.  Stored as float32;
        Hounsfield units for CT, the raw detector/echo signal otherwise (bright = dense
        or echogenic).
    spacing_mm : sequence of float or float, optional
        Physical size of one pixel along each array axis, in mm.  ``None`` when the
        image carries no usable spacing: then every mm measurement is reported as null.
    modality : {"CT", "XRAY", "US"}
        Which detector applies.
    valid_mask : ndarray of bool, optional
        Pixels that hold real image signal (e.g. the ultrasound fan, the exposed field
        of a radiograph).  ``None`` means every pixel.
    affine : ndarray, optional
        4 x 4 matrix mapping homogeneous array indices ``(slice, row, col, 1)`` to DICOM
        patient coordinates (LPS, mm).  For 2D images the slice index is 0.
    source : str, optional
        Where the image came from (a path), used in reports and messages.
    metadata : dict, optional
        Plain-data header values (UIDs, orientation tags, rescale, ...).
    warnings : list of str, optional
        Things the loader noticed that a user must know (how spacing was found, gaps).
    spacing_source : str, optional
        Which tag or argument the spacing came from.
    color : ndarray, optional
        The original RGB pixels (``(rows, cols, 3)`` uint8) when the source was colour;
        used for display and to mask colour overlays.
    geometry : dict, optional
        Modality-specific geometry: ultrasound regions and probe type, radiograph
        orientation, and so on.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, ...] | None
    modality: str
    valid_mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    source: str = "<array>"
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    spacing_source: str | None = None
    color: np.ndarray | None = None
    geometry: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except CalcdetectError as exc:
            # a loader built this Image from a file: the message must name that file
            if exc.path is None and self.source != "<array>":
                raise type(exc)(exc.reason, path=self.source, fix=exc.fix) from exc
            raise

    def _validate(self) -> None:
        pixels = np.asarray(self.pixels)
        if pixels.ndim not in (2, 3):
            raise InvalidParameterError(
                f"an Image needs a 2D or 3D array, got shape {pixels.shape}",
                fix="pass (rows, cols) or (slices, rows, cols); convert colour to grey first",
            )
        if pixels.size == 0:
            raise InvalidParameterError("an Image cannot be empty", fix="pass a non-empty array")
        if pixels.dtype != np.float32:
            pixels = pixels.astype(np.float32)
        self.pixels = pixels
        modality = str(self.modality).upper()
        if modality in ("CR", "DX", "MG", "RG", "RX", "XR"):
            modality = "XRAY"
        if modality not in MODALITIES:
            raise InvalidParameterError(
                f"modality {self.modality!r} is not one of {', '.join(MODALITIES)}",
                fix="choose CT, XRAY or US",
            )
        self.modality = modality
        self.spacing_mm = _as_spacing(self.spacing_mm, pixels.ndim)
        if self.spacing_mm is not None and self.spacing_source is None:
            self.spacing_source = "given"
        if self.valid_mask is not None:
            vm = np.asarray(self.valid_mask, dtype=bool)
            if vm.shape != pixels.shape:
                raise InvalidParameterError(
                    f"valid_mask shape {vm.shape} differs from pixels shape {pixels.shape}"
                )
            self.valid_mask = vm
        if self.affine is not None:
            aff = np.asarray(self.affine, dtype=np.float64)
            if aff.shape != (4, 4):
                raise InvalidParameterError(f"affine must be 4 x 4, got {aff.shape}")
            self.affine = aff
        if _KNOWN_FINITE.get() is not pixels and not _all_finite(self.pixels):
            nonfinite = ~np.isfinite(self.pixels)
            n = int(nonfinite.sum())
            self.warnings.append(
                f"{n} pixel(s) were NaN or infinite; they are excluded from analysis"
            )
            finite = self.pixels[~nonfinite]
            if not finite.size:  # nothing left to analyse: any number would be made up
                cls = InvalidParameterError if self.source == "<array>" else UnreadableFileError
                raise cls(
                    "every pixel is NaN or infinite, so there is nothing to analyse",
                    path=None if self.source == "<array>" else self.source,
                    fix="re-export the image",
                )
            fill = np.float32(finite.min())
            self.pixels = np.where(nonfinite, fill, self.pixels).astype(np.float32)
            vm = ~nonfinite if self.valid_mask is None else (self.valid_mask & ~nonfinite)
            self.valid_mask = vm

    # ------------------------------------------------------------------ geometry
    @property
    def ndim(self) -> int:
        """Number of array axes (2 or 3)."""
        return self.pixels.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape in index order."""
        return tuple(self.pixels.shape)

    @property
    def has_spacing(self) -> bool:
        """True when a real physical pixel size is known."""
        return self.spacing_mm is not None

    def require_spacing(self, what: str = "this measurement") -> tuple[float, ...]:
        """Return the spacing or raise :class:`NoSpacingError` naming ``what``."""
        if self.spacing_mm is None:
            raise NoSpacingError(
                f"{what} needs a physical pixel size and the image has none",
                path=self.source,
                fix="pass pixel_size_mm= (CLI: --pixel-size MM)",
            )
        return self.spacing_mm

    def index_to_patient(self, index: np.ndarray) -> np.ndarray | None:
        """Map array indices ``(..., ndim)`` to mm coordinates.

        Uses the DICOM affine (patient LPS coordinates) when known, else
        ``index * spacing``.  Returns ``None`` without spacing.
        """
        index = np.asarray(index, dtype=np.float64)
        if self.affine is not None:
            if self.ndim == 2:
                index = np.concatenate([np.zeros(index.shape[:-1] + (1,)), index], axis=-1)
            homog = np.concatenate([index, np.ones(index.shape[:-1] + (1,))], axis=-1)
            return (homog @ self.affine.T)[..., :3]
        if self.spacing_mm is None:
            return None
        return index * np.asarray(self.spacing_mm)

    def with_pixels(self, pixels: np.ndarray, **changes: Any) -> "Image":
        """A copy of this image with other pixels (same geometry unless changed)."""
        fields = dict(
            pixels=pixels,
            spacing_mm=self.spacing_mm,
            modality=self.modality,
            valid_mask=self.valid_mask,
            affine=self.affine,
            source=self.source,
            metadata=dict(self.metadata),
            warnings=list(self.warnings),
            spacing_source=self.spacing_source,
            color=self.color,
            geometry=dict(self.geometry),
        )
        fields.update(changes)
        return Image(**fields)

    def __repr__(self) -> str:
        sp = "none" if self.spacing_mm is None else "x".join(f"{s:.3g}" for s in self.spacing_mm)
        return f"Image({self.modality}, shape={self.shape}, spacing_mm={sp}, source={self.source!r})"


def affine_from_dicom(
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_step: Sequence[float] | None = None,
) -> np.ndarray:
    """Build the index-to-LPS affine for ``(slice, row, col)`` indices.

    Parameters
    ----------
    position : sequence of 3 float
        ImagePositionPatient of the first slice (centre of the first pixel).
    orientation : sequence of 6 float
        ImageOrientationPatient: direction of increasing column index, then of
        increasing row index.
    pixel_spacing : sequence of 2 float
        PixelSpacing: (row spacing, column spacing) in mm.
    slice_step : sequence of 3 float, optional
        Vector in mm from one slice position to the next (handles gantry tilt).
        Defaults to the unit normal (length 1 mm).
    """
    ori = np.asarray(orientation, dtype=np.float64)
    col_dir, row_dir = ori[:3], ori[3:]
    dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
    if slice_step is None:
        slice_step = np.cross(col_dir, row_dir)
    aff = np.eye(4)
    aff[:3, 0] = np.asarray(slice_step, dtype=np.float64)
    aff[:3, 1] = row_dir * dy
    aff[:3, 2] = col_dir * dx
    aff[:3, 3] = np.asarray(position, dtype=np.float64)
    return aff
