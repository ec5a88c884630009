"""Ultrasound: loading real files with their true spacing, overlays masked, phantoms with
known truth (shadowing foci found and sized, decoys / calipers / text not reported)."""

from __future__ import annotations

import json
import time

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from calcdetect import load
from calcdetect.detect import detect
from calcdetect.detect.ultrasound import beam_geometry, detect_ultrasound
from calcdetect.errors import InvalidParameterError
from calcdetect.io.ultrasound import load_ultrasound, load_ultrasound_frames
from calcdetect.phantoms.ultrasound import insert_shadowing_focus, ultrasound_phantom, write_ultrasound_dicom
from calcdetect.validation import match_findings


def _file(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not installed (pydicom-data)")
    return str(path)


def _tag_regions(path: str) -> list[tuple[float, float]]:
    """(row, col) mm of every tissue 2D region, read straight from the tags."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    out = []
    for r in ds.SequenceOfUltrasoundRegions:
        if r.RegionSpatialFormat == 1 and r.RegionDataType == 1 and r.PhysicalUnitsXDirection == 3:
            out.append((float(r.PhysicalDeltaY) * 10, float(r.PhysicalDeltaX) * 10))
    return out


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name, expected_mm", [
    ("gdcm-US-ALOKA-16.dcm", 0.3826530650258064),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", 0.25476696592378157),
    ("OBXXXX1A.dcm", 0.2622878766196998),
    ("OBXXXX1A_rle.dcm", 0.2622878766196998),
    ("OBXXXX1A_expb.dcm", 0.2622878766196998),
    ("color3d_jpeg_baseline.dcm", 0.5104970559477806),
    ("examples_palette.dcm", 0.2622878766196998),
])
def test_real_files_load_with_region_spacing(name, expected_mm):
    path = _file(name)
    image = load(path)
    assert image.modality == "US"
    assert image.pixels.ndim == 2
    tags = _tag_regions(path)
    assert image.spacing_mm == pytest.approx(tags[0], rel=1e-9)
    assert image.spacing_mm == pytest.approx((expected_mm, expected_mm), rel=1e-9)
    assert "SequenceOfUltrasoundRegions" in image.spacing_source
    assert 0 <= image.pixels.min() and image.pixels.max() <= 255
    assert image.valid_mask is not None and image.valid_mask.any()


def test_dual_view_regions_reported():
    path = _file("gdcm-US-ALOKA-16.dcm")
    image = load(path)
    regions = image.geometry["regions"]
    assert [r["box"] for r in regions] == [(32, 24, 335, 415), (336, 24, 639, 415)]
    assert [r["index"] for r in regions] == [0, 1]  # the third item is not tissue (data type 13)
    for r, tag in zip(regions, _tag_regions(path)):
        assert r["spacing_mm"] == pytest.approx(tag, rel=1e-12)
    # nothing outside the two boxes is tissue
    outside = np.ones(image.shape, bool)
    outside[24:416, 32:640] = False
    assert not image.valid_mask[outside].any()


def test_palette_16bit_applied_and_grey_is_luminance():
    path = _file("gdcm-US-ALOKA-16.dcm")
    image = load(path)
    ds = pydicom.dcmread(path)
    rgb = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    assert rgb.dtype == np.uint16
    assert image.color.dtype == np.uint8 and image.color.shape == (480, 640, 3)
    np.testing.assert_array_equal(image.color, (rgb >> 8).astype(np.uint8))
    lum = 0.299 * image.color[..., 0] + 0.587 * image.color[..., 1] + 0.114 * image.color[..., 2]
    np.testing.assert_allclose(image.pixels, lum, atol=1e-3)


def test_palette_8bit_and_ybr_and_rgb():
    pal = load(_file("OBXXXX1A.dcm"))
    assert pal.color is not None and pal.color.shape == (600, 800, 3)
    # the same image big-endian and RLE: identical pixels (16-bit LUT byte order handled)
    for variant in ("OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"):
        np.testing.assert_array_equal(load(_file(variant)).color, pal.color)
    rgb = load(_file("US1_UNCR.dcm"))
    ds = pydicom.dcmread(_file("US1_UNCR.dcm"))
    np.testing.assert_array_equal(rgb.color, ds.pixel_array)
    # the same image JPEG 2000 lossless as YBR_RCT decodes to the very same grey
    j2k = get_testdata_file("US1_J2KR.dcm")
    if j2k is not None:
        np.testing.assert_allclose(load(j2k).pixels, rgb.pixels, atol=1e-3)
    ybr = load(_file("color3d_jpeg_baseline.dcm"), frame=3)
    assert ybr.color.shape == (480, 640, 3)
    # B-mode decoded from YBR is grey: little chroma inside the fan
    c = ybr.color.astype(int)
    chroma = (c.max(axis=2) - c.min(axis=2))[ybr.valid_mask]
    assert np.percentile(chroma, 99) < 20


def test_no_region_gives_null_mm_and_warning():
    path = _file("US1_UNCR.dcm")
    image = load(path)
    assert image.spacing_mm is None
    assert any("no tissue region" in w for w in image.warnings)
    report = detect(image)
    assert report.spacing_mm is None
    assert any("no pixel spacing" in w for w in report.warnings)
    for f in report.findings:
        assert f.equivalent_diameter_mm is None and f.depth_mm is None
    given = load(path, pixel_size_mm=0.13)
    assert given.spacing_mm == (0.13, 0.13)


def test_region_outside_resized_image_not_trusted():
    image = load(_file("examples_ybr_color.dcm"))  # 320 x 240 with the 640 x 480 regions
    assert image.spacing_mm is None
    assert any("mostly outside" in w for w in image.warnings)


def test_cine_frames():
    path = _file("color3d_jpeg_baseline.dcm")
    image = load(path)
    assert image.geometry["frame"] == 60 and image.geometry["n_frames"] == 120
    ds = pydicom.dcmread(path)
    from pydicom.pixels import pixel_array

    frame5 = pixel_array(ds, index=5)  # RGB after YBR conversion
    got = load(path, frame=5)
    np.testing.assert_array_equal(got.color, frame5)
    with pytest.raises(InvalidParameterError):
        load(path, frame=120)
    two = load(_file("OBXXXX1A_2frame.dcm"), frame="all")
    assert two.shape == (2, 600, 800)
    assert two.spacing_mm[1:] == pytest.approx((0.2622878766196998,) * 2)
    assert two.geometry["frame_axis"] == "time"
    frames = load_ultrasound_frames(_file("OBXXXX1A_2frame.dcm"))
    assert len(frames) == 2 and frames[0].shape == (600, 800)
    report = detect(two)
    assert report.shape == [2, 600, 800]
    assert report.to_dict()["frames"] == {"analysed": 2, "findings_per_frame": [0, 0], "frames_with_findings": 0,
                                           "distinct_calcifications": 0}


def test_calipers_text_and_doppler_masked():
    jpg = load(_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    # the two caliper crosses (rows 318 and 435) and the dotted line between them
    for r, c in ((318, 628), (435, 689)):
        win = (slice(r - 8, r + 9), slice(c - 8, c + 9))
        bright = jpg.pixels[win] > 200
        assert bright.sum() >= 8
        assert not jpg.valid_mask[win][bright].any()
    aloka = load(_file("gdcm-US-ALOKA-16.dcm"))
    text = aloka.pixels[36:48, 250:275] == 190  # the burned-in "127/128"
    assert text.sum() > 40 and not aloka.valid_mask[36:48, 250:275][text].any()
    us1 = load(_file("US1_UNCR.dcm"))
    c = us1.color.astype(int)
    doppler = (c.max(axis=2) - c.min(axis=2)) > 60
    assert doppler.sum() > 1000 and not us1.valid_mask[doppler].any()


def test_static_overlay_found_across_cine(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    rng = np.random.default_rng(1)
    n, rows, cols = 6, 120, 160
    frames = rng.integers(20, 120, size=(n, rows, cols)).astype(np.uint8)
    patch = rng.integers(150, 255, size=(14, 14)).astype(np.uint8)  # textured, not thin, not flat
    frames[:, 50:64, 70:84] = patch
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = frames.tobytes()
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = load_ultrasound(path, frame=2)
    assert not image.valid_mask[52:62, 72:82].any()
    assert image.valid_mask[10:40, 10:40].all()
    assert image.spacing_mm is None


# ----------------------------------------------------------------------------- phantoms
@pytest.mark.parametrize("geometry", ["linear", "sector"])
@pytest.mark.parametrize("seed", [0, 7])
def test_phantom_foci_found_decoys_rejected(geometry, seed):
    image, truth = ultrasound_phantom(geometry=geometry, seed=seed)
    report = detect(image)
    foci = [t for t in truth if t["shadow"]]
    decoys = [t for t in truth if not t["shadow"]]
    assert len(foci) == 3 and len(decoys) == 2
    m = match_findings(foci, report.findings, image.spacing_mm)
    assert m.found == 3
    assert max(abs(e) for e in m.size_errors_mm) <= 1.0
    md = match_findings(decoys, report.findings, image.spacing_mm)
    assert md.found == 0
    assert report.count == 3  # calipers, dotted lines and text not reported either
    assert all(f.shadow_contrast >= 0.4 for f in report.findings)
    assert report.extra["beam"]["probe"] == [geometry]
    for f in report.findings:
        assert f.extra["bmode_region"] == 0
        assert f.extra["shadow_width_mm"] is not None
        # the simulated shadow is as wide as the focus
        assert abs(f.extra["shadow_width_mm"] - f.equivalent_diameter_mm) <= 1.5


def test_phantom_depth_and_region():
    image, truth = ultrasound_phantom(geometry="linear", seed=3,
                                      foci=[(3.0 + 1.9, 20.0, 2.0), (12.0, 40.0, 3.0), (35.0, 55.0, 4.0)],
                                      decoys=[])
    report = detect(image)
    assert report.count == 3
    top = int(480 * 0.04)  # the phantom's field starts here (the transducer surface)
    by_row = sorted(report.findings, key=lambda f: f.centroid_px[0])
    for f, t in zip(by_row, sorted(truth, key=lambda t: t["centroid_px"][0])):
        expected = (t["centroid_px"][0] - top) * 0.1
        assert f.depth_mm == pytest.approx(expected, abs=0.6)
    assert [f.region for f in by_row] == ["subcutaneous", "subcutaneous", "deep"]
    d = report.to_dict()
    assert d["distribution"]["by_region"] == {"subcutaneous": 2, "deep": 1}
    json.dumps(d)


def test_sector_apex_estimated():
    image, _ = ultrasound_phantom(geometry="sector", seed=0)
    geom = beam_geometry(image.geometry["fan"], image.spacing_mm)
    assert geom["probe"] == "sector"
    # the phantom's apex: row -0.25 * 480, col 320 (pixels of 0.1 mm)
    assert geom["apex_mm"][0] == pytest.approx(-12.0, abs=1.5)
    assert geom["apex_mm"][1] == pytest.approx(32.0, abs=1.0)
    lin, _ = ultrasound_phantom(geometry="linear", seed=0)
    assert beam_geometry(lin.geometry["fan"], lin.spacing_mm)["probe"] == "linear"


def test_bright_focus_without_shadow_is_not_a_calcification():
    image, truth = ultrasound_phantom(geometry="linear", seed=2, foci=[], decoys=[(15.0, 20.0, 4.0), (25.0, 45.0, 6.0)])
    assert detect(image).count == 0


# ----------------------------------------------------------------------------- real images
def test_inserted_foci_in_real_dual_view_image():
    base = load(_file("gdcm-US-ALOKA-16.dcm"))
    untouched = detect(base)
    assert untouched.count == 0
    img, t1 = insert_shadowing_focus(base, (250, 480), 5.0, shadow=True, shadow_factor=0.25, seed=1)
    img, t2 = insert_shadowing_focus(img, (240, 150), 4.0, shadow=True, shadow_factor=0.3, seed=2)
    img, t3 = insert_shadowing_focus(img, (200, 260), 4.0, shadow=False, seed=3)
    report = detect(img)
    m = match_findings([t1, t2], report.findings, img.spacing_mm)
    assert m.found == 2
    assert all(abs(e) <= 1.0 for e in m.size_errors_mm)
    regions = {round(f.centroid_px[1]): f.extra["bmode_region"] for f in report.findings}
    assert regions[480] == 1 and regions[150] == 0
    assert match_findings([t3], report.findings, img.spacing_mm).found == 0
    assert report.count == 2


def test_untouched_real_images_have_no_findings():
    for name in ("JPGLosslessP14SV1_1s_1f_8b.dcm", "OBXXXX1A.dcm", "color3d_jpeg_baseline.dcm"):
        assert detect(load(_file(name))).count == 0, name


def test_frame_640x480_analyses_in_well_under_a_second():
    image = load(_file("color3d_jpeg_baseline.dcm"))
    assert image.shape == (480, 640)
    detect_ultrasound(image)
    best = min(_timed(detect_ultrasound, image) for _ in range(3))
    assert best < 0.5


def _timed(func, *args):
    t0 = time.perf_counter()
    func(*args)
    return time.perf_counter() - t0


def test_options_validated():
    image, _ = ultrasound_phantom(seed=0)
    with pytest.raises(InvalidParameterError):
        detect(image, probe="convex")
    with pytest.raises(InvalidParameterError):
        detect(image, smooth_mm=0)
    with pytest.raises(InvalidParameterError):
        detect(image, nonsense=1)


# ----------------------------------------------------------------------------- DICOM + CLI
def test_phantom_dicom_round_trip_and_cli(tmp_path, capsys):
    from calcdetect.cli import main

    image, truth = ultrasound_phantom(geometry="sector", seed=4)
    path = write_ultrasound_dicom(image, tmp_path / "phantom_us.dcm")
    ds = pydicom.dcmread(path)
    reg = ds.SequenceOfUltrasoundRegions[0]
    assert (reg.RegionSpatialFormat, reg.RegionDataType, reg.PhysicalUnitsXDirection) == (1, 1, 3)
    assert float(reg.PhysicalDeltaX) == pytest.approx(0.01)
    loaded = load(path)
    assert loaded.spacing_mm == pytest.approx((0.1, 0.1))
    assert main(["detect", str(path), "--compact"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["modality"] == "US" and out["count"] == 3
    assert out["spacing_mm"] == pytest.approx([0.1, 0.1])
    foci = [t for t in truth if t["shadow"]]
    m = match_findings(foci, out["findings"], (0.1, 0.1))
    assert m.found == 3
    for f in out["findings"]:
        assert f["shadow_contrast"] >= 0.4 and f["depth_mm"] > 0 and f["bmode_region"] == 0


def test_cli_on_real_us_file(capsys):
    from calcdetect.cli import main

    assert main(["detect", _file("gdcm-US-ALOKA-16.dcm")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["modality"] == "US"
    assert out["spacing_mm"] == pytest.approx([0.3826530650258064] * 2)
    assert out["count"] == 0
    assert main(["detect", _file("US1_UNCR.dcm"), "--pixel-size", "0.13"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spacing_mm"] == [0.13, 0.13]


def test_png_frame_with_pixel_size(tmp_path):
    """A sector screenshot as PNG: fan, overlays and beam geometry found without DICOM."""
    import cv2

    image, truth = ultrasound_phantom(geometry="sector", seed=5)
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), np.clip(np.rint(image.pixels), 0, 255).astype(np.uint8))
    loaded = load(path, modality="US", pixel_size_mm=0.1)
    assert loaded.valid_mask is None and "fan" not in loaded.geometry
    report = detect(loaded)
    assert report.extra["beam"]["probe"] == ["sector"]
    m = match_findings([t for t in truth if t["shadow"]], report.findings, (0.1, 0.1))
    assert m.found == 3 and report.count == 3
    assert report.findings[0].extra["bmode_region"] is None
    no_size = detect(load(path, modality="US"))
    assert no_size.count == 3 and all(f.equivalent_diameter_mm is None for f in no_size.findings)


def test_cine_all_frames_with_user_pixel_size(capsys):
    from calcdetect.cli import main

    path = _file("examples_ybr_color.dcm")  # 30 frames, regions not trusted
    image = load(path, frame="all", pixel_size_mm=0.2)
    assert image.shape == (30, 240, 320)
    assert image.spacing_mm == (1.0, 0.2, 0.2)
    assert main(["detect", path, "--frames", "all", "--pixel-size", "0.2", "--compact"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shape"] == [30, 240, 320] and out["spacing_mm"] == [1.0, 0.2, 0.2]


def test_cine_findings_reported_per_frame():
    frames = []
    truth = None
    for seed in (0, 1, 2):  # same foci, new speckle each frame
        img, truth = ultrasound_phantom(geometry="linear", seed=seed, calipers=False, text=False)
        frames.append(img)
    stack = frames[0].with_pixels(np.stack([f.pixels for f in frames]), spacing_mm=(1.0, 0.1, 0.1),
                                  valid_mask=np.stack([f.valid_mask for f in frames]),
                                  geometry=dict(frames[0].geometry, frame_axis="time"))
    report = detect(stack)
    assert report.to_dict()["frames"]["findings_per_frame"] == [3, 3, 3]
    assert {f.extra["frame"] for f in report.findings} == {0, 1, 2}
    assert all(len(f.centroid_px) == 3 and len(f.centroid_mm) == 2 for f in report.findings)
    assert report.labels.shape == (3, 480, 640) and report.labels.max() == 9


@pytest.mark.parametrize("geometry", ["linear", "sector"])
def test_large_calcification_seen_as_arc_with_shadow(geometry):
    """Only the transducer-facing surface of a large calcification echoes: a thin bright
    arc over a strong shadow is reported (its width across the beam and its shadow
    give the size); the same arc without a shadow is a specular interface."""
    if geometry == "linear":
        at = [(15.0, 14.0), (22.0, 40.0)]
        decoy = (32.0, 26.0)
    else:
        ay, ax = -12.0, 32.0  # the sector phantom's apex (mm)
        at = [(ay + r * np.cos(np.deg2rad(a)), ax + r * np.sin(np.deg2rad(a))) for r, a in ((32, -12), (42, 12))]
        decoy = (ay + 58 * np.cos(np.deg2rad(-1)), ax + 58 * np.sin(np.deg2rad(-1)))
    foci = [{"center_mm": c, "diameter_mm": d, "shape": "arc"} for c, d in zip(at, (8.0, 10.0))]
    image, truth = ultrasound_phantom(geometry=geometry, seed=0, foci=foci,
                                      decoys=[{"center_mm": decoy, "diameter_mm": 8.0, "shape": "arc"}])
    report = detect(image)
    m = match_findings([t for t in truth if t["shadow"]], report.findings, image.spacing_mm)
    assert m.found == 2 and report.count == 2
    for i, j in m.matched:
        f = report.findings[j]
        d = truth[i]["diameter_mm"]
        assert f.equivalent_diameter_mm < 0.6 * d  # a thin arc has little area...
        assert abs(f.extra["focus_width_mm"] - d) <= 1.5  # ...but its width and
        assert abs(f.extra["shadow_width_mm"] - d) <= 1.5  # shadow give the size
        assert f.shadow_contrast >= 0.6


def test_inserted_arc_in_real_image_measured_by_width():
    base = load(_file("gdcm-US-ALOKA-16.dcm"))
    img, t = insert_shadowing_focus(base, (250, 480), 9.0, shadow=True, shadow_factor=0.25, seed=1, shape="arc")
    report = detect(img)
    m = match_findings([t], report.findings, img.spacing_mm)
    assert m.found == 1 and report.count == 1
    f = report.findings[0]
    assert abs(f.extra["focus_width_mm"] - 9.0) <= 1.5 and f.extra["bmode_region"] == 1
    with pytest.raises(InvalidParameterError):
        insert_shadowing_focus(base, (250, 480), 9.0, shape="star")


def _cine(foci_per_frame, spacing_mm=0.1):
    """A cine Image from one phantom frame per entry (fresh speckle each frame)."""
    from calcdetect.image import Image

    frames, valids = [], []
    for k, foci in enumerate(foci_per_frame):
        im, _ = ultrasound_phantom(foci=foci, decoys=[], calipers=False, text=False, seed=100 + k,
                                   spacing_mm=spacing_mm)
        frames.append(im.pixels)
        valids.append(im.valid_mask)
    geometry = dict(im.geometry, frame_axis="time")
    return Image(pixels=np.stack(frames), spacing_mm=(1.0, spacing_mm, spacing_mm), modality="US",
                 valid_mask=np.stack(valids), source="cine", spacing_source="phantom", geometry=geometry)


def test_cine_findings_linked_into_tracks():
    # A drifts 0.3 mm a frame and is missed in frame 3 (one dropped frame is bridged);
    # B appears from frame 4 on; C sits at A's place only in frames 0-1 and 5 after a
    # gap of 3 frames, so it starts a new track when it returns.
    a = lambda k: (12.0, 15.0 + 0.3 * k, 3.0)  # noqa: E731
    b = (20.0, 40.0, 4.0)
    c = (30.0, 28.0, 2.5)
    per_frame = [[a(0), c], [a(1), c], [a(2)], [], [a(4), b], [a(5), b, c], [a(6), b]]
    report = detect_ultrasound(_cine(per_frame))
    truth_frames = [2, 2, 1, 0, 2, 3, 2]
    frames = report.extra["frames"]
    assert frames["findings_per_frame"] == truth_frames
    # tracks: A (frames 0-6), C (0-1), B (4-6), C again (5)
    assert frames["distinct_calcifications"] == 4
    by_track: dict[int, list[int]] = {}
    for f in report.findings:
        by_track.setdefault(f.extra["track"], []).append(f.extra["frame"])
    assert sorted(by_track.values()) == sorted([[0, 1, 2, 4, 5, 6], [0, 1], [4, 5, 6], [5]])
    assert report.to_dict()["findings"][0]["track"] == 1


def test_link_cine_findings_tolerance():
    from calcdetect.detect.ultrasound import link_cine_findings
    from calcdetect.report import Finding

    def f(frame, col_mm, diam=2.0):
        return Finding(id=0, centroid_px=[frame, 0.0, col_mm * 10], centroid_mm=[0.0, col_mm], bbox_px=[0] * 6,
                       equivalent_diameter_mm=diam, long_axis_mm=diam, short_axis_mm=diam, area_mm2=1.0,
                       volume_mm3=None, peak=1.0, mean=1.0, extra={"frame": frame, "num_pixels": 100})

    # 2 mm floor: 1.9 mm apart links, 2.1 mm does not; a 6 mm focus links at 4.4 mm (0.75 x 6)
    assert link_cine_findings([f(0, 0.0), f(1, 1.9)]).tolist() == [1, 1]
    assert link_cine_findings([f(0, 0.0), f(1, 2.1)]).tolist() == [1, 2]
    assert link_cine_findings([f(0, 0.0, 6.0), f(1, 4.4, 6.0)]).tolist() == [1, 1]
    # same frame never links; gap of 3 frames does not link with the default max gap of 2
    assert link_cine_findings([f(0, 0.0), f(0, 0.5)]).tolist() == [1, 2]
    assert link_cine_findings([f(0, 0.0), f(3, 0.0)]).tolist() == [1, 2]
    assert link_cine_findings([f(0, 0.0), f(3, 0.0)], max_gap_frames=3).tolist() == [1, 1]
    assert link_cine_findings([]).size == 0


def test_tissue_level_leaves_out_anechoic_fluid():
    from calcdetect.detect.ultrasound import tissue_level

    rng = np.random.default_rng(0)
    tissue = rng.normal(100, 10, 6000)
    fluid = rng.normal(3, 1, 4000).clip(0)  # a chamber: 40 % of the region, near black
    bright = np.full(60, 240.0)  # interfaces
    level = tissue_level(np.concatenate([tissue, fluid, bright]))
    assert 98 <= level <= 104  # the tissue's median, not pulled down by the fluid
    assert tissue_level(np.zeros(100)) == 0.0 and tissue_level(np.array([])) == 0.0


def test_no_finding_on_a_speckle_in_a_heart_chamber():
    # deid-data's echocardiogram (cine, colour Doppler): a 1 mm speckle of echo level 23
    # in the dark ventricle, over an even darker path, passed the shadow test; soft
    # tissue there is several times brighter, so it is not hyperechoic
    deid_data = pytest.importorskip("deid_data")
    from pathlib import Path

    path = Path(deid_data.__file__).resolve().parent / "data" / "ultrasounds" / "ultrasound-multiframe.dcm"
    report = detect(load(path))
    assert report.count == 0
    assert report.parameters["components_dim"] >= 1
