"""Results back into the hospital: DICOM SR measurement reports and DICOM SEG.

Two standard objects are written next to (never over) the source images, in the source's
study, each in a new series:

* :func:`write_seg` -- a binary DICOM Segmentation (``SEG``) of the calcifications, one
  segment per finding (segment number == finding id), aligned frame by frame with the
  source slices (single image, enhanced multi-frame CT or a CT series).
* :func:`write_sr` -- a Comprehensive 3D SR "Imaging Measurement Report" (TID 1500) with
  one measurement group per finding (TID 1410 planar ROI for a 2D image, TID 1411
  volumetric ROI for a volume) holding its tracking identifier and UID, the finding
  "Pathologic calcification", its finding site and its measurements with UCUM units,
  plus one image-level group (TID 1501) with the count and, on CT, the calcium scores.

The SR values are the JSON report's values (``Finding.to_dict()``, rounded the same way),
so the two outputs agree exactly.  A finding's SEG segment and SR group share one tracking
UID.  The codes and their reasons are listed in ``docs/dicom-outputs.md``.

Everything here needs the optional ``highdicom`` package
(``pip install 'calcdetect[dicom-out]'``); without it each function raises a
:class:`~calcdetect.errors.CalcdetectError` saying so.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from .errors import CalcdetectError, InconsistentSeriesError, InvalidParameterError, UnsupportedImageError
from .image import USER_SPACING, Image
from .outputs import write_bytes_atomic
from .report import Finding, Report

if TYPE_CHECKING:  # pragma: no cover
    from types import ModuleType

    import highdicom

__all__ = [
    "source_datasets",
    "build_seg",
    "build_sr",
    "write_seg",
    "write_sr",
    "write_dicom_outputs",
    "write_dataset",
    "EXTRA_HINT",
    "require_highdicom",
]

#: What to install for DICOM outputs.
EXTRA_HINT = "pip install 'calcdetect[dicom-out]'"

#: Series numbers of the new series (fixed, so a PACS lists them after the source).
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902

#: Local coding scheme for the one concept DICOM has no code for.
LOCAL_SCHEME = "99CALCDETECT"

# Type 2 patient/study attributes highdicom copies from the source; anonymised files
# often lack them, and an absent type 2 attribute is written as empty.
_TYPE2_STUDY_ATTRS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


def require_highdicom() -> ModuleType:
    """Import and return highdicom, or raise a one-line error naming the extra.

    Returns
    -------
    module
        The ``highdicom`` module.

    Raises
    ------
    CalcdetectError
        When highdicom is not installed; the message names ``calcdetect[dicom-out]``.
    """
    try:
        import highdicom as hd
    except ImportError as exc:
        raise CalcdetectError(
            "DICOM SR/SEG outputs need the highdicom package, which is not installed",
            fix=EXTRA_HINT,
        ) from exc
    return hd


# ------------------------------------------------------------------------- codes
#: The coded concepts used in SR and SEG, as (value, scheme, meaning); the reasons for
#: each choice are in docs/dicom-outputs.md.
CODES: dict[str, tuple[str, str, str]] = {
    # finding and segment
    "calcification": ("18115005", "SCT", "Pathologic calcification"),
    "abnormal_structure": ("49755003", "SCT", "Morphologically abnormal structure"),
    # finding sites
    "skin": ("39937001", "SCT", "Skin"),
    "subcutaneous": ("71966008", "SCT", "Subcutaneous tissue"),
    "entire_body": ("38266002", "SCT", "Entire body"),
    "deep": ("795002", "SCT", "Deep"),
    "left": ("7771000", "SCT", "Left"),
    "right": ("24028007", "SCT", "Right"),
    # measurement names
    "long_axis": ("103339001", "SCT", "Long axis"),
    "short_axis": ("103340004", "SCT", "Short axis"),
    "diameter": ("81827009", "SCT", "Diameter"),
    "area": ("42798000", "SCT", "Area"),
    "volume": ("118565006", "SCT", "Volume"),
    "max_hu": ("112180", "DCM", "Maximum Attenuation Coefficient"),
    "mean_hu": ("112181", "DCM", "Mean Attenuation Coefficient"),
    "distance_from_skin": ("121243", "DCM", "Distance from skin"),
    "calcium_score": ("112058", "DCM", "Calcium score"),
    "calcium_volume": ("122660", "DCM", "Calcium Volume"),
    "calcium_mass": ("122661", "DCM", "Calcium Mass"),
    "count": ("111038", "DCM", "Number of calcifications"),
    # modifiers and methods
    "maximum": ("56851009", "SCT", "Maximum"),
    "agatston": ("112055", "DCM", "Agatston scoring method"),
    "equivalent_diameter": ("EQUIV-DIAM", LOCAL_SCHEME, "Equivalent diameter (circle/sphere of equal size)"),
    # units (UCUM)
    "mm": ("mm", "UCUM", "millimeter"),
    "mm2": ("mm2", "UCUM", "square millimeter"),
    "mm3": ("mm3", "UCUM", "cubic millimeter"),
    "mg": ("mg", "UCUM", "milligram"),
    "hu": ("[hnsf'U]", "UCUM", "Hounsfield unit"),
    "no_units": ("1", "UCUM", "no units"),
    # procedures reported (CID 100 / 10005)
    "proc_CT": ("77477000", "SCT", "Computed tomography"),
    "proc_XRAY": ("168537006", "SCT", "Plain radiography"),
    "proc_US": ("16310003", "SCT", "Diagnostic ultrasonography"),
    "device": ("121007", "DCM", "Device"),
}


class _Codes:
    """``CODES`` as highdicom ``CodedConcept`` objects, a new one per use (a dataset
    must not sit in two places of one content tree)."""

    def __init__(self) -> None:
        self._concept = require_highdicom().sr.CodedConcept

    def __getitem__(self, key: str):
        value, scheme, meaning = CODES[key]
        return self._concept(value, scheme, meaning)

    def get(self, key: str | None, default=None):
        return self[key] if key in CODES else default


def _codes() -> _Codes:
    """Accessor of the coded concepts (raises the install hint without highdicom)."""
    return _Codes()


# ------------------------------------------------------------------- sources
def require_dicom_source(image: Image) -> None:
    """Refuse, before any work, an image that was not loaded from DICOM.

    Parameters
    ----------
    image : Image

    Raises
    ------
    UnsupportedImageError
        When the image comes from an array, a PNG/JPEG/TIFF file or a NIfTI volume.
    """
    from .io.nifti import is_nifti
    from .io.raster import RASTER_SUFFIXES

    if image.metadata.get("files"):
        return
    src = Path(str(image.source))
    if not src.is_file() or src.suffix.lower() in RASTER_SUFFIXES or is_nifti(src):
        raise UnsupportedImageError(
            "DICOM outputs need the DICOM file(s) the image was loaded from, and this "
            "image has none",
            path=image.source,
            fix="load the image from a DICOM file or series folder, or drop --dicom-sr/--dicom-seg",
        )


def source_datasets(
    image: Image, *, with_pixels: bool = False, notes: list[str] | None = None
) -> list[Dataset]:
    """Re-read the DICOM file(s) an image was loaded from.

    Parameters
    ----------
    image : Image
        An image loaded by :func:`calcdetect.load` from a DICOM file or series folder.
        Its ``metadata["files"]`` (in slice order) is used when present, else
        ``image.source`` when that is a file.
    with_pixels : bool
        Also read the pixel data (not needed for SR or SEG: headers suffice).
    notes : list of str, optional
        Messages for the user are appended here (and issued as ``UserWarning``): e.g.
        that an anonymised source without Study/Series Instance UID got derived ones.
        Empty SOP Class/Instance UIDs are taken from the file meta information.

    Returns
    -------
    list of pydicom.Dataset
        One dataset per file, in the image's slice order.

    Raises
    ------
    UnsupportedImageError
        When the image has no DICOM source (an array, a PNG/JPEG/TIFF file).
    InconsistentSeriesError
        When the files changed since the image was loaded (other SOP Instance UIDs).
    """
    from .io.dicom import read_header

    require_dicom_source(image)
    files = image.metadata.get("files") or [Path(str(image.source))]
    datasets = [read_header(f, stop_before_pixels=not with_pixels) for f in files]
    expected = image.metadata.get("SOPInstanceUIDs")
    if expected and len(expected) == len(datasets):
        found = [str(ds.get("SOPInstanceUID", "") or "") for ds in datasets]
        if found != [str(u or "") for u in expected]:
            raise InconsistentSeriesError(
                "the source files changed since the image was loaded (other SOP Instance UIDs)",
                path=image.source,
                fix="load the image again and rerun detection",
            )
    datasets, note = _repair_uids(datasets, [Path(f) for f in files])
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
        if notes is not None:
            notes.append(note)
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(studies) > 1:
        raise InconsistentSeriesError(
            f"the source files belong to {len(studies)} studies", path=image.source,
            fix="load one series of one study",
        )
    return datasets


def _uid(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _repair_uids(datasets: list[Dataset], files: list[Path]) -> tuple[list[Dataset], str | None]:
    """Give anonymised headers the UIDs SR and SEG must reference.

    Empty SOP Class/Instance UIDs come from the file meta information (which names the
    same instance).  An empty Study or Series Instance UID cannot be recovered: one is
    derived deterministically from the source instances (so the SR and the SEG of one
    source agree, run after run) and the returned note says that a PACS will not match
    the outputs to the source study.  The caller's files are never changed.
    """
    from pydicom.uid import generate_uid

    out = []
    for ds, path in zip(datasets, files):
        meta = getattr(ds, "file_meta", None) or Dataset()
        fixes = {}
        if not _uid(ds, "SOPClassUID") and _uid(meta, "MediaStorageSOPClassUID"):
            fixes["SOPClassUID"] = _uid(meta, "MediaStorageSOPClassUID")
        if not _uid(ds, "SOPInstanceUID"):
            fixes["SOPInstanceUID"] = _uid(meta, "MediaStorageSOPInstanceUID") or generate_uid(
                entropy_srcs=["calcdetect-instance", str(path.resolve())])
        if fixes:
            ds = Dataset(ds)
            for key, value in fixes.items():
                setattr(ds, key, value)
        if not _uid(ds, "SOPClassUID"):
            raise UnsupportedImageError("the source file has no SOP Class UID", path=path,
                                        fix="repair the header")
        out.append(ds)
    instances = sorted(_uid(ds, "SOPInstanceUID") for ds in out)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if any(not _uid(ds, k) for ds in out)]
    for key in missing:
        value = generate_uid(entropy_srcs=[f"calcdetect-{key}"] + instances)
        out = [Dataset(ds) if not _uid(ds, key) else ds for ds in out]
        for ds in out:
            if not _uid(ds, key):
                setattr(ds, key, value)
    note = None
    if missing:
        note = (f"{files[0].parent if len(files) > 1 else files[0]}: the source has no "
                f"{' or '.join(missing)} (anonymised?); the DICOM outputs use one derived from "
                "the source instances, so a PACS will not file them with the source study")
    return out, note


def _evidence(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source headers with absent type 2 patient/study attributes present
    (empty), as highdicom copies them into the new objects."""
    out = []
    for ds in datasets:
        missing = [k for k in _TYPE2_STUDY_ATTRS if k not in ds]
        if missing:
            ds = Dataset(ds)  # shallow copy: the caller's dataset is left as it was
            for key in missing:
                setattr(ds, key, None)
        out.append(ds)
    return out


def _n_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _slice_sources(image: Image, datasets: Sequence[Dataset]) -> list[tuple[Dataset, int | None]]:
    """For each slice ``z`` of the image (one for a 2D image): the source dataset and,
    for a multi-frame source, its 1-based frame number."""
    n = image.shape[0] if image.ndim == 3 else 1
    if len(datasets) == n and all(_n_frames(ds) == 1 for ds in datasets):
        return [(ds, None) for ds in datasets]
    if len(datasets) == 1 and _n_frames(datasets[0]) > 1:
        ds = datasets[0]
        if image.ndim == 3:
            order = image.metadata.get("frame_order") or list(range(n))
            if len(order) != n:
                raise UnsupportedImageError(
                    f"the image has {n} slices but the frame order lists {len(order)}",
                    path=image.source,
                )
            return [(ds, int(f) + 1) for f in order]
        frame = image.metadata.get("frame_index", image.metadata.get("frame"))
        if isinstance(frame, (int, np.integer)) and 0 <= int(frame) < _n_frames(ds):
            return [(ds, int(frame) + 1)]
        raise UnsupportedImageError(
            f"the source has {_n_frames(ds)} frames and the image does not say which one was "
            "analysed, so results cannot be placed on it",
            path=image.source,
            fix="analyse one frame (CLI: --frames N)",
        )
    raise UnsupportedImageError(
        f"the image has {n} slice(s) but {len(datasets)} source file(s) were found",
        path=image.source,
        fix="load the image again and rerun detection",
    )


def _check_labels(report: Report, image: Image) -> np.ndarray:
    labels = report.labels
    if labels is None:
        raise CalcdetectError(
            "the report carries no label image (reports read back from JSON have none)",
            path=report.source,
            fix="run calcdetect.detect on the image and pass that report",
        )
    labels = np.asarray(labels)
    if labels.shape != image.shape:
        raise CalcdetectError(
            f"the report's label image {labels.shape} does not match the image {image.shape}",
            path=report.source,
            fix="pass the image the report was computed from",
        )
    ids = [f.id for f in report.findings]
    if ids != list(range(1, len(ids) + 1)):
        raise CalcdetectError(
            "finding ids are not 1..n, so they cannot be segment numbers", path=report.source
        )
    if labels.size and int(labels.max()) > len(ids):
        raise CalcdetectError(
            f"the label image holds label {int(labels.max())} but the report has {len(ids)} findings",
            path=report.source,
        )
    return labels


def _algorithm(report: Report):
    """highdicom SR algorithm identification (name, version, main parameters)."""
    from . import __version__

    hd = require_highdicom()
    params = []
    for key in ("region", "threshold_hu", "min_area_mm2", "size_method"):
        if key in report.parameters and report.parameters[key] is not None:
            params.append(f"{key}={report.parameters[key]}")
    return hd.sr.AlgorithmIdentification(name="calcdetect", version=__version__,
                                         parameters=params or None)


def _tracking_id(f: Finding) -> str:
    return f"Calcification {f.id}"


# ------------------------------------------------------------------------ SEG
def build_seg(
    report: Report,
    image: Image,
    source_datasets: Sequence[Dataset],
    *,
    tracking_uids: dict[int, str] | None = None,
) -> "highdicom.seg.Segmentation | None":
    """Build the DICOM Segmentation of a report's findings (in memory).

    One segment per finding: segment number ``i`` is finding ``id == i``, labelled
    "Calcification i", property "Pathologic calcification" (SCT 18115005) in category
    "Morphologically abnormal structure" (SCT 49755003), with the finding's tracking
    identifier and UID.  Frames are aligned with the source slices; empty frames are
    omitted.

    Parameters
    ----------
    report : Report
        A report from :func:`calcdetect.detect` (with its ``labels``).
    image : Image
        The image the report was computed from.
    source_datasets : sequence of pydicom.Dataset
        The source headers in slice order (:func:`source_datasets`).
    tracking_uids : dict, optional
        Finding id -> tracking UID; new UIDs are made for the others.

    Returns
    -------
    highdicom.seg.Segmentation or None
        ``None`` when the report has no findings: a SEG must hold at least one segment
        with at least one frame, and an empty segment would only say "nothing" -- which
        the SR (count 0) already says.

    Raises
    ------
    CalcdetectError
        highdicom is not installed (:func:`require_highdicom`), or the report does not
        fit the image: no label image (a report read back from JSON), a label image of
        another shape, finding ids not ``1..n``, or labels above the finding count.
    UnsupportedImageError
        The source datasets do not match the image (other slice or file count, a
        multi-frame source without a recorded frame, other Rows x Columns), or a
        multi-frame source without a Frame of Reference (a cine loop).
    """
    from . import __version__

    hd = require_highdicom()
    labels = _check_labels(report, image)
    if report.count == 0:
        return None
    slices = _slice_sources(image, source_datasets)
    labels3 = labels if image.ndim == 3 else labels[None]
    rows, cols = labels3.shape[1:]
    for ds, _ in slices[:1]:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise UnsupportedImageError(
                f"the image is {rows} x {cols} but the source file is {ds.Rows} x {ds.Columns}, "
                "so a segmentation cannot be aligned with it",
                path=image.source,
            )
    dtype = np.uint8 if report.count < 256 else np.uint16
    if slices[0][1] is None:  # single-frame source(s): one array plane per file
        sources = [ds for ds, _ in slices]
        pixel_array = labels3.astype(dtype) if image.ndim == 3 else labels.astype(dtype)
    else:  # one multi-frame source: plane i must be source frame i + 1
        src = slices[0][0]
        if "FrameOfReferenceUID" not in src:
            raise UnsupportedImageError(
                "a segmentation of a multi-frame image without a Frame of Reference (a cine "
                "loop) cannot be written (highdicom supports a single frame only there)",
                path=image.source,
                fix="use the SR output (--dicom-sr), which references the analysed frame",
            )
        sources = [src]
        pixel_array = np.zeros((_n_frames(src), rows, cols), dtype=dtype)
        for z, (_, frame) in enumerate(slices):
            pixel_array[frame - 1] = labels3[z]
    code = _codes()
    # CID 7162: thresholding (CT) is histogram analysis; local-contrast detection
    # (radiograph, ultrasound) is neighbourhood analysis
    family = hd.sr.CodedConcept("123105", "DCM", "Histogram Analysis") \
        if report.modality == "CT" else hd.sr.CodedConcept("123101", "DCM", "Neighborhood Analysis")
    algo = hd.AlgorithmIdentificationSequence(name="calcdetect", family=family, version=__version__)
    tracking_uids = dict(tracking_uids or {})
    descriptions = []
    for f in report.findings:
        uid = tracking_uids.setdefault(f.id, str(hd.UID()))
        site = _site_location(f)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=f.id,
            segment_label=_tracking_id(f),
            segmented_property_category=code["abnormal_structure"],
            segmented_property_type=code["calcification"],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=uid,
            tracking_id=_tracking_id(f),
            anatomic_regions=[site] if site is not None else None,
        ))
    ev = _evidence(sources)
    seg = hd.seg.Segmentation(
        source_images=ev,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="calcdetect",
        manufacturer_model_name="calcdetect",
        software_versions=str(__version__),
        device_serial_number="none",
        content_label="CALCIFICATIONS",
        content_description="Soft-tissue calcifications found by calcdetect",
        series_description="calcdetect calcifications (SEG)",
        omit_empty_frames=True,
    )
    _fix_projection_geometry(seg, sources[0], image)
    return seg


def _fix_projection_geometry(seg: Dataset, source: Dataset, image: Image) -> None:
    """SEGs of images without a frame of reference (radiographs, ultrasound): carry the
    source's Patient Orientation (type 2C there) and never a zero Pixel Spacing copied from
    a source that stores ``0\\0`` (the image's real spacing, when known, replaces it)."""
    if "FrameOfReferenceUID" in source:
        return
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation") or None
    shared = seg.get("SharedFunctionalGroupsSequence")
    if not shared or "PixelMeasuresSequence" not in shared[0]:
        return
    measures = shared[0].PixelMeasuresSequence[0]
    spacing = [float(v) for v in measures.get("PixelSpacing") or []]
    if len(spacing) == 2 and all(v > 0 for v in spacing):
        return
    if image.spacing_mm is not None and image.spacing_source != USER_SPACING:
        measures.PixelSpacing = [f"{v:.6g}" for v in image.spacing_mm[-2:]]
    else:
        del shared[0].PixelMeasuresSequence


# ------------------------------------------------------------------------- SR
def _site_location(f: Finding):
    code = _codes()
    region = f.region
    if region == "dermal":
        return code["skin"]
    if region == "subcutaneous":
        return code["subcutaneous"]
    return None


def _finding_sites(f: Finding) -> list:
    """Finding site from the region (dermal -> Skin, subcutaneous -> Subcutaneous tissue,
    deep -> Entire body + Deep) with the side as laterality."""
    hd = require_highdicom()
    code = _codes()
    location = _site_location(f)
    modifier = None
    if location is None and f.region == "deep":
        location, modifier = code["entire_body"], code["deep"]
    laterality = code[f.side] if f.side in ("left", "right") else None
    if location is None and laterality is not None:
        location = code["entire_body"]
    if location is None:
        return []
    return [hd.sr.FindingSite(anatomic_location=location, laterality=laterality,
                              topographical_modifier=modifier)]


def _measurements(f: Finding, modality: str, is_volume: bool) -> list:
    """TID 300 measurements of one finding, from its JSON values (nulls are left out)."""
    hd = require_highdicom()
    code = _codes()
    d = f.to_dict()
    out = []

    def add(key, name, unit, **kw):
        value = d.get(key)
        if value is None:
            return
        out.append(hd.sr.Measurement(name=name, value=float(value), unit=unit, **kw))

    add("long_axis_mm", code["long_axis"], code["mm"])
    add("short_axis_mm", code["short_axis"], code["mm"])
    add("equivalent_diameter_mm", code["diameter"], code["mm"], method=code["equivalent_diameter"])
    if is_volume:
        add("area_mm2", code["area"], code["mm2"], derivation=code["maximum"])
        add("volume_mm3", code["volume"], code["mm3"])
    else:
        add("area_mm2", code["area"], code["mm2"])
    add("depth_mm", code["distance_from_skin"], code["mm"])
    if modality == "CT":
        add("peak", code["max_hu"], code["hu"])
        add("mean", code["mean_hu"], code["hu"])
        add("agatston", code["calcium_score"], code["no_units"], method=code["agatston"])
        add("threshold_volume_mm3", code["calcium_volume"], code["mm3"])
        add("mass_mg", code["calcium_mass"], code["mg"])
    return out


def _contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (DICOM image coordinates: column, row; pixel centre at +0.5) of
    each 8-connected piece of a 2D mask, on the pixel edges."""
    from skimage.measure import find_contours

    from .measure import label

    pieces, n = label(mask2d[None])
    out = []
    for i in range(1, n + 1):
        piece = np.pad(pieces[0] == i, 1)
        contours = find_contours(piece.astype(np.float32), 0.5, fully_connected="high")
        if not contours:
            continue
        c = max(contours, key=len)  # the outer outline (holes are shorter)
        xy = np.stack([c[:, 1] - 1 + 0.5, c[:, 0] - 1 + 0.5], axis=1)
        if not np.allclose(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        out.append(xy.astype(np.float32))
    return out


def _bbox_outline(f: Finding, ndim: int) -> tuple[int, np.ndarray]:
    """Fallback outline: the finding's in-plane bounding box (and its first slice)."""
    b = f.bbox_px
    half = len(b) // 2
    lo, hi = b[:half], b[half:]
    r0, c0, r1, c1 = lo[-2], lo[-1], hi[-2], hi[-1]
    xy = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=np.float32)
    return (lo[0] if ndim == 3 else 0), xy


def _regions(f: Finding, labels3: np.ndarray, slices, ndim: int) -> list:
    """ImageRegion polylines of a finding on every slice it touches."""
    hd = require_highdicom()
    z_idx = np.flatnonzero((labels3 == f.id).any(axis=(1, 2)))
    regions = []
    for z in z_idx:
        ds, frame = slices[z]
        source = hd.sr.SourceImageForRegion.from_source_image(
            ds, referenced_frame_numbers=[frame] if frame is not None else None)
        for xy in _contours(labels3[z] == f.id):
            regions.append(hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                             graphic_data=xy, source_image=source))
    if not regions:  # the label image lost this finding: outline its bounding box
        z, xy = _bbox_outline(f, ndim)
        ds, frame = slices[z]
        source = hd.sr.SourceImageForRegion.from_source_image(
            ds, referenced_frame_numbers=[frame] if frame is not None else None)
        regions.append(hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                         graphic_data=xy, source_image=source))
    return regions


def _planar_group(f: Finding, labels2d: np.ndarray, source, seg: Dataset | None, common: dict):
    """TID 1410 group of a 2D finding.  Its region is its outline when the finding is one
    piece; a finding in several pieces (half-maximum sizing can split a thresholded focus)
    references its SEG segment when there is one, else the outline of its convex hull
    (TID 1410 holds a single region)."""
    from skimage.morphology import convex_hull_image

    hd = require_highdicom()
    mask = labels2d == f.id
    outlines = _contours(mask)
    ds, frame = source
    if len(outlines) > 1 and seg is not None:
        ref = _segmentation_frame_reference(seg, f.id, ds, frame)
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_segment=ref, **common)
    if len(outlines) > 1:
        outlines = _contours(convex_hull_image(mask))
    src = hd.sr.SourceImageForRegion.from_source_image(
        ds, referenced_frame_numbers=[frame] if frame is not None else None)
    if outlines:
        xy = outlines[0]
    else:  # the label image lost this finding: outline its bounding box
        _, xy = _bbox_outline(f, 2)
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=xy,
                               source_image=src)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)


def _segment_reference(seg: Dataset, segment: int, labels3: np.ndarray, slices):
    """TID 1411 "Referenced Segment" (121191) with the source images (and frames) the
    segment lies on, taken from the label image -- not from
    ``ReferencedSegment.from_segmentation``, which scans every SEG frame per segment
    (tens of seconds for hundreds of findings)."""
    hd = require_highdicom()
    frames_by_instance: dict[str, tuple[Dataset, list[int]]] = {}
    for z in np.flatnonzero((labels3 == segment).any(axis=(1, 2))):
        ds, frame = slices[int(z)]
        entry = frames_by_instance.setdefault(str(ds.SOPInstanceUID), (ds, []))
        if frame is not None:
            entry[1].append(frame)
    sources = [hd.sr.SourceImageForSegmentation.from_source_image(
        ds, referenced_frame_numbers=sorted(frames) or None) for ds, frames in frames_by_instance.values()]
    if not sources:  # the label image lost this finding: the SEG's source series
        return hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment,
            source_series=hd.sr.SourceSeriesForSegmentation(str(slices[0][0].SeriesInstanceUID)))
    return hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                                   segment_number=segment, source_images=sources)


def _segmentation_frame_reference(seg: Dataset, segment: int, source: Dataset, frame: int | None):
    """TID 1410 "Referenced Segmentation Frame" (121214): the SEG frame holding ``segment``
    on the 2D source image.

    Built by hand rather than with ``ReferencedSegmentationFrame.from_segmentation``,
    which (highdicom 0.28) writes Referenced Segment Number next to Referenced Frame
    Number (the Image SOP Instance Reference Macro allows one or the other; a SEG frame
    already belongs to one segment) and gives the single-frame source image the SEG's
    frame number; dciodvfy flags both.
    """
    hd = require_highdicom()
    seg_frames = [
        j + 1 for j, item in enumerate(seg.PerFrameFunctionalGroupsSequence)
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == segment
    ]
    if not seg_frames:
        raise CalcdetectError(f"the SEG holds no frame of segment {segment}")
    ref = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=seg_frames[0],
        segment_number=segment,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(
            source, referenced_frame_numbers=[frame] if frame is not None else None),
    )
    del ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return ref


def _seg_tracking_uids(seg: Dataset) -> dict[int, str]:
    out = {}
    for item in seg.get("SegmentSequence", []):
        uid = item.get("TrackingUID")
        if uid:
            out[int(item.SegmentNumber)] = str(uid)
    return out


def build_sr(
    report: Report,
    image: Image,
    source_datasets: Sequence[Dataset],
    *,
    seg: Dataset | None = None,
    tracking_uids: dict[int, str] | None = None,
) -> "highdicom.sr.Comprehensive3DSR":
    """Build the TID 1500 measurement report of a report's findings (in memory).

    Parameters
    ----------
    report : Report
        A report from :func:`calcdetect.detect` (with its ``labels``).
    image : Image
        The image the report was computed from.
    source_datasets : sequence of pydicom.Dataset
        The source headers in slice order (:func:`source_datasets`).
    seg : pydicom.Dataset, optional
        The SEG of the same report (:func:`build_seg`).  Volumetric findings then
        reference their segment (and take the segment's tracking UID); without it they
        reference per-slice outlines.
    tracking_uids : dict, optional
        Finding id -> tracking UID (default: from ``seg``, else new UIDs).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    CalcdetectError
        highdicom is not installed (:func:`require_highdicom`); the report does not fit
        the image (as for :func:`build_seg`); or ``seg`` holds no frame of a finding's
        segment.
    UnsupportedImageError
        The source datasets do not match the image's slices (see :func:`build_seg`).
    InconsistentSeriesError
        ``seg`` belongs to another study than the source datasets.
    """
    hd = require_highdicom()
    code = _codes()
    labels = _check_labels(report, image)
    slices = _slice_sources(image, source_datasets)
    labels3 = labels if image.ndim == 3 else labels[None]
    is_volume = image.ndim == 3
    uids = dict(tracking_uids or {})
    if seg is not None:
        if str(seg.StudyInstanceUID) != str(source_datasets[0].StudyInstanceUID):
            raise InconsistentSeriesError("the SEG belongs to another study than the source",
                                          path=report.source)
        for k, v in _seg_tracking_uids(seg).items():
            uids.setdefault(k, v)
    algorithm = _algorithm(report)
    groups: list = []

    # image-level group (TID 1501): count and, on CT, the calcium scores
    summary = [hd.sr.Measurement(name=code["count"], value=float(report.count), unit=code["no_units"])]
    scores = (report.to_dict().get("scores") or {}) if report.modality == "CT" else {}
    if scores.get("agatston") is not None:
        summary.append(hd.sr.Measurement(name=code["calcium_score"], value=float(scores["agatston"]),
                                         unit=code["no_units"], method=code["agatston"]))
    if scores.get("volume_mm3") is not None:
        summary.append(hd.sr.Measurement(name=code["calcium_volume"], value=float(scores["volume_mm3"]),
                                         unit=code["mm3"]))
    if scores.get("mass_mg") is not None:
        summary.append(hd.sr.Measurement(name=code["calcium_mass"], value=float(scores["mass_mg"]),
                                         unit=code["mg"]))
    seen: set[str] = set()
    group_sources = []
    for ds, frame in slices:
        if str(ds.SOPInstanceUID) in seen:
            continue
        seen.add(str(ds.SOPInstanceUID))
        group_sources.append(hd.sr.SourceImageForMeasurementGroup.from_source_image(ds))
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="calcdetect summary"),
        finding_type=code["calcification"],
        algorithm_id=algorithm,
        measurements=summary,
        source_images=group_sources,
    ))

    for f in report.findings:
        tracking = hd.sr.TrackingIdentifier(uid=uids.setdefault(f.id, str(hd.UID())),
                                            identifier=_tracking_id(f))
        common = dict(
            tracking_identifier=tracking,
            finding_type=code["calcification"],
            finding_category=code["abnormal_structure"],
            algorithm_id=algorithm,
            finding_sites=_finding_sites(f) or None,
            measurements=_measurements(f, report.modality, is_volume),
        )
        if is_volume:
            if seg is not None:
                ref = _segment_reference(seg, f.id, labels3, slices)
                groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    referenced_segment=ref, **common))
            else:
                groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    referenced_regions=_regions(f, labels3, slices, image.ndim), **common))
        else:
            groups.append(_planar_group(f, labels3[0], slices[0], seg, common))

    from . import __version__

    observer = hd.sr.ObserverContext(
        observer_type=code["device"],
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="calcdetect", manufacturer_name="calcdetect",
            model_name=f"calcdetect {__version__}"),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=code.get(f"proc_{report.modality}",
                                    hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")),
        imaging_measurements=groups,
    )
    evidence = _evidence([ds for ds, _ in slices])
    # one dataset per instance (a multi-frame source appears once)
    uniq: dict[str, Dataset] = {}
    for ds in evidence:
        uniq.setdefault(str(ds.SOPInstanceUID), ds)
    evidence = list(uniq.values())
    if seg is not None:
        evidence.append(seg)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="calcdetect",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="calcdetect calcification measurements (SR)",
    )
    # declare the local coding scheme of the one uncoded concept
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "calcdetect local codes"
    item.CodingSchemeResponsibleOrganization = "calcdetect"
    seq = list(sr.get("CodingSchemeIdentificationSequence", []))
    seq.append(item)
    sr.CodingSchemeIdentificationSequence = seq
    return sr


# ----------------------------------------------------------------------- write
def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write a DICOM dataset (e.g. from :func:`build_seg` / :func:`build_sr`) atomically,
    as a DICOM file with its file meta information.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The data set, with its ``file_meta`` (as highdicom builds it); written with
        ``enforce_file_format=True``, so pydicom completes the file meta information.
    path : str or Path
        Output file; missing parent folders are created, an existing file replaced.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    CalcdetectError
        The file cannot be written (permissions, full disk, a folder in the way); see
        :func:`calcdetect.outputs.write_bytes_atomic`.
    InvalidParameterError
        Before anything is written, when pydicom cannot encode the data set as a DICOM
        file (e.g. no file meta / transfer syntax); never for highdicom's objects.
    """
    try:
        data = _to_bytes(ds)
    except ValueError as exc:
        raise InvalidParameterError(
            f"cannot write {Path(path).name} as a DICOM file: {exc}",
            fix="give a data set with its file_meta (TransferSyntaxUID), as build_sr / build_seg return",
        ) from None
    return write_bytes_atomic(path, data)


def _read_seg(seg: Dataset | str | Path | None) -> Dataset | None:
    if seg is None or isinstance(seg, Dataset):
        return seg
    from .io.dicom import read_header

    return read_header(seg, stop_before_pixels=False)


def write_seg(
    report: Report,
    image: Image,
    source_datasets: Sequence[Dataset],
    path: str | Path,
    *,
    tracking_uids: dict[int, str] | None = None,
) -> Path | None:
    """Write the DICOM Segmentation of a report's findings atomically.

    Parameters
    ----------
    report, image, source_datasets
        As for :func:`build_seg`.
    path : str or Path
        Output file (conventionally ``*.seg.dcm``).
    tracking_uids : dict, optional
        Finding id -> tracking UID.

    Returns
    -------
    Path or None
        The file written, or ``None`` (nothing written, a ``UserWarning`` issued) when the
        report has no findings.
    """
    seg = build_seg(report, image, source_datasets, tracking_uids=tracking_uids)
    if seg is None:
        warnings.warn(f"{report.source}: no calcifications found, so no DICOM SEG was written "
                      "(a segmentation needs at least one segment); the SR records the count 0",
                      UserWarning, stacklevel=2)
        return None
    return write_dataset(seg, path)


def write_sr(
    report: Report,
    image: Image,
    source_datasets: Sequence[Dataset],
    path: str | Path,
    *,
    seg: Dataset | str | Path | None = None,
    tracking_uids: dict[int, str] | None = None,
) -> Path:
    """Write the TID 1500 measurement report (Comprehensive 3D SR) atomically.

    Parameters
    ----------
    report, image, source_datasets
        As for :func:`build_sr`.
    path : str or Path
        Output file (conventionally ``*.sr.dcm``).
    seg : pydicom.Dataset or path, optional
        The SEG written for the same report; volumetric findings then reference it.
    tracking_uids : dict, optional
        Finding id -> tracking UID.

    Returns
    -------
    Path
    """
    sr = build_sr(report, image, source_datasets, seg=_read_seg(seg), tracking_uids=tracking_uids)
    return write_dataset(sr, path)


def write_dicom_outputs(
    image: Image,
    report: Report,
    out_dir: str | Path,
    stem: str,
    sr: bool = True,
    seg: bool = True,
) -> list[Path]:
    """Write ``<stem>.seg.dcm`` and/or ``<stem>.sr.dcm`` for one image into ``out_dir``.

    The SEG is built first so the SR's volumetric groups reference its segments and both
    share tracking UIDs.  With no findings the SEG is skipped (see :func:`write_seg`).

    Parameters
    ----------
    image : Image
        The image (loaded from DICOM) the report was computed from.
    report : Report
        Its report from :func:`calcdetect.detect`.
    out_dir : str or Path
        Output folder (created when missing).
    stem : str
        File name stem.
    sr, seg : bool
        Which objects to write.

    Returns
    -------
    list of Path
        The files written (SEG first, then SR).

    Raises
    ------
    UnsupportedImageError
        The image was not loaded from DICOM (see :func:`source_datasets`); or, with
        ``sr=False``, the SEG cannot be built for this image (with ``sr=True`` that is
        a ``UserWarning`` and only the SR is written).
    InconsistentSeriesError
        The source files changed since loading, belong to several studies, or (SR)
        the SEG belongs to another study.
    UnreadableFileError
        A source file can no longer be read.
    CalcdetectError
        highdicom is not installed, the report does not fit the image (see
        :func:`build_seg`), or an output file cannot be written.
    """
    out_dir = Path(out_dir)
    datasets = source_datasets(image)
    written: list[Path] = []
    seg_ds = None
    if seg:
        try:
            seg_ds = build_seg(report, image, datasets)
        except UnsupportedImageError as exc:
            if not sr:
                raise
            warnings.warn(f"{exc.message}; only the SR was written", UserWarning, stacklevel=2)
            seg, seg_ds = False, None
        if seg and seg_ds is None:
            warnings.warn(f"{report.source}: no calcifications found, so no DICOM SEG was "
                          "written (a segmentation needs at least one segment); the SR records "
                          "the count 0", UserWarning, stacklevel=2)
        elif seg_ds is not None:
            written.append(write_dataset(seg_ds, out_dir / f"{stem}.seg.dcm"))
    if sr:
        sr_ds = build_sr(report, image, datasets, seg=seg_ds)
        written.append(write_dataset(sr_ds, out_dir / f"{stem}.sr.dcm"))
    return written
