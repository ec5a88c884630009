"""CT loading: single slices, series folders and enhanced multi-frame CT.

Pixels become Hounsfield units (RescaleSlope/Intercept applied per slice or per frame).
Geometry comes from ImagePositionPatient / ImageOrientationPatient / PixelSpacing; slice
spacing comes from the positions along the slice normal, never from SliceThickness
(reconstructions often overlap: 3 mm thick every 2 mm).
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from .._switches import GC_PAUSED
from .._threads import parallel_each as _parallel_each
from ..errors import CalcdetectError, InconsistentSeriesError, UnreadableFileError
from ..image import Image, affine_from_dicom, known_finite
from .dicom import (
    NO_FAST_VALUE,
    _fast_defaults,
    _fast_specs,
    basic_metadata,
    check_budget,
    check_decoder,
    check_pixels_present,
    claimed_pixels,
    decode_pixels,
    dicom_value,
    fast_value,
    fast_values,
    float_list,
    floats_of,
    max_pixels,
    number_of_frames,
    positive_spacing,
    read_dataset,
    read_header,
)

ENHANCED_CT_SOP = "1.2.840.10008.5.1.4.1.1.2.1"


def _rescale(ds: Dataset | Any, path: str | Path | None = None) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (1 and 0 when absent).

    Present but unusable values (not numbers, not finite, a zero slope) raise
    :class:`UnreadableFileError`: guessing 1/0 would make up Hounsfield units.
    """
    raw_slope, raw_intercept = getattr(ds, "RescaleSlope", None), getattr(ds, "RescaleIntercept", None)
    try:
        slope = 1.0 if raw_slope in (None, "") else float(raw_slope)
        intercept = 0.0 if raw_intercept in (None, "") else float(raw_intercept)
    except (TypeError, ValueError):
        slope = intercept = float("nan")
    if not np.isfinite(slope) or slope == 0 or not np.isfinite(intercept):
        raise UnreadableFileError(
            f"RescaleSlope {raw_slope!r} / RescaleIntercept {raw_intercept!r} cannot convert "
            "stored values to Hounsfield units",
            path=path,
            fix="repair the rescale tags or re-export the file",
        )
    return slope, intercept


def _to_hu(pixels: np.ndarray, slope: float, intercept: float, path: str | Path) -> np.ndarray:
    """Stored values to HU in float32; an overflow is a damaged header, not an image."""
    with np.errstate(over="ignore", invalid="ignore"):
        hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if not np.isfinite(hu).all() and (np.isfinite(hu) != np.isfinite(pixels)).any():
        raise UnreadableFileError(
            f"RescaleSlope {slope:g} / RescaleIntercept {intercept:g} overflow the Hounsfield range",
            path=path,
            fix="repair the rescale tags or re-export the file",
        )
    return hu


def _spacing_warning(path: str | Path) -> str:
    return (
        f"{Path(path).name}: PixelSpacing is missing, zero or implausible, so sizes are not reported in mm"
        " (pass pixel_size_mm= / --pixel-size to supply it)"
    )


def ct_slice_from_dataset(ds: Dataset, path: str | Path, pixels: np.ndarray) -> Image:
    """Build a 2D CT :class:`Image` from a single-frame dataset and its stored pixels.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Header of one CT slice (RescaleSlope/Intercept, PixelSpacing,
        ImagePositionPatient, ImageOrientationPatient are read from it).
    path : str or Path
        The source file; recorded as ``source`` and in ``metadata["files"]``.
    pixels : numpy.ndarray
        Stored values of the slice, shape ``(rows, columns)`` (from
        :func:`~calcdetect.io.dicom.decode_pixels`).

    Returns
    -------
    Image
        ``pixels`` in Hounsfield units (float32, ``stored * slope + intercept``, slope 1
        and intercept 0 when absent); ``spacing_mm`` ``(row, column)`` from PixelSpacing
        in mm, or ``None`` (with a warning) when missing or implausible; ``affine`` (LPS,
        mm) only when spacing, position and an orthonormal orientation are all present.
        ``metadata`` holds :func:`~calcdetect.io.dicom.basic_metadata`, the rescale used,
        ``SOPInstanceUIDs`` and ``files``.

    Raises
    ------
    UnreadableFileError
        RescaleSlope/RescaleIntercept present but not finite numbers, a zero slope, or
        values that overflow float32 (made-up HU are never returned).
    """
    slope, intercept = _rescale(ds, path)
    hu = _to_hu(pixels, slope, intercept, path)
    spacing = positive_spacing(float_list(ds, "PixelSpacing", 2))
    warns: list[str] = []
    if spacing is None:
        warns.append(_spacing_warning(path))
    ipp = float_list(ds, "ImagePositionPatient", 3)
    iop = float_list(ds, "ImageOrientationPatient", 6)
    affine = None
    if spacing is not None and ipp is not None and iop is not None and _valid_orientation(iop):
        affine = affine_from_dicom(ipp, iop, spacing)
    meta = basic_metadata(ds)
    meta["RescaleSlope"], meta["RescaleIntercept"] = slope, intercept
    meta["SOPInstanceUIDs"] = [str(ds.get("SOPInstanceUID", ""))]
    meta["files"] = [str(path)]  # source file(s), for DICOM SR/SEG outputs
    return Image(
        pixels=hu,
        spacing_mm=spacing,
        modality="CT",
        affine=affine,
        source=str(path),
        metadata=meta,
        warnings=warns,
        spacing_source="PixelSpacing" if spacing else None,
    )


def _valid_orientation(iop: Sequence[float]) -> bool:
    a, b = np.asarray(iop[:3]), np.asarray(iop[3:])
    return bool(
        abs(np.linalg.norm(a) - 1) < 0.05 and abs(np.linalg.norm(b) - 1) < 0.05 and abs(a @ b) < 0.05
    )


def load_ct_file(path: str | Path, ds: Dataset | None = None, *, budget: int | None = None) -> Image:
    """Load one CT file: a single slice (2D) or an enhanced multi-frame CT (3D).

    Parameters
    ----------
    path : str or Path
        The DICOM file.
    ds : pydicom.dataset.Dataset, optional
        Its header when already read; re-read in full when ``None`` or read without
        pixel data.
    budget : int, optional
        Pixel budget (see :func:`calcdetect.io.dicom.max_pixels`).

    Returns
    -------
    Image
        In Hounsfield units (float32).  A single slice: 2D ``(rows, columns)``, as
        :func:`ct_slice_from_dataset`.  A multi-frame CT: 3D ``(slices, rows,
        columns)`` ordered by ascending position along the slice normal, ``spacing_mm``
        ``(slice step from positions, row, column)`` in mm (``None`` without usable
        PixelSpacing), ``metadata["frame_order"]`` the 0-based frame of each slice; a
        one-frame enhanced CT gives a 2D image.

    Raises
    ------
    UnreadableFileError
        The file cannot be read or decoded (see
        :func:`~calcdetect.io.dicom.read_dataset` and
        :func:`~calcdetect.io.dicom.decode_pixels`), a single-frame file does not decode
        to 2D, unusable rescale values, or frames / functional groups that disagree with
        NumberOfFrames.
    UnsupportedImageError, MissingDecoderError, PixelBudgetError
        No pixel data, no decoder, or above the pixel budget.
    InconsistentSeriesError
        Multi-frame CT whose frames lack position/orientation, have a non-orthonormal
        orientation or differ in PixelSpacing.
    """
    if ds is None or "PixelData" not in ds:
        ds = read_dataset(path, budget=budget)
    else:
        check_pixels_present(ds, path)
        check_budget(claimed_pixels(ds), path, budget)
        check_decoder(ds, path)
    if "PerFrameFunctionalGroupsSequence" in ds or number_of_frames(ds) > 1:
        return _load_enhanced(ds, path)
    pixels = decode_pixels(ds, path)
    if pixels.ndim != 2:
        raise UnreadableFileError(f"expected a 2D CT slice, decoded shape {pixels.shape}", path=path)
    return ct_slice_from_dataset(ds, path, pixels)


def _group_item(ds: Dataset, frame_item: Dataset | None, seq: str) -> Dataset | None:
    """Functional group ``seq`` for a frame: per-frame first, then shared."""
    for source in (frame_item, _first(ds, "SharedFunctionalGroupsSequence")):
        if source is not None and seq in source and len(source[seq].value):
            return source[seq].value[0]
    return None


def _first(ds: Dataset, keyword: str) -> Dataset | None:
    if keyword in ds and len(ds[keyword].value):
        return ds[keyword].value[0]
    return None


def _load_enhanced(ds: Dataset, path: str | Path) -> Image:
    """Enhanced (multi-frame) CT: per-frame functional groups give position and rescale."""
    frames = decode_pixels(ds, path)
    n = number_of_frames(ds)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape[0] != n:
        raise UnreadableFileError(
            f"NumberOfFrames is {n} but {frames.shape[0]} frames decoded", path=path
        )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [None] * n
    if len(per_frame) != n:
        raise UnreadableFileError(
            f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n} frames", path=path
        )
    positions, orientations, spacings, hu = [], [], [], []
    for i, item in enumerate(per_frame):
        pos_item = _group_item(ds, item, "PlanePositionSequence")
        ori_item = _group_item(ds, item, "PlaneOrientationSequence")
        pm_item = _group_item(ds, item, "PixelMeasuresSequence")
        rs_item = _group_item(ds, item, "PixelValueTransformationSequence")
        positions.append(float_list(pos_item, "ImagePositionPatient", 3) if pos_item else None)
        orientations.append(float_list(ori_item, "ImageOrientationPatient", 6) if ori_item else None)
        spacings.append(positive_spacing(float_list(pm_item, "PixelSpacing", 2)) if pm_item else None)
        slope, intercept = _rescale(rs_item if rs_item is not None else ds, path)
        hu.append(_to_hu(frames[i], slope, intercept, path))
    meta = basic_metadata(ds)
    meta["SOPInstanceUIDs"] = [str(ds.get("SOPInstanceUID", ""))]
    meta["NumberOfFrames"] = n
    meta["files"] = [str(path)]  # source file, for DICOM SR/SEG outputs
    slices = [
        _Slice(path=str(path), position=positions[i], orientation=orientations[i],
               spacing=spacings[i], instance=i + 1, frame=i)
        for i in range(n)
    ]
    volume, geometry, warns = _assemble(slices, [h for h in hu], str(path))
    meta["frame_order"] = [s.frame for s in geometry["ordered"]]
    image = Image(
        pixels=volume if volume.shape[0] > 1 else volume[0],
        spacing_mm=geometry["spacing"] if volume.shape[0] > 1 else (geometry["spacing"][1:] if geometry["spacing"] else None),
        modality="CT",
        affine=geometry["affine"],
        source=str(path),
        metadata=meta,
        warnings=warns,
        spacing_source=geometry["spacing_source"],
        geometry=_step_only(geometry) if volume.shape[0] > 1 else {},
    )
    return image


def _step_only(geometry: dict[str, Any]) -> dict[str, Any]:
    """The slice step from the positions, for an Image whose PixelSpacing is unusable (so
    ``load(..., pixel_size_mm=)`` can complete the spacing); empty otherwise."""
    if geometry.get("spacing") is None and geometry.get("slice_step_mm"):
        return {"slice_step_mm": geometry["slice_step_mm"]}
    return {}


class _Slice:
    """Header facts of one slice (file or frame) used to order and stack a series."""

    __slots__ = ("path", "position", "orientation", "spacing", "instance", "frame", "ds", "shape", "sop", "lossy")

    def __init__(self, path, position, orientation, spacing, instance, frame=None, ds=None, shape=None, sop=None,
                 lossy=False):
        self.path = path
        self.position = position
        self.orientation = orientation
        self.spacing = spacing
        self.instance = instance
        self.frame = frame
        self.ds = ds
        self.shape = shape
        self.sop = sop
        self.lossy = lossy  # LossyImageCompression "01": a lossy copy loses to a lossless one


def _file_size(path) -> int:
    """Bytes of a slice's file (0 when it cannot be read)."""
    try:
        return os.stat(path).st_size
    except (OSError, TypeError, ValueError):
        return 0


def _assemble(slices: list[_Slice], planes: list[np.ndarray] | None, source: str):
    """Order slices along the normal, check geometry, and stack ``planes`` (same order as
    ``slices``) into a volume.  Returns ``(volume or None, geometry, warnings)``."""
    warns: list[str] = []
    with_geo = [s for s in slices if s.position is not None and s.orientation is not None]
    if len(with_geo) < len(slices):
        raise InconsistentSeriesError(
            f"{len(slices) - len(with_geo)} of {len(slices)} slices lack ImagePositionPatient or "
            "ImageOrientationPatient, so they cannot be ordered into a volume",
            path=source,
            fix="load the slices one by one, or repair the headers",
        )
    # orientation groups
    ori_key = lambda s: tuple(np.round(s.orientation, 3))  # noqa: E731
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(slices):
        groups[ori_key(s)].append(i)
    keep_idx = max(groups.values(), key=len)
    if len(groups) > 1:
        warns.append(
            f"slices have {len(groups)} different orientations; kept the {len(keep_idx)} slices of "
            f"the most common one and ignored {len(slices) - len(keep_idx)}"
        )
    iop = np.asarray(slices[keep_idx[0]].orientation, dtype=np.float64)
    if not _valid_orientation(iop):
        raise InconsistentSeriesError(
            f"ImageOrientationPatient {[float(v) for v in iop]} is not two orthonormal vectors", path=source
        )
    normal = np.cross(iop[:3], iop[3:])
    dist = np.array([np.dot(slices[i].position, normal) for i in keep_idx])
    order = np.argsort(dist, kind="stable")
    ordered_idx = [keep_idx[k] for k in order]
    dist = dist[order]
    # duplicates: same position (within 1/100 mm).  Of each group a lossless copy is
    # kept over a lossy one (LossyImageCompression "01"), then the largest file (the
    # first in file order on a tie): a truncated or pixel-less copy of a slice is smaller
    # than the good one, which would otherwise be dropped in its favour
    dup = np.concatenate([[False], np.diff(dist) < 1e-2])
    if dup.any():
        starts = list(np.flatnonzero(~dup)) + [len(ordered_idx)]
        kept, kept_dist, pairs = [], [], []
        for a, b in zip(starts[:-1], starts[1:]):
            members = ordered_idx[a:b]
            best = (max(range(len(members)), key=lambda k: (not slices[members[k]].lossy,
                                                            _file_size(slices[members[k]].path)))
                    if len(members) > 1 else 0)
            kept.append(members[best])
            kept_dist.append(dist[a + best])
            pairs += [(Path(str(slices[i].path)).name, Path(str(slices[members[best]].path)).name)
                      for i in members if i != members[best]]
        shown = ", ".join(f"{a} (same position as {b})" for a, b in pairs[:5])
        more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""
        warns.append(
            f"{len(pairs)} slice(s) duplicate the position of another slice and were dropped: "
            f"{shown}{more}"
        )
        ordered_idx, dist = kept, np.asarray(kept_dist)
    spacing_xy = slices[ordered_idx[0]].spacing
    if any(slices[i].spacing != spacing_xy for i in ordered_idx):
        raise InconsistentSeriesError(
            "slices have different PixelSpacing, so they cannot be stacked", path=source
        )
    n = len(ordered_idx)
    geometry: dict[str, Any] = {"ordered": [slices[i] for i in ordered_idx], "affine": None,
                                "spacing": None, "spacing_source": None}
    if n > 1:
        steps = np.diff(dist)
        step = float(np.median(steps))
        geometry["slice_step_mm"] = step  # kept for a user pixel size when PixelSpacing is unusable
        irregular = np.abs(steps - step) > max(0.1 * step, 0.01)
        if irregular.any():
            k = np.flatnonzero(irregular)
            warns.append(
                f"slice spacing is irregular: median {step:.3g} mm, but {len(k)} step(s) differ "
                f"(e.g. {steps[k[0]]:.3g} mm after slice {int(k[0])}); volumes use the median spacing"
            )
        if spacing_xy is not None:
            first = np.asarray(slices[ordered_idx[0]].position)
            last = np.asarray(slices[ordered_idx[-1]].position)
            step_vec = (last - first) / (n - 1)
            geometry["affine"] = affine_from_dicom(first, iop, spacing_xy, step_vec)
            geometry["spacing"] = (step, float(spacing_xy[0]), float(spacing_xy[1]))
            geometry["spacing_source"] = "PixelSpacing + ImagePositionPatient"
    elif spacing_xy is not None:
        geometry["affine"] = affine_from_dicom(slices[ordered_idx[0]].position, iop, spacing_xy)
        geometry["spacing"] = (1.0, float(spacing_xy[0]), float(spacing_xy[1]))
        geometry["spacing_source"] = "PixelSpacing"
    if spacing_xy is None:
        warns.append("PixelSpacing is missing, zero or implausible, so sizes are not reported in mm "
                     "(pass pixel_size_mm= / --pixel-size to supply it)")
    volume = None
    if planes is not None:
        shapes = {planes[i].shape for i in ordered_idx}
        if len(shapes) > 1:
            raise InconsistentSeriesError(f"slices differ in size: {sorted(shapes)}", path=source)
        volume = np.stack([planes[i] for i in ordered_idx]).astype(np.float32, copy=False)
    return volume, geometry, warns


#: Header elements a series scan and load use; a scan converts only these (converting
#: every element of every header cost two thirds of the scan) and a damaged one among
#: them still makes the file unreadable, as a full read would.
_SCAN_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
    "FrameOfReferenceUID", "Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "InstanceNumber", "RescaleSlope", "RescaleIntercept", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "SamplesPerPixel", "NumberOfFrames", "PhotometricInterpretation",
    "LossyImageCompression",
)


#: Header elements a series load keeps from a quick parse (see :func:`_quick_scan`):
#: those it reads, those series_key and describe_series read, and the character set.
_QUICK_KEYWORDS = _SCAN_KEYWORDS + ("SpecificCharacterSet",)
_QUICK_HEAD_BYTES = 1 << 16  # headers larger than this are left to pydicom
_QUICK_FIRST_BYTES = 1 << 13  # read first; the rest of _QUICK_HEAD_BYTES only if needed


def _vr_sets() -> tuple[frozenset[bytes], frozenset[bytes]]:
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

    return (frozenset(str(v).encode() for v in STANDARD_VR),
            frozenset(str(v).encode() for v in EXPLICIT_VR_LENGTH_32))


def _skip_undefined(data: bytes, pos: int, implicit: bool, depth: int = 0) -> int | None:
    """Position after the sequence of undefined length whose items start at ``pos``,
    or ``None`` when it is not well formed within ``data``."""
    if depth > 16:
        return None
    end = len(data)
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):  # sequence delimiter
            return pos if length == 0 else None
        if (group, elem) != (0xFFFE, 0xE000):
            return None
        if length != 0xFFFFFFFF:
            pos += length
            continue
        pos = _skip_elements(data, pos, implicit, depth + 1, item=True)
        if pos is None:
            return None
    return None


def _skip_elements(data: bytes, pos: int, implicit: bool, depth: int, *, item: bool) -> int | None:
    """Parse the elements of an item of undefined length: position after its delimiter."""
    all_vrs, long_vrs = _VRS
    end = len(data)
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, pos)
        if (group, elem) == (0xFFFE, 0xE00D):  # item delimiter
            return pos + 8 if struct.unpack_from("<I", data, pos + 4)[0] == 0 else None
        pos, length = _element_header(data, pos, implicit, all_vrs, long_vrs)
        if pos is None:
            return None
        if length == 0xFFFFFFFF:
            pos = _skip_undefined(data, pos, implicit, depth)
            if pos is None:
                return None
        else:
            pos += length
    return None


def _element_header(data: bytes, pos: int, implicit: bool, all_vrs, long_vrs) -> tuple[int | None, int]:
    """(value position, value length) of the element at ``pos``; ``(None, 0)`` if unusual."""
    if implicit:
        if pos + 8 > len(data):
            return None, 0
        return pos + 8, struct.unpack_from("<I", data, pos + 4)[0]
    vr = data[pos + 4:pos + 6]
    if vr not in all_vrs:
        return None, 0
    if vr in long_vrs:
        if pos + 12 > len(data):
            return None, 0
        return pos + 12, struct.unpack_from("<I", data, pos + 8)[0]
    return pos + 8, struct.unpack_from("<H", data, pos + 6)[0]


_VRS: tuple[frozenset[bytes], frozenset[bytes]] = (frozenset(), frozenset())


def _quick_scan(path: Path) -> tuple[Dataset, dict[str, Any], set[int]] | None:
    """The :data:`_QUICK_KEYWORDS` elements of a file's header, raw as pydicom leaves
    them, in a small Dataset (with the transfer syntax in its file meta); the
    :func:`~calcdetect.io.dicom.fast_values` of its :data:`_SCAN_KEYWORDS` (read from the
    elements as they are found instead of looked up in the Dataset afterwards); and the
    tags of the elements it holds.  ``None`` when the file is anything but a plain,
    well-formed little-endian DICOM file whose pixel data starts within its first 64 KiB:
    read it with pydicom then.

    A series scan parsed every element of every header with pydicom; this walks the
    elements and keeps a few (a third of the time).  Values are converted later by
    pydicom (or :func:`~calcdetect.io.dicom.fast_values`) from the very same bytes.

    The walk first reads 8 KiB (headers are usually about 1 KiB) and only when it fails
    on those reads up to :data:`_QUICK_HEAD_BYTES` and walks again: the same result as
    walking 64 KiB at once, since a walk that succeeds never looks past the pixel data's
    element header."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_QUICK_FIRST_BYTES)
            result = _quick_walk(data)
            if result is None and len(data) == _QUICK_FIRST_BYTES:
                data += fh.read(_QUICK_HEAD_BYTES - _QUICK_FIRST_BYTES)
                result = _quick_walk(data)
    except OSError:
        return None
    return result


def _quick_walk(data: bytes) -> tuple[Dataset, dict[str, Any], set[int]] | None:
    """:func:`_quick_scan` of the first bytes of a file."""
    global _VRS
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import BaseTag

    if not _VRS[0]:
        _VRS = _vr_sets()
    all_vrs, long_vrs = _VRS
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    # file meta: explicit VR little endian, group 0002
    pos, ts = 132, None
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        elem = struct.unpack_from("<H", data, pos + 2)[0]
        start, length = _element_header(data, pos, False, all_vrs, long_vrs)
        if start is None or length == 0xFFFFFFFF or start + length > len(data):
            return None
        if elem == 0x0010:
            ts = data[start:start + length].decode("ascii", "replace").rstrip("\0 ")
        pos = start + length
    if not ts:
        return None
    syntax = _quick_syntax(ts)
    if syntax is None:
        return None
    uid, implicit = syntax
    wanted = _quick_tags()
    found: dict = {}
    last = -1
    while True:
        if pos + 8 > len(data):
            return None
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | elem
        if tag <= last or group == 0xFFFE or group == 0x0002:
            return None
        if tag in (0x7FE00008, 0x7FE00009):  # float pixel data: pydicom's business
            return None
        last = tag
        start, length = _element_header(data, pos, implicit, all_vrs, long_vrs)
        if start is None:
            return None
        if tag == 0x7FE00010:  # its element header is whole: where pydicom stops too
            break
        if length == 0xFFFFFFFF:
            if tag in wanted or (not implicit and data[pos + 4:pos + 6] not in (b"SQ", b"UN")):
                return None
            # an explicit-VR UN of undefined length holds implicit-VR items (PS3.5 6.2.2)
            pos = _skip_undefined(data, start, implicit or data[pos + 4:pos + 6] == b"UN")
            if pos is None:
                return None
            found[tag] = None
            continue
        if start + length > len(data):
            return None
        if tag in wanted:
            vr = None if implicit else data[pos + 4:pos + 6].decode()
            found[tag] = RawDataElement(BaseTag(tag), vr, length, data[start:start + length], start,
                                        implicit, True)
        else:
            found[tag] = None
        pos = start + length
    if not found:  # pydicom refuses an empty data set
        return None
    elements = {t: e for t, e in found.items() if e is not None and t in wanted}
    ds = Dataset(elements)
    ds.file_meta = _quick_file_meta(uid)
    facts: dict[str, Any] = {}
    if _fast_defaults():  # the same values fast_values(ds, _SCAN_KEYWORDS) reads
        for keyword, tag, vr in _scan_specs():
            raw = elements.get(tag)
            if raw is not None:
                value = fast_value(raw, vr)
                if value is not NO_FAST_VALUE:
                    facts[keyword] = value
    return ds, facts, set(elements)


@functools.lru_cache(maxsize=1)
def _scan_specs() -> tuple[tuple[str, int, str], ...]:
    """``(keyword, tag as a plain int, dictionary VR)`` of :data:`_SCAN_KEYWORDS` (plain
    ints: looking a pydicom ``BaseTag`` up in a dict of ints calls its Python ``__eq__``)."""
    return tuple((keyword, int(tag), vr) for keyword, tag, vr in _fast_specs(_SCAN_KEYWORDS))


@functools.lru_cache(maxsize=32)
def _quick_syntax(ts: str) -> tuple[str, bool] | None:
    """``(transfer syntax UID, implicit VR)`` when the quick walk can read this syntax
    (a known little-endian one, not deflated), else ``None``."""
    from pydicom.uid import UID

    uid = UID(ts)
    if not uid.is_transfer_syntax or not uid.is_little_endian or uid.is_deflated:
        return None
    return str(uid), uid.is_implicit_VR


@functools.lru_cache(maxsize=32)
def _quick_file_meta(ts: str) -> Dataset:
    """The file meta of quick headers: only the transfer syntax, one object per syntax
    shared by all of them (read, never changed)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(ts)
    return meta


@functools.lru_cache(maxsize=1)
def _quick_tags() -> frozenset[int]:
    from pydicom.datadict import tag_for_keyword

    return frozenset(int(tag_for_keyword(k)) for k in _QUICK_KEYWORDS)


def _scan_one(path: Path, quick: bool = False) -> tuple[Path, Dataset | None, dict[str, Any], CalcdetectError | None]:
    """Header of one file, with the plain values of the canonically spelled
    :data:`_SCAN_KEYWORDS` (:func:`~calcdetect.io.dicom.fast_values`); pydicom converts
    the others, so a damaged one still makes the file unreadable.  ``quick``: only the
    :data:`_QUICK_KEYWORDS` elements when :func:`_quick_scan` can read them."""
    try:
        scanned = _quick_scan(path) if quick else None
        present = None
        if scanned is None:
            ds = read_header(path, stop_before_pixels=True, touch_values=False)
        else:
            ds, facts, present = scanned
        try:
            if present is None:
                facts = fast_values(ds, _SCAN_KEYWORDS)
            for keyword, tag, _ in _scan_specs():
                if keyword not in facts and (present is None or tag in present):
                    ds.get(keyword)  # converted by pydicom: a damaged value is an error here
        except Exception as exc:  # noqa: BLE001 - the same mapping as read_header's
            raise UnreadableFileError(
                f"DICOM header is damaged or truncated ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
                path=path,
                fix="re-export or re-transfer the file",
            ) from exc
        return path, ds, facts, None
    except CalcdetectError as exc:
        return path, None, {}, exc


def _workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1) * 2))


def _scan_workers() -> int:
    # parsing a header holds the GIL: more threads than cores only fight over it
    # (8 threads scanned a 300-file series 1.3x slower than one on 2 cores)
    return max(1, min(4, os.cpu_count() or 1))


def scan_folder(folder: str | Path) -> tuple[dict[str, list[tuple[Path, Dataset]]], list[CalcdetectError]]:
    """Read the headers of every DICOM file below ``folder`` (in parallel), grouped by
    SeriesInstanceUID.  Files that are not DICOM are skipped; damaged DICOMs are
    returned as errors.

    Hidden files (names starting with ``.``) are skipped.  Headers are read without
    pixel data and converted lazily (``touch_values=False``), except the elements a
    series load uses, so a damaged one of those makes the file an error.

    Parameters
    ----------
    folder : str or Path
        Searched recursively.

    Returns
    -------
    series : dict
        Series key (see :func:`series_key`) -> list of ``(path, header)``, files in
        sorted path order.
    errors : list of CalcdetectError
        One per file that could not be read, except those rejected as "not a DICOM
        file" (which are skipped); empty (0-byte) files are listed here.
    """
    series, errors, _ = _scan_folder(folder)
    return series, errors


def _scan_folder(folder: str | Path, on_first: Callable[[dict[str, Any], int], None] | None = None,
                 quick: bool = False) -> tuple[
        dict[str, list[tuple[Path, Dataset]]], list[CalcdetectError], dict[str, dict[str, Any]]]:
    """:func:`scan_folder`, plus each file's fast values (see :func:`_scan_one`) by
    ``str(path)``.  ``on_first(fast values, number of files)`` is called once, with the
    first header read without error (by whichever reader thread reads it), while the
    others are still being read."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    errors: list[CalcdetectError] = []
    facts: dict[str, dict[str, Any]] = {}
    scanned: list[Any] = [None] * len(files)
    first = [on_first]
    lock = threading.Lock()

    def scan(i: int) -> None:
        scanned[i] = result = _scan_one(files[i], quick)
        if first[0] is not None and result[3] is None:
            with lock:
                call, first[0] = first[0], None
            if call is not None:
                call(result[2], len(files))

    _parallel_each(scan, len(files), _scan_workers())
    for path, ds, values, err in scanned:
        if err is not None:
            if "not a DICOM file" not in err.reason:
                errors.append(err)
            continue
        series[series_key(ds, values)].append((path, ds))
        facts[str(path)] = values
    return dict(series), errors, facts


class _Prefault:
    """A float32 volume whose memory pages a background thread touches while the
    headers are still being parsed (which holds the GIL and one core): the kernel's
    page faults and zeroing (about a third of a series load's CPU time on this VM)
    then cost no wall time.

    The touching stops when the volume is taken: the reader threads fault the pages
    still untouched as they fill them.  Waiting for the whole volume instead cost up
    to 0.3 s on a busy machine, where this thread gets little CPU and needs the GIL
    between chunks."""

    _CHUNK = 1 << 21  # elements (8 MB) touched between checks of ``stop``

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.array: np.ndarray | None = np.empty(shape, np.float32)
        self.stop = False
        self.thread = threading.Thread(target=self._touch, args=(self.array,), daemon=True)
        self.thread.start()

    def _touch(self, array: np.ndarray) -> None:
        flat = array.reshape(-1)
        step = max(1, mmap.PAGESIZE // flat.itemsize)  # one write per page
        for start in range(0, flat.size, self._CHUNK):
            if self.stop:
                return
            flat[start:start + self._CHUNK:step] = 0  # numpy releases the GIL here

    def take(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """The volume when it has this shape (every slice is then overwritten), else
        ``None``; the background thread has stopped either way (after the chunk it is
        touching)."""
        array, self.array = self.array, None
        self.stop = True
        self.thread.join()
        if array is None or array.shape != tuple(shape):
            return None
        return array


NO_UID = "<no SeriesInstanceUID>"


def series_key(ds: Dataset, facts: dict[str, Any] | None = None) -> str:
    """SeriesInstanceUID; for anonymised files without one, a key from the fields that
    stay constant within a series (modality, number, description, frame of reference,
    matrix size).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A header.
    facts : dict, optional
        The header's :func:`~calcdetect.io.dicom.fast_values`; its SeriesInstanceUID is
        used first when present.

    Returns
    -------
    str
        The SeriesInstanceUID, else ``"<no SeriesInstanceUID> "`` followed by Modality,
        SeriesNumber, SeriesDescription, FrameOfReferenceUID, Rows and Columns joined
        by ``/``.
    """
    uid = str(facts["SeriesInstanceUID"]) if facts and "SeriesInstanceUID" in facts else ""
    uid = uid or str(ds.get("SeriesInstanceUID", "") or "")
    if uid:
        return uid
    parts = [str(ds.get(k, "") or "") for k in ("Modality", "SeriesNumber", "SeriesDescription",
                                                 "FrameOfReferenceUID", "Rows", "Columns")]
    return f"{NO_UID} " + "/".join(parts)


def describe_series(series: dict[str, list[tuple[Path, Dataset]]], limit: int = 5) -> str:
    """Series listing for messages: UID, modality, description, number of files.

    Parameters
    ----------
    series : dict
        Series key -> list of ``(path, header)``, as :func:`scan_folder` returns it.
    limit : int
        Most series listed; the rest are counted ("and N more").

    Returns
    -------
    str
        ``"<uid> (<modality>, <description>, <n> files); ..."``, from the first header
        of each series.
    """
    parts = []
    for uid, items in list(series.items())[:limit]:
        ds = items[0][1]
        parts.append(
            f"{uid} ({ds.get('Modality', '?')}, {str(ds.get('SeriesDescription', '') or 'no description')}, "
            f"{len(items)} files)"
        )
    if len(series) > limit:
        parts.append(f"and {len(series) - limit} more")
    return "; ".join(parts)


def load_ct_series(
    folder: str | Path,
    *,
    series_uid: str | None = None,
    budget: int | None = None,
    files: list[tuple[Path, Dataset]] | None = None,
) -> Image:
    """Load a folder holding one CT series as a 3D volume (or a 2D image for one slice).

    Parameters
    ----------
    folder : path
        Folder searched recursively for DICOM files.
    series_uid : str, optional
        Which series to load when the folder holds several.
    budget : int, optional
        Pixel budget (see :func:`calcdetect.io.dicom.max_pixels`).
    files : list, optional
        Already scanned ``(path, header)`` pairs of one series (skips the scan).

    Returns
    -------
    Image
        Slices ordered by ascending position along the slice normal; ``spacing_mm`` is
        ``(slice step from positions, row spacing, column spacing)``.
    """
    prefault: list[_Prefault] = []
    try:
        with GC_PAUSED.held():  # ~20 000 short-lived container objects, ~29 collections a load
            return _load_ct_series(folder, series_uid, budget, files, prefault)
    finally:
        for p in prefault:
            p.take(())


def _load_ct_series(folder, series_uid, budget, files, prefault: list[_Prefault]) -> Image:
    folder = Path(folder)
    warns: list[str] = []
    facts: dict[str, dict[str, Any]] = {}

    def start_prefault(values: dict[str, Any], n_files: int) -> None:
        # a folder expected to hold one series (no series_uid) of slices the size of the
        # first one, within the pixel budget; the volume is used only if that holds
        rows, cols = values.get("Rows"), values.get("Columns")
        if series_uid is None and isinstance(rows, int) and isinstance(cols, int) and n_files > 1 \
                and 0 < rows * cols * n_files <= max_pixels(budget):
            prefault.append(_Prefault((n_files, rows, cols)))

    scanned = files is None
    if files is None:
        # partial headers (the elements a load reads); the first is re-read in full below
        series, errors, facts = _scan_folder(folder, start_prefault, quick=True)
        series = {uid: items for uid, items in series.items() if _is_image(items[0][1])}
        if not series:
            detail = f" ({errors[0].message})" if errors else ""
            raise UnreadableFileError(
                f"holds no readable DICOM image series{detail}", path=folder,
                fix="point at a folder of DICOM slices, or a single file",
            )
        if series_uid is not None:
            if series_uid not in series:
                raise InconsistentSeriesError(
                    f"series {series_uid} is not in this folder; it holds: {describe_series(series)}",
                    path=folder,
                )
            files = series[series_uid]
        elif len(series) > 1:
            raise InconsistentSeriesError(
                f"holds {len(series)} series: {describe_series(series)}",
                path=folder,
                fix="pass series_uid= (CLI: --series UID) or a folder with one series",
            )
        else:
            files = next(iter(series.values()))
        for err in errors:
            warns.append(f"skipped unreadable file {err.message}")
        key = next(k for k, v in series.items() if v is files)
        if key.startswith(NO_UID):
            warns.append("the files carry no SeriesInstanceUID; they were grouped by modality, series "
                         "number, description, frame of reference and matrix size")
    modality = str(files[0][1].get("Modality", "")).upper()
    if len(files) == 1:
        path, _ = files[0]
        image = load_ct_file(path, budget=budget) if modality == "CT" else None
        if image is None:
            from . import load

            image = load(path)
        image.warnings[:0] = warns
        return image
    if modality != "CT":
        raise InconsistentSeriesError(
            f"multi-file series are supported for CT; this series is {modality or 'of unknown modality'}",
            path=folder,
            fix="load the files one by one, or use `calcdetect annotate` on the folder",
        )
    first = files[0][1]
    rows, cols = int(first.get("Rows") or 0), int(first.get("Columns") or 0)
    check_budget(rows * cols * len(files), folder, budget)
    for p, ds in files:
        if str(p) not in facts:  # files given by the caller
            facts[str(p)] = fast_values(ds, _SCAN_KEYWORDS)

    def value(path: Path, ds: Dataset, keyword: str) -> Any:
        known = facts[str(path)]
        return known[keyword] if keyword in known else dicom_value(ds, keyword)

    slices = [
        _Slice(
            path=str(p),
            position=floats_of(value(p, ds, "ImagePositionPatient"), 3),
            orientation=floats_of(value(p, ds, "ImageOrientationPatient"), 6),
            spacing=positive_spacing(floats_of(value(p, ds, "PixelSpacing"), 2)),
            instance=_known(facts[str(p)], ds, "InstanceNumber"),
            sop=str(_known(facts[str(p)], ds, "SOPInstanceUID", "")),
            lossy=str(value(p, ds, "LossyImageCompression") or "").strip() == "01",
        )
        for p, ds in files
    ]
    _, geometry, geo_warns = _assemble(slices, None, str(folder))
    ordered: list[_Slice] = geometry["ordered"]
    if len(ordered) == 1:
        # copies of one slice: a slice, not a volume (it has no slice spacing to measure
        # volumes with)
        image = load_ct_file(ordered[0].path, budget=budget)
        image.warnings[:0] = warns + geo_warns
        return image

    headers = {str(p): ds for p, ds in files}
    shape = (rows, cols)
    # one float32 volume, filled in place by the reader threads: no per-slice float
    # copies and no np.stack of them (which doubled the peak memory and the time)
    volume = prefault[0].take((len(ordered), rows, cols)) if prefault else None
    if volume is None:
        volume = np.empty((len(ordered), rows, cols), np.float32)

    local = threading.local()  # one pixel buffer per reader thread, reused slice after slice

    def read_plane(i: int) -> None:
        s = ordered[i]
        header, known = headers[s.path], facts[s.path]
        layout = _raw_layout(header, known)
        pixels = None
        if layout is not None and layout[:2] == shape:  # uncompressed: the pixel bytes only
            buffers = local.__dict__.setdefault("buffers", {})
            pixels = _read_raw(s.path, layout, buffers)
        if pixels is None:
            ds = read_dataset(s.path, budget=budget)
            pixels = decode_pixels(ds, s.path)
            slope, intercept = _rescale(ds, s.path)
        else:
            slope, intercept = _known_rescale(header, known, s.path)
        if pixels.ndim != 2:
            raise UnreadableFileError("is not a single-frame slice", path=s.path)
        if pixels.shape != shape:
            raise InconsistentSeriesError(f"slices differ in size: {sorted({shape, pixels.shape})}", path=folder)
        # the same float32 values as ct_slice_from_dataset (stored values are exact in
        # float32, then one float32 multiply and one float32 add), one pass per step
        out = volume[i]
        if slope != 1:
            np.multiply(pixels, np.float32(slope), out=out)
            if intercept != 0:
                out += np.float32(intercept)
        elif intercept != 0:
            np.add(pixels, np.float32(intercept), out=out)
        else:
            out[...] = pixels
        if not _finite_hu(pixels.dtype, slope, intercept) and not np.isfinite(out).all():
            nonfinite.append(i)  # the Image warns and fills them, reading the whole volume

    nonfinite: list[int] = []
    _parallel_each(read_plane, len(ordered), _workers())
    # metadata from the first slice kept (a dropped duplicate may be a lossy copy); when
    # the scan kept only some elements, from its whole header
    head = (read_header(ordered[0].path, stop_before_pixels=True, touch_values=False) if scanned
            else headers[ordered[0].path])
    meta = basic_metadata(head)
    if any(s.lossy for s in ordered):
        meta["LossyImageCompression"] = "01"  # some kept slice went through lossy compression
    meta["SOPInstanceUIDs"] = [s.sop for s in ordered]
    meta["files"] = [s.path for s in ordered]
    # every slice finite (almost always known without reading it): no second pass
    with known_finite(volume if not nonfinite else None):
        return Image(
            pixels=volume,
            spacing_mm=geometry["spacing"],
            modality="CT",
            affine=geometry["affine"],
            source=str(folder),
            metadata=meta,
            warnings=warns + geo_warns,
            spacing_source=geometry["spacing_source"],
            geometry=_step_only(geometry),
        )


def _finite_hu(dtype: np.dtype, slope: float, intercept: float) -> bool:
    """True when every stored value of this integer ``dtype`` gives a finite float32
    ``value * slope + intercept`` (``slope`` and ``intercept`` finite, as
    :func:`_rescale` guarantees): the largest magnitude stays far below float32's
    3.4e38 even after rounding.  ``False`` for floats and for rescales that might
    overflow: the caller then looks at the values."""
    if dtype.kind not in "iu":
        return False
    info = np.iinfo(dtype)
    return abs(slope) * max(-int(info.min), int(info.max)) + abs(intercept) < 1e38


_UNCOMPRESSED_LE = {"1.2.840.10008.1.2": False, "1.2.840.10008.1.2.1": True}  # UID -> explicit VR


def _known(known: dict[str, Any], ds: Dataset, keyword: str, default: Any = None) -> Any:
    """The fast value of ``keyword`` if there is one, else pydicom's ``ds.get``."""
    return known[keyword] if keyword in known else ds.get(keyword, default)


def _known_rescale(ds: Dataset, known: dict[str, Any], path: str) -> tuple[float, float]:
    """:func:`_rescale` from the fast values where they hold the answer."""
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        if isinstance(known.get(keyword), float):
            values.append(known[keyword])
        elif keyword not in ds:
            values.append(default)
        else:  # empty, unusual or several values: pydicom's reading and message
            return _rescale(ds, path)
    if values[0] == 0:  # refused: let _rescale say so with the header's own spelling
        return _rescale(ds, path)
    return values[0], values[1]


def _raw_layout(ds: Dataset, known: dict[str, Any] | None = None) -> tuple[int, int, int, bool, bool] | None:
    """``(rows, columns, BitsStored, signed, explicit VR)`` when ``ds`` is an uncompressed
    little-endian single-frame 16-bit greyscale slice whose pixels :func:`_read_raw` can
    read straight from the file, else ``None`` (the caller then decodes with pydicom).
    ``known``: the header's fast values, used instead of pydicom's where present."""
    known = known or {}

    def get(keyword: str, required: bool = False) -> Any:
        if keyword in known:
            return known[keyword]
        return getattr(ds, keyword) if required else ds.get(keyword)

    try:
        ts = str(ds.file_meta.TransferSyntaxUID)
        if ts not in _UNCOMPRESSED_LE:
            return None
        rows, cols = int(get("Rows", True)), int(get("Columns", True))
        bits = int(get("BitsAllocated", True))
        stored = int(get("BitsStored") or bits)
        signed = int(get("PixelRepresentation", True)) == 1
        if bits != 16 or not 1 <= stored <= 16 or int(get("SamplesPerPixel") or 1) != 1:
            return None
        if int(get("NumberOfFrames") or 1) != 1 or rows <= 0 or cols <= 0:
            return None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return rows, cols, stored, signed, _UNCOMPRESSED_LE[ts]


def _read_raw(path: str, layout: tuple[int, int, int, bool, bool],
              buffers: dict | None = None) -> np.ndarray | None:
    """The stored pixels of a slice with this :func:`_raw_layout`, read straight from the
    end of the file (where its top-level PixelData lies), masked to BitsStored as pydicom
    does.  ``None`` whenever anything is unusual (trailing elements, wrong length).
    ``buffers``: arrays to reuse (by shape and type) instead of allocating one per slice;
    the result is then only valid until the next call with the same ``buffers``."""
    rows, cols, stored, signed, explicit = layout
    nbytes = rows * cols * 2
    dtype = np.dtype("<i2" if signed else "<u2")
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            offset = fh.tell() - nbytes
            head = 12 if explicit else 8
            if offset < 132 + head:
                return None
            fh.seek(offset - head)
            tag = fh.read(head)
            length = int.from_bytes(tag[-4:], "little")
            if tag[:4] != b"\xe0\x7f\x10\x00" or length != nbytes:
                return None
            if head == 12 and tag[4:8] not in (b"OW\x00\x00", b"OB\x00\x00"):
                return None
            if buffers is None:
                pixels = np.empty((rows, cols), dtype)
            else:
                pixels = buffers.get((rows, cols, dtype.str))
                if pixels is None:
                    pixels = buffers[(rows, cols, dtype.str)] = np.empty((rows, cols), dtype)
            if fh.readinto(memoryview(pixels).cast("B")) != nbytes:
                return None
    except (OSError, ValueError):
        return None
    if stored < 16:
        shift = 16 - stored
        if signed:
            pixels <<= shift
            pixels >>= shift  # sign-extend from BitsStored
        else:
            pixels &= np.uint16((1 << stored) - 1)
    return pixels


def _raw_pixels(path: str, ds: Dataset) -> np.ndarray | None:
    """The stored pixels of an uncompressed little-endian single-frame 16-bit slice (see
    :func:`_raw_layout` and :func:`_read_raw`), or ``None``: decode with pydicom."""
    layout = _raw_layout(ds)
    return None if layout is None else _read_raw(path, layout)


def _is_image(ds: Dataset) -> bool:
    return "Rows" in ds and "Columns" in ds
