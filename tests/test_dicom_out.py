"""DICOM SR (TID 1500) and SEG outputs: round trips against the JSON report.

Sources: a synthetic CT series written with pydicom (8 slices of 64 x 64, known
spacing and positions, file names in reverse slice order, three dense spheres in the
fat of a body ellipse) and the real slice CT_small.dcm.  Detection uses region="all"
so changes to the skin/bone logic do not move these tests.

The SR is read back with plain pydicom (an independent parser) and every measurement is
compared with the JSON report; the SEG frames are mapped back to source slices through
their DerivationImageSequence and compared voxel for voxel with ``Report.labels``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

hd = pytest.importorskip("highdicom")

import calcdetect  # noqa: E402
from calcdetect import dicom_out  # noqa: E402
from calcdetect.cli import main  # noqa: E402
from calcdetect.errors import CalcdetectError, UnsupportedImageError  # noqa: E402

SPACING = (2.0, 0.8, 0.8)  # slice step, row, col (mm)
SHAPE = (8, 64, 64)
# sphere centres (slice, row, col) in the fat ring of the ellipse, radius mm, HU
SPHERES = [((3.0, 10.0, 32.0), 2.6, 700.0), ((4.0, 32.0, 8.0), 2.2, 450.0), ((2.5, 50.0, 50.0), 3.0, 300.0)]

# JSON field -> (concept name code, modifier code (derivation or method), UCUM unit)
EXPECTED_CODES_2D = {
    "long_axis_mm": ("103339001", None, "mm"),
    "short_axis_mm": ("103340004", None, "mm"),
    "equivalent_diameter_mm": ("81827009", "EQUIV-DIAM", "mm"),
    "area_mm2": ("42798000", None, "mm2"),
    "volume_mm3": ("118565006", None, "mm3"),
    "depth_mm": ("121243", None, "mm"),
    "peak": ("112180", None, "[hnsf'U]"),
    "mean": ("112181", None, "[hnsf'U]"),
    "agatston": ("112058", "112055", "1"),
    "threshold_volume_mm3": ("122660", None, "mm3"),
    "mass_mg": ("122661", None, "mg"),
}
EXPECTED_CODES_3D = dict(EXPECTED_CODES_2D, area_mm2=("42798000", "56851009", "mm2"))
SITES = {"dermal": "39937001", "subcutaneous": "71966008", "deep": "38266002"}
SIDES = {"left": "7771000", "right": "24028007"}


# ----------------------------------------------------------------------- phantom
def _phantom(with_spheres: bool = True) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    ym, xm = y * SPACING[1], x * SPACING[2]
    cy, cx = 31.5 * SPACING[1], 31.5 * SPACING[2]
    body = ((ym - cy) / 24.0) ** 2 + ((xm - cx) / 24.0) ** 2 <= 1.0
    core = ((ym - cy) / 14.0) ** 2 + ((xm - cx) / 14.0) ** 2 <= 1.0
    hu = np.full(SHAPE, -1000.0)
    hu[body] = -100.0
    hu[core] = 40.0
    if with_spheres:
        for (cz, cr, cc), radius, value in SPHERES:
            d2 = ((z - cz) * SPACING[0]) ** 2 + ((y - cr) * SPACING[1]) ** 2 + ((x - cc) * SPACING[2]) ** 2
            hu[d2 <= radius**2] = value
    return hu.astype(np.int16)


def _write_series(folder: Path, hu: np.ndarray) -> dict:
    """Write ``hu`` as a CT series; file names run in reverse slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = {"study": generate_uid(), "series": generate_uid(), "for": generate_uid(), "sops": []}
    n = hu.shape[0]
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
        ds.FrameOfReferenceUID = uids["for"]
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Phantom^Calc", "PH001"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber = 3, n - i
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, -20.0 + SPACING[0] * i]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.SliceThickness = SPACING[0]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "HU"
        ds.PixelData = hu[i].tobytes()
        pydicom.dcmwrite(folder / f"{n - 1 - i:02d}.dcm", ds, enforce_file_format=True)
        uids["sops"].append(sop)
    return uids


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    uids = _write_series(folder / "ct", _phantom())
    image = calcdetect.load(folder / "ct")
    report = calcdetect.detect(image, region="all")
    out = folder / "out"
    files = dicom_out.write_dicom_outputs(image, report, out, "phantom")
    return {"image": image, "report": report, "uids": uids, "files": files, "out": out}


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    image = calcdetect.load(path)
    report = calcdetect.detect(image, region="all")
    out = tmp_path_factory.mktemp("real")
    files = dicom_out.write_dicom_outputs(image, report, out, "ct_small")
    return {"image": image, "report": report, "files": files, "path": path, "out": out}


# ------------------------------------------------------------------- SR readers
def _code(item, seq="ConceptNameCodeSequence"):
    return str(item[seq][0].CodeValue)


def _find(items, code, seq="ConceptNameCodeSequence"):
    return [it for it in items if seq in it and _code(it, seq) == code]


def _groups(sr: Dataset) -> list[dict]:
    """The measurement groups of a TID 1500 report, parsed with plain pydicom."""
    assert _code(sr) == "126000"  # Imaging Measurement Report
    containers = _find(sr.ContentSequence, "126010")  # Imaging Measurements
    assert len(containers) == 1
    out = []
    for group in containers[0].ContentSequence:
        assert group.ValueType == "CONTAINER" and _code(group) == "125007"  # Measurement Group
        items = group.ContentSequence
        g = {
            "template": str(group.ContentTemplateSequence[0].TemplateIdentifier),
            "tracking_id": _find(items, "112039")[0].TextValue,
            "tracking_uid": str(_find(items, "112040")[0].UID),
            "finding": [_code(it, "ConceptCodeSequence") for it in _find(items, "121071")],
            "sites": [],
            "measurements": {},
            "segments": [],
            "regions": [],
        }
        for site in _find(items, "363698007"):
            lat = [_code(m, "ConceptCodeSequence") for m in site.get("ContentSequence", [])
                   if _code(m) == "272741003"]
            mod = [_code(m, "ConceptCodeSequence") for m in site.get("ContentSequence", [])
                   if _code(m) == "106233006"]
            g["sites"].append((_code(site, "ConceptCodeSequence"), lat[0] if lat else None,
                               mod[0] if mod else None))
        for it in items:
            if it.ValueType == "NUM":
                mods = [_code(m, "ConceptCodeSequence") for m in it.get("ContentSequence", [])
                        if _code(m) in ("121401", "370129005")]
                key = (_code(it), mods[0] if mods else None)
                assert key not in g["measurements"], f"duplicate measurement {key}"
                mv = it.MeasuredValueSequence[0]
                g["measurements"][key] = (float(mv.NumericValue),
                                          str(mv.MeasurementUnitsCodeSequence[0].CodeValue))
            elif it.ValueType == "IMAGE" and _code(it) in ("121191", "121214"):
                # Referenced Segment (volumetric) / Referenced Segmentation Frame (planar)
                ref = it.ReferencedSOPSequence[0]
                if "ReferencedSegmentNumber" in ref:
                    assert "ReferencedFrameNumber" not in ref  # the macro allows one of the two
                    target = int(ref.ReferencedSegmentNumber)
                else:
                    target = ("frame", int(ref.ReferencedFrameNumber))
                g["segments"].append((str(ref.ReferencedSOPInstanceUID), target))
            elif it.ValueType == "SCOORD" and _code(it) == "111030":  # Image Region
                src = it.ContentSequence[0].ReferencedSOPSequence[0]
                xy = np.asarray(it.GraphicData, dtype=float).reshape(-1, 2)
                g["regions"].append((str(src.ReferencedSOPInstanceUID), str(it.GraphicType), xy))
        out.append(g)
    return out


def _strict_read(path: Path) -> Dataset:
    """Read with pydicom's validation raising on any invalid value, touching every element."""
    old = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    try:
        ds = pydicom.dcmread(path)
        for _ in ds.iterall():
            pass
        str(ds)  # formats every value
    finally:
        pydicom.config.settings.reading_validation_mode = old
    return ds


def _expected_measurements(finding: dict, is_volume: bool) -> dict:
    table = EXPECTED_CODES_3D if is_volume else EXPECTED_CODES_2D
    exp = {}
    for key, (name, mod, unit) in table.items():
        if finding.get(key) is not None:
            exp[(name, mod)] = (float(finding[key]), unit)
    return exp


def _check_sr_against_json(sr: Dataset, report, is_volume: bool) -> list[dict]:
    data = report.to_dict()
    groups = _groups(sr)
    summary, per_finding = groups[0], groups[1:]
    assert summary["template"] == "1501"
    assert summary["measurements"][("111038", None)] == (float(report.count), "1")
    scores = data.get("scores") or {}
    if scores.get("agatston") is not None:
        assert summary["measurements"][("112058", "112055")] == (scores["agatston"], "1")
    if scores.get("volume_mm3") is not None:
        assert summary["measurements"][("122660", None)] == (scores["volume_mm3"], "mm3")
    assert len(per_finding) == report.count
    for g, f in zip(per_finding, data["findings"]):
        assert g["template"] == ("1411" if is_volume else "1410")
        assert g["tracking_id"] == f"Calcification {f['id']}"
        assert pydicom.uid.UID(g["tracking_uid"]).is_valid
        assert g["finding"] == ["18115005"]
        exp = _expected_measurements(f, is_volume)
        assert len(exp) >= 7  # sizes, HU and Agatston at least
        assert g["measurements"] == exp, f"finding {f['id']}"
        if f["region"] in SITES or f["side"] in SIDES:
            loc = SITES.get(f["region"], "38266002")
            assert g["sites"] == [(loc, SIDES.get(f["side"]), "795002" if f["region"] == "deep" else None)]
        else:
            assert g["sites"] == []
    return groups


def _seg_labels(seg: Dataset, sop_order: list[str], shape, source_ipps=None) -> np.ndarray:
    """Rebuild a label image from a SEG: every frame mapped to its source slice."""
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert frames.shape[0] == int(seg.NumberOfFrames)
    out = np.zeros((len(sop_order),) + tuple(shape[-2:]), dtype=np.int32)
    index = {uid: z for z, uid in enumerate(sop_order)}
    for j, pf in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(pf.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = str(pf.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        z = index[src]
        if source_ipps is not None:
            ipp = [float(v) for v in pf.PlanePositionSequence[0].ImagePositionPatient]
            assert np.allclose(ipp, source_ipps[z], atol=1e-3)
        on = frames[j] > 0
        assert not (out[z][on] > 0).any(), "segments overlap"
        out[z][on] = number
    return out


# ------------------------------------------------------------------------- tests
def test_series_phantom_is_detected(series):
    report = series["report"]
    assert report.count == len(SPHERES)
    # the three spheres, in slice/row/col order
    cents = np.array([f.centroid_px for f in report.findings])
    truth = np.array(sorted([c for c, _, _ in SPHERES]))
    assert np.allclose(cents, truth, atol=0.6)
    names = sorted(p.name for p in series["files"])
    assert names == ["phantom.seg.dcm", "phantom.sr.dcm"]


def test_series_sr_round_trip(series):
    sr_path = series["out"] / "phantom.sr.dcm"
    seg_path = series["out"] / "phantom.seg.dcm"
    sr = _strict_read(sr_path)
    seg = _strict_read(seg_path)
    assert str(sr.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.Modality == "SR"
    groups = _check_sr_against_json(sr, series["report"], is_volume=True)
    # volumetric findings reference their SEG segment; tracking UIDs agree with the SEG
    seg_uids = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
    for g, f in zip(groups[1:], series["report"].findings):
        assert g["segments"] == [(str(seg.SOPInstanceUID), f.id)]
        assert g["tracking_uid"] == seg_uids[f.id]
    # highdicom parses it as a TID 1500 report too
    parsed = hd.sr.srread(sr_path)
    assert len(parsed.content.get_volumetric_roi_measurement_groups()) == series["report"].count


def test_series_seg_round_trip(series):
    image, report = series["image"], series["report"]
    seg = _strict_read(series["out"] / "phantom.seg.dcm")
    assert str(seg.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    # the loader ordered slices by position, not by file name
    assert image.metadata["SOPInstanceUIDs"] == series["uids"]["sops"]
    ipps = [[0.0, 0.0, -20.0 + SPACING[0] * i] for i in range(SHAPE[0])]
    labels = _seg_labels(seg, image.metadata["SOPInstanceUIDs"], image.shape, ipps)
    assert np.array_equal(labels, report.labels)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    for s in seg.SegmentSequence:
        assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == "18115005"
        assert s.SegmentLabel == f"Calcification {s.SegmentNumber}"
    # highdicom agrees: the segment masks by source instance equal the labels
    hseg = hd.seg.segread(series["out"] / "phantom.seg.dcm")
    arr = hseg.get_pixels_by_source_instance(
        source_sop_instance_uids=image.metadata["SOPInstanceUIDs"], combine_segments=True,
        ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    assert np.array_equal(arr, report.labels)


def test_series_uids_same_study_new_series(series):
    uids = series["uids"]
    sr = pydicom.dcmread(series["out"] / "phantom.sr.dcm")
    seg = pydicom.dcmread(series["out"] / "phantom.seg.dcm")
    for ds in (sr, seg):
        assert ds.StudyInstanceUID == uids["study"]
        assert ds.SeriesInstanceUID != uids["series"]
        assert ds.PatientID == "PH001"
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID):
            assert pydicom.uid.UID(uid).is_valid
    assert seg.FrameOfReferenceUID == uids["for"]
    assert sr.SeriesInstanceUID != seg.SeriesInstanceUID
    assert sr.SOPInstanceUID != seg.SOPInstanceUID


def test_series_sr_without_seg_outlines_each_slice(series, tmp_path):
    image, report = series["image"], series["report"]
    ds = dicom_out.source_datasets(image)
    path = dicom_out.write_sr(report, image, ds, tmp_path / "only.sr.dcm")
    sr = _strict_read(path)
    groups = _check_sr_against_json(sr, report, is_volume=True)
    sops = image.metadata["SOPInstanceUIDs"]
    for g, f in zip(groups[1:], report.findings):
        assert g["segments"] == []
        touched = {sops[z] for z in np.flatnonzero((report.labels == f.id).any(axis=(1, 2)))}
        assert {uid for uid, _, _ in g["regions"]} == touched
        for uid, gtype, xy in g["regions"]:
            assert gtype == "POLYLINE" and np.allclose(xy[0], xy[-1])  # closed outlines


def test_real_slice_round_trip(real_slice):
    image, report = real_slice["image"], real_slice["report"]
    assert image.metadata["files"] == [str(real_slice["path"])]
    assert report.count >= 3
    src = pydicom.dcmread(real_slice["path"], stop_before_pixels=True)
    sr = _strict_read(real_slice["out"] / "ct_small.sr.dcm")
    seg = _strict_read(real_slice["out"] / "ct_small.seg.dcm")
    groups = _check_sr_against_json(sr, report, is_volume=False)
    # planar groups: a one-piece finding's polyline outlines exactly its pixels (holes
    # filled); a finding in several pieces references its SEG segment
    from scipy import ndimage as ndi
    from skimage.draw import polygon2mask

    n_pieces = [ndi.label(report.labels == f.id, structure=np.ones((3, 3)))[1] for f in report.findings]
    assert 1 in n_pieces and max(n_pieces) > 1  # CT_small has both kinds
    for g, f, pieces in zip(groups[1:], report.findings, n_pieces):
        if pieces > 1:  # the SEG frame referenced is the one holding this finding's segment
            assert g["regions"] == [] and len(g["segments"]) == 1
            uid, (kind, number) = g["segments"][0]
            assert uid == seg.SOPInstanceUID and kind == "frame"
            pf = seg.PerFrameFunctionalGroupsSequence[number - 1]
            assert pf.SegmentIdentificationSequence[0].ReferencedSegmentNumber == f.id
            continue
        assert len(g["regions"]) == 1 and g["segments"] == []
        uid, gtype, xy = g["regions"][0]
        assert uid == src.SOPInstanceUID and gtype == "POLYLINE"
        drawn = polygon2mask(image.shape, np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1))
        mask = report.labels == f.id
        assert np.array_equal(drawn, ndi.binary_fill_holes(mask)), f"finding {f.id}"
    labels = _seg_labels(seg, [str(src.SOPInstanceUID)], image.shape)
    assert np.array_equal(labels[0], report.labels)
    for ds in (sr, seg):
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID


def test_real_slice_sr_without_seg_outlines_split_finding(real_slice, tmp_path):
    """Without a SEG, a finding in several pieces is outlined by its convex hull."""
    from scipy import ndimage as ndi
    from skimage.draw import polygon2mask

    image, report = real_slice["image"], real_slice["report"]
    path = dicom_out.write_sr(report, image, dicom_out.source_datasets(image), tmp_path / "x.sr.dcm")
    groups = _check_sr_against_json(_strict_read(path), report, is_volume=False)
    for g, f in zip(groups[1:], report.findings):
        assert g["segments"] == [] and len(g["regions"]) == 1
        xy = g["regions"][0][2]
        drawn = polygon2mask(image.shape, np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1))
        mask = report.labels == f.id
        assert not (mask & ~drawn).any()  # every pixel of the finding is inside its region
        if ndi.label(mask, structure=np.ones((3, 3)))[1] == 1:
            assert np.array_equal(drawn, ndi.binary_fill_holes(mask))


def test_enhanced_multiframe_ct_round_trip(tmp_path):
    """An enhanced CT whose frames run against the slice order: SEG frames must point at
    the right source frame numbers."""
    _write_series(tmp_path / "ct", _phantom())
    legacy = [pydicom.dcmread(p) for p in sorted((tmp_path / "ct").glob("*.dcm"))]  # z descending
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(legacy, hd.UID(), 4, hd.UID(), 1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    image = calcdetect.load(tmp_path / "enhanced.dcm")
    assert image.metadata["frame_order"] == list(range(SHAPE[0]))[::-1]
    report = calcdetect.detect(image, region="all")
    assert report.count == len(SPHERES)
    files = dicom_out.write_dicom_outputs(image, report, tmp_path / "out", "enh")
    seg = _strict_read(files[0])
    rebuilt = np.zeros(image.shape, dtype=np.int32)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    slice_of_frame = {f + 1: z for z, f in enumerate(image.metadata["frame_order"])}
    for j, pf in enumerate(seg.PerFrameFunctionalGroupsSequence):
        src = pf.DerivationImageSequence[0].SourceImageSequence[0]
        assert src.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
        z = slice_of_frame[int(src.ReferencedFrameNumber)]
        rebuilt[z][frames[j] > 0] = int(pf.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    assert np.array_equal(rebuilt, report.labels)
    _check_sr_against_json(_strict_read(files[1]), report, is_volume=True)
    # without the SEG: per-slice outlines reference the right frame of the one instance
    sr = dicom_out.build_sr(report, image, dicom_out.source_datasets(image))
    for g, f in zip(_groups(sr)[1:], report.findings):
        zs = np.flatnonzero((report.labels == f.id).any(axis=(1, 2)))
        frames_expected = {image.metadata["frame_order"][z] + 1 for z in zs}
        assert {uid for uid, _, _ in g["regions"]} == {enhanced.SOPInstanceUID}
        found = set()
        groups_items = [it for it in _find(sr.ContentSequence, "126010")[0].ContentSequence
                        if _find(it.ContentSequence, "112039")[0].TextValue == g["tracking_id"]]
        for it in groups_items[0].ContentSequence:
            if it.ValueType == "SCOORD":
                ref = it.ContentSequence[0].ReferencedSOPSequence[0]
                found.add(int(ref.ReferencedFrameNumber))
        assert found == frames_expected


@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")
@pytest.mark.parametrize("name,modality,frame", [("US1_UNCR.dcm", "US", None),
                                                 ("color3d_jpeg_baseline.dcm", "US", 60)])
def test_2d_non_ct_sources(tmp_path, name, modality, frame):
    """Modality-agnostic: a 2D result on an ultrasound image or one frame of a cine."""
    from pydicom.data import get_testdata_file

    from calcdetect.report import Finding, Report

    path = get_testdata_file(name)
    head = pydicom.dcmread(path, stop_before_pixels=True)
    meta = {} if frame is None else {"frame_index": frame}
    image = calcdetect.Image(np.zeros((head.Rows, head.Columns), np.float32), (0.1, 0.1), modality,
                             source=path, metadata=meta)
    labels = np.zeros(image.shape, np.int32)
    labels[20:26, 30:35] = 1
    labels[50:53, 60:70] = 2
    findings = [Finding(id=i, centroid_px=[0.0, 0.0], centroid_mm=None, bbox_px=[0, 0, 1, 1],
                        equivalent_diameter_mm=1.5 * i, long_axis_mm=2.0 * i, short_axis_mm=1.0,
                        area_mm2=3.0 * i, volume_mm3=None, peak=200.0, mean=100.0, side="left",
                        depth_mm=4.0, region="subcutaneous") for i in (1, 2)]
    report = Report(source=path, modality=modality, shape=list(image.shape), spacing_mm=[0.1, 0.1],
                    findings=findings, labels=labels)
    if frame is None:
        files = dicom_out.write_dicom_outputs(image, report, tmp_path, "us")
        seg, sr = _strict_read(files[0]), _strict_read(files[1])
    else:  # highdicom cannot segment one frame of a cine without a frame of reference
        with pytest.warns(UserWarning, match="only the SR was written"):
            files = dicom_out.write_dicom_outputs(image, report, tmp_path, "us")
        assert [p.name for p in files] == ["us.sr.dcm"]
        seg, sr = None, _strict_read(files[0])
    groups = _groups(sr)
    assert sr.StudyInstanceUID == head.StudyInstanceUID
    for path in files:  # no frame of reference: patient orientation and spacing handled
        assert _dciodvfy_errors(path) == [], path.name
    for g, f in zip(groups[1:], findings):
        # sizes and depth, no HU on ultrasound
        assert g["measurements"] == {("103339001", None): (f.long_axis_mm, "mm"),
                                     ("103340004", None): (1.0, "mm"),
                                     ("81827009", "EQUIV-DIAM"): (f.equivalent_diameter_mm, "mm"),
                                     ("42798000", None): (f.area_mm2, "mm2"),
                                     ("121243", None): (4.0, "mm")}
        assert g["sites"] == [("71966008", "7771000", None)]
        # the outline is on the analysed frame
        assert len(g["regions"]) == 1
        mask = labels == f.id
        rows, cols = np.nonzero(mask)
        xy = g["regions"][0][2]
        assert np.allclose(xy.min(axis=0), [cols.min(), rows.min()]) and np.allclose(
            xy.max(axis=0), [cols.max() + 1, rows.max() + 1])
    if frame is not None:
        region_items = [it for it in _find(sr.ContentSequence, "126010")[0].ContentSequence[1].ContentSequence
                        if it.ValueType == "SCOORD"]
        ref = region_items[0].ContentSequence[0].ReferencedSOPSequence[0]
        assert int(ref.ReferencedFrameNumber) == frame + 1
        return
    rebuilt = np.zeros(image.shape, np.int32)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for j, pf in enumerate(seg.PerFrameFunctionalGroupsSequence):
        src = pf.DerivationImageSequence[0].SourceImageSequence[0]
        assert src.ReferencedSOPInstanceUID == head.SOPInstanceUID
        rebuilt[frames[j] > 0] = int(pf.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    assert np.array_equal(rebuilt, labels)
    assert seg.StudyInstanceUID == head.StudyInstanceUID == sr.StudyInstanceUID


def test_cine_without_frame_is_refused(tmp_path):
    from pydicom.data import get_testdata_file

    from calcdetect.report import Report

    path = get_testdata_file("color3d_jpeg_baseline.dcm")
    head = pydicom.dcmread(path, stop_before_pixels=True)
    image = calcdetect.Image(np.zeros((head.Rows, head.Columns), np.float32), None, "US", source=path)
    report = Report(source=path, modality="US", shape=list(image.shape), spacing_mm=None,
                    labels=np.zeros(image.shape, np.int32))
    with pytest.raises(UnsupportedImageError, match="which one was analysed"):
        dicom_out.build_sr(report, image, dicom_out.source_datasets(image))


def test_anonymised_source_without_uids(tmp_path):
    """Empty SOP/Study/Series UIDs (as in anonymised exports): SOP UIDs come from the file
    meta, the study/series UIDs are derived -- the same for every call -- with a note."""
    uids = _write_series(tmp_path / "ct", _phantom())
    for path in (tmp_path / "ct").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        ds.save_as(path)
    image = calcdetect.load(tmp_path / "ct")
    report = calcdetect.detect(image, region="all")
    notes: list[str] = []
    with pytest.warns(UserWarning, match="PACS will not file them"):
        first = dicom_out.source_datasets(image, notes=notes)
    assert len(notes) == 1 and "StudyInstanceUID or SeriesInstanceUID" in notes[0]
    assert [str(ds.SOPInstanceUID) for ds in first] == uids["sops"]  # from the file meta
    with pytest.warns(UserWarning):
        files = dicom_out.write_dicom_outputs(image, report, tmp_path / "out", "anon")
    seg, sr = _strict_read(files[0]), _strict_read(files[1])
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == first[0].StudyInstanceUID
    assert pydicom.uid.UID(seg.StudyInstanceUID).is_valid
    labels = _seg_labels(seg, uids["sops"], image.shape)
    assert np.array_equal(labels, report.labels)
    _check_sr_against_json(sr, report, is_volume=True)


def test_no_findings_writes_sr_only(tmp_path):
    _write_series(tmp_path / "ct", _phantom(with_spheres=False))
    image = calcdetect.load(tmp_path / "ct")
    report = calcdetect.detect(image, region="all")
    assert report.count == 0
    with pytest.warns(UserWarning, match="no DICOM SEG"):
        files = dicom_out.write_dicom_outputs(image, report, tmp_path / "out", "empty")
    assert [p.name for p in files] == ["empty.sr.dcm"]
    groups = _groups(_strict_read(files[0]))
    assert len(groups) == 1 and groups[0]["measurements"][("111038", None)] == (0.0, "1")
    assert groups[0]["measurements"][("112058", "112055")] == (0.0, "1")
    assert dicom_out.build_seg(report, image, dicom_out.source_datasets(image)) is None


def test_cli_detect_writes_sr_and_seg(tmp_path, real_slice, capsys):
    sr, seg, js = tmp_path / "a.sr.dcm", tmp_path / "a.seg.dcm", tmp_path / "a.json"
    code = main(["detect", str(real_slice["path"]), "--region", "all", "--dicom-sr", str(sr),
                 "--dicom-seg", str(seg), "-o", str(js)])
    assert code == 0
    sr_ds, seg_ds = _strict_read(sr), _strict_read(seg)
    import json

    count = json.loads(js.read_text())["count"]
    assert len(seg_ds.SegmentSequence) == count
    assert len(_groups(sr_ds)) == count + 1
    assert not list(tmp_path.glob(".*.part"))  # atomic writes left no temporaries


def test_cli_no_findings_skips_seg(tmp_path, capsys):
    _write_series(tmp_path / "ct", _phantom(with_spheres=False))
    sr, seg = tmp_path / "e.sr.dcm", tmp_path / "e.seg.dcm"
    code = main(["detect", str(tmp_path / "ct"), "--region", "all", "--compact",
                 "--dicom-sr", str(sr), "--dicom-seg", str(seg)])
    assert code == 0
    out, err = capsys.readouterr()
    assert '"count": 0' in out and "no DICOM SEG was written" in err
    assert sr.exists() and not seg.exists()
    assert _groups(_strict_read(sr))[0]["measurements"][("111038", None)] == (0.0, "1")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_outputs_pass_dciodvfy(series, real_slice, tmp_path):
    """David Clunie's IOD validator finds no error in the SR and SEG objects."""
    image, report = series["image"], series["report"]
    no_seg = dicom_out.write_sr(report, image, dicom_out.source_datasets(image), tmp_path / "n.sr.dcm")
    files = list(series["files"]) + list(real_slice["files"]) + [no_seg]
    for path in files:
        assert _dciodvfy_errors(path) == [], path.name


def _dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of dciodvfy (empty when the validator is not installed)."""
    if shutil.which("dciodvfy") is None:
        return []
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_array_image_has_no_dicom_source():
    image = calcdetect.Image(np.zeros((16, 16), np.float32), (1.0, 1.0), "CT")
    with pytest.raises(UnsupportedImageError, match="DICOM file"):
        dicom_out.source_datasets(image)


def test_missing_highdicom_names_the_extra(real_slice, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(CalcdetectError, match=r"calcdetect\[dicom-out\]"):
        dicom_out.build_sr(real_slice["report"], real_slice["image"],
                           dicom_out.source_datasets(real_slice["image"]))


def test_report_without_labels_is_refused(real_slice):
    import dataclasses

    report = dataclasses.replace(real_slice["report"], labels=None)
    with pytest.raises(CalcdetectError, match="label image"):
        dicom_out.build_seg(report, real_slice["image"], dicom_out.source_datasets(real_slice["image"]))


def test_annotate_writes_sr_and_seg_per_dicom_input(tmp_path):
    import json
    import shutil

    from pydicom.data import get_testdata_file

    from calcdetect.cli import main

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    out = tmp_path / "out"
    assert main(["annotate", str(src), "-o", str(out), "--region", "all", "--dicom-sr", "--dicom-seg", "-q", "--jobs", "1"]) == 0
    data = json.loads((out / "ct.dcm.json").read_text())
    assert data["count"] > 0
    assert sorted(data["dicom_outputs"]) == ["ct.dcm.seg.dcm", "ct.dcm.sr.dcm"]
    seg = pydicom.dcmread(out / "ct.dcm.seg.dcm")
    sr = pydicom.dcmread(out / "ct.dcm.sr.dcm")
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    assert len(seg.SegmentSequence) == data["count"]
    assert seg.StudyInstanceUID == pydicom.dcmread(src / "ct.dcm").StudyInstanceUID
    # up to date: a second run skips; deleting the SEG makes it redo that input
    mtime = (out / "ct.dcm.json").stat().st_mtime_ns
    assert main(["annotate", str(src), "-o", str(out), "--region", "all", "--dicom-sr", "--dicom-seg", "-q", "--jobs", "1"]) == 0
    assert (out / "ct.dcm.json").stat().st_mtime_ns == mtime
    (out / "ct.dcm.seg.dcm").unlink()
    assert main(["annotate", str(src), "-o", str(out), "--region", "all", "--dicom-sr", "--dicom-seg", "-q", "--jobs", "1"]) == 0
    assert (out / "ct.dcm.seg.dcm").exists()
