"""CT loading: real files with their true spacing and HU, series ordering, enhanced CT."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import calcdetect
from calcdetect.errors import InconsistentSeriesError, MissingDecoderError, UnsupportedImageError
from calcdetect.phantoms.ct import ct_phantom, write_dicom_series

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct-abdomen-series"
if not SERIES.exists():  # CI clones main with shared/ beside it; locally it may live elsewhere
    SERIES = Path("/work/shared/data/ct-abdomen-series")
needs_series = pytest.mark.skipif(not SERIES.exists(), reason="shared CT series not available")


def test_ct_small_spacing_hu_and_geometry():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = calcdetect.load(path)
    assert image.modality == "CT"
    assert image.spacing_mm == pytest.approx((0.661468, 0.661468))
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(image.pixels, expected)
    # the first pixel sits at ImagePositionPatient; one column step moves along the row cosine
    np.testing.assert_allclose(image.index_to_patient([0, 0]), [float(v) for v in ds.ImagePositionPatient])
    step = image.index_to_patient([0, 1]) - image.index_to_patient([0, 0])
    np.testing.assert_allclose(step, np.array(ds.ImageOrientationPatient[:3], float) * 0.661468, atol=1e-6)


@pytest.mark.parametrize("name,spacing", [
    ("693_UNCR.dcm", 0.478516), ("693_J2KR.dcm", 0.478516), ("bad_sequence.dcm", 0.287109375),
    ("explicit_VR-UN.dcm", 0.859375), ("J2K_pixelrep_mismatch.dcm", 0.431),
])
def test_real_ct_files_load_with_true_spacing(name, spacing):
    image = calcdetect.load(get_testdata_file(name))
    assert image.shape == (512, 512)
    assert image.spacing_mm == pytest.approx((spacing, spacing))
    # air around the patient and soft tissue inside it: HU, not stored values
    assert image.pixels.min() <= -990
    assert -100 < np.median(image.pixels[image.pixels > -500]) < 200


def test_jpeg2000_decodes_to_the_same_hu_as_uncompressed():
    a = calcdetect.load(get_testdata_file("693_UNCR.dcm"))
    b = calcdetect.load(get_testdata_file("693_J2KR.dcm"))
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_jpeg_ls_decodes_with_the_decoders_extra(monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    path = get_testdata_file("JPEGLSNearLossless_16.dcm")
    ref = pydicom.dcmread(path).pixel_array  # pydicom with pyjpegls (decoders extra)
    image = calcdetect.load(path, modality="XRAY", pixel_size_mm=0.2)
    np.testing.assert_array_equal(image.pixels, ref.astype(np.float32))
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: not self.UID.is_compressed))
    with pytest.raises(MissingDecoderError) as err:
        calcdetect.load(path, modality="XRAY", pixel_size_mm=0.2)
    assert "calcdetect[decoders]" in err.value.message and "JPEGLSNearLossless_16.dcm" in err.value.message


def test_missing_decoder_names_the_extra(monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: not self.UID.is_compressed))
    with pytest.raises(MissingDecoderError) as err:
        calcdetect.load(get_testdata_file("693_J2KR.dcm"))
    assert "calcdetect[decoders]" in err.value.message and "693_J2KR.dcm" in err.value.message
    with pytest.raises(MissingDecoderError) as err:
        calcdetect.load(get_testdata_file("bad_sequence.dcm"))  # JPEG lossless: the GPL extra
    assert "calcdetect[jpeg-gpl]" in err.value.message


def test_enhanced_ct_frames_become_a_volume():
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    image = calcdetect.load(path)
    assert image.shape == (2, 512, 512)
    pos = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in ds.PerFrameFunctionalGroupsSequence]
    pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert image.spacing_mm[1:] == pytest.approx(tuple(float(v) for v in pm.PixelSpacing))
    assert image.spacing_mm[0] == pytest.approx(abs(pos[1][2] - pos[0][2]))
    # ascending along the slice normal (row cosine x column cosine)
    iop = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    np.testing.assert_allclose(image.index_to_patient([0, 0, 0]), min(pos, key=lambda p: p @ normal))
    np.testing.assert_allclose(image.index_to_patient([1, 0, 0]), max(pos, key=lambda p: p @ normal))


@needs_series
def test_real_series_ordered_by_position_with_spacing_from_positions(tmp_path):
    # shuffle names so that file order says nothing
    files = sorted(SERIES.glob("*.dcm"))
    for i, f in enumerate(files):
        shutil.copy(f, tmp_path / f"x{(i * 7) % len(files):03d}.dcm")
    image = calcdetect.load(tmp_path)
    assert image.shape == (20, 512, 512)
    # slices are 3 mm thick but reconstructed every 2 mm: spacing comes from positions
    assert image.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    zs = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files)
    got = [image.index_to_patient([k, 0, 0])[2] for k in range(20)]
    np.testing.assert_allclose(got, zs)
    first = pydicom.dcmread(min(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])))
    np.testing.assert_array_equal(image.pixels[0], first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept))


def test_written_phantom_series_round_trip_and_gap_warning(tmp_path):
    image, _ = ct_phantom((64, 64), (0.7, 0.7), n_slices=6, slice_spacing_mm=1.5, n_nodules=1, noise_hu=0)
    paths = write_dicom_series(image, tmp_path / "s")
    loaded = calcdetect.load(tmp_path / "s")
    assert loaded.spacing_mm == pytest.approx((1.5, 0.7, 0.7))
    np.testing.assert_allclose(loaded.pixels, np.rint(image.pixels), atol=0.51)
    np.testing.assert_allclose(loaded.affine, image.affine, atol=1e-4)
    # a missing slice is a gap: warned, still loaded
    paths[2].unlink()
    gappy = calcdetect.load(tmp_path / "s")
    assert gappy.shape[0] == 5 and any("irregular" in w for w in gappy.warnings)


def test_duplicate_slices_are_dropped_with_a_warning(tmp_path):
    image, _ = ct_phantom((32, 32), (1.0, 1.0), n_slices=4, n_nodules=0)
    paths = write_dicom_series(image, tmp_path / "s")
    ds = pydicom.dcmread(paths[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "s" / "dup.dcm")
    loaded = calcdetect.load(tmp_path / "s")
    assert loaded.shape[0] == 4 and any("duplicate" in w for w in loaded.warnings)
    # the warning names the dropped file and the one it duplicates
    warning = next(w for w in loaded.warnings if "duplicate" in w)
    assert "dup.dcm" in warning and paths[1].name in warning and "same position as" in warning


def test_a_damaged_duplicate_does_not_replace_the_good_slice(tmp_path):
    """A truncated copy of a slice (a re-transfer gone wrong) that sorts before the good
    file is the one dropped: the series loads as without it, and the warning names it."""
    image, _ = ct_phantom((32, 32), (1.0, 1.0), n_slices=4, n_nodules=0)
    paths = write_dicom_series(image, tmp_path / "s")
    clean = calcdetect.load(tmp_path / "s")
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "copy.dcm")
    data = (tmp_path / "copy.dcm").read_bytes()
    (tmp_path / "s" / "0_copy.dcm").write_bytes(data[: len(data) - 300])  # sorts first, pixels cut short
    loaded = calcdetect.load(tmp_path / "s")
    assert np.array_equal(loaded.pixels, clean.pixels) and loaded.shape == clean.shape
    warning = next(w for w in loaded.warnings if "duplicate" in w)
    assert f"0_copy.dcm (same position as {paths[2].name})" in warning


def test_folder_with_two_series_says_which_and_how(tmp_path):
    a, _ = ct_phantom((32, 32), (1.0, 1.0), n_slices=3, n_nodules=0)
    write_dicom_series(a, tmp_path / "a", series_description="first")
    write_dicom_series(a, tmp_path / "b", series_description="second")
    with pytest.raises(InconsistentSeriesError) as err:
        calcdetect.load(tmp_path)
    msg = err.value.message
    assert "2 series" in msg and "first" in msg and "second" in msg and "--series" in msg
    uid = pydicom.dcmread(next((tmp_path / "b").glob("*.dcm"))).SeriesInstanceUID
    assert calcdetect.load(tmp_path, series_uid=uid).shape == (3, 32, 32)


def test_non_image_dicom_is_refused_clearly():
    with pytest.raises(UnsupportedImageError) as err:
        calcdetect.load(get_testdata_file("rtplan.dcm"))
    assert "rtplan.dcm" in err.value.message and "no" in err.value.message


def test_missing_spacing_means_no_mm(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelSpacing = [0, 0]
    ds.save_as(tmp_path / "zero.dcm")
    image = calcdetect.load(tmp_path / "zero.dcm")
    assert image.spacing_mm is None and any("PixelSpacing" in w for w in image.warnings)
    given = calcdetect.load(tmp_path / "zero.dcm", pixel_size_mm=0.5)
    assert given.spacing_mm == (0.5, 0.5)


def test_nifti_volume_matches_the_dicom_geometry(tmp_path):
    nib = pytest.importorskip("nibabel")
    image, truth = ct_phantom((48, 56), (0.8, 0.7), n_slices=5, slice_spacing_mm=2.0, n_nodules=1, seed=2)
    # write it as NIfTI: (i, j, k) = (col, row, slice), RAS affine
    lps = image.affine
    ras_cols = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    affine = np.eye(4)
    affine[:, 0], affine[:, 1], affine[:, 2], affine[:, 3] = ras_cols[:, 2], ras_cols[:, 1], ras_cols[:, 0], ras_cols[:, 3]
    nib.save(nib.Nifti1Image(image.pixels.transpose(2, 1, 0).copy(), affine), tmp_path / "v.nii.gz")
    loaded = calcdetect.load(tmp_path / "v.nii.gz")
    assert loaded.spacing_mm == pytest.approx((2.0, 0.8, 0.7))
    np.testing.assert_allclose(loaded.pixels, image.pixels)
    np.testing.assert_allclose(loaded.index_to_patient([3, 10, 20]), image.index_to_patient([3, 10, 20]), atol=1e-5)


def test_nifti_absurd_voxel_size_means_no_mm(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.full((8, 8, 3), -100.0, np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1e-30, 1e-30, 1e-30, 1.0])), tmp_path / "tiny.nii")
    image = calcdetect.load(tmp_path / "tiny.nii")
    assert image.spacing_mm is None and image.affine is None
    assert any("no usable voxel size" in w for w in image.warnings)


# ----------------------------------------------------------------- series loading fast paths
def _testdata_headers():
    names = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
             "693_J2KR.dcm", "explicit_VR-UN.dcm", "eCT_Supplemental.dcm", "rtdose.dcm")
    return [p for p in (get_testdata_file(n) for n in names) if p]


@pytest.mark.parametrize("path", _testdata_headers(), ids=lambda p: Path(p).name)
def test_fast_header_values_equal_pydicom_values(path):
    """fast_values reads canonical values from the raw bytes: exactly what pydicom gives
    (type included), and without a warning pydicom would have raised."""
    import warnings

    from calcdetect.io.ct import _SCAN_KEYWORDS
    from calcdetect.io.dicom import dicom_value, fast_values

    fast = fast_values(pydicom.dcmread(path, stop_before_pixels=True), _SCAN_KEYWORDS)
    ref = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword, value in fast.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            expected = dicom_value(ref, keyword)
        assert type(value) is type(expected) and value == expected, keyword


def test_fast_header_values_leave_unusual_spellings_to_pydicom():
    from calcdetect.io.dicom import fast_values

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    for keyword, text in (("RescaleSlope", "abc"), ("ImagePositionPatient", "1\\2\\nan"),
                          ("PixelSpacing", " 0.5\\0.5"), ("RescaleIntercept", "1234567890.1234567"),
                          ("InstanceNumber", "1.5")):
        raw = text.encode() + (b" " if len(text) % 2 else b"")
        tag = pydicom.datadict.tag_for_keyword(keyword)
        ds._dict[tag] = pydicom.dataelem.RawDataElement(
            pydicom.tag.Tag(tag), pydicom.datadict.dictionary_VR(tag), len(raw), raw, 0, False, True)
    fast = fast_values(ds, ("RescaleSlope", "ImagePositionPatient", "PixelSpacing", "RescaleIntercept",
                            "InstanceNumber", "Rows"))
    assert fast == {"Rows": 128}


@pytest.mark.parametrize("stored,signed,slope,intercept,implicit", [
    (12, 0, 1.0, -1024.0, False), (12, 1, 2.5, 3.0, False), (16, 1, 1.0, 0.0, True), (16, 0, 0.5, -1000.5, False),
])
def test_series_pixels_equal_single_file_loads(tmp_path, stored, signed, slope, intercept, implicit):
    """The series fast path (raw bytes, reused buffers, in-place rescale) gives the same
    float32 values as loading every slice on its own through pydicom; high bits beyond
    BitsStored are masked or sign-extended as pydicom does."""
    image, _ = ct_phantom((24, 40), (0.8, 0.8), n_slices=5, n_nodules=0)
    paths = write_dicom_series(image, tmp_path / "s")
    rng = np.random.default_rng(0)
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = stored, stored - 1, signed
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = rng.integers(0, 65536, size=(24, 40)).astype(np.uint16).tobytes()
        if implicit:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.save_as(tmp_path / "s" / f"z{(i * 3) % 5}.dcm", implicit_vr=implicit, little_endian=True,
                   enforce_file_format=True)
        p.unlink()
    series = calcdetect.load(tmp_path / "s")
    # axial slices: ascending z is ascending along the normal
    slices = sorted((calcdetect.load(p) for p in (tmp_path / "s").iterdir()),
                    key=lambda im: im.index_to_patient([0, 0])[2])
    assert series.shape == (5, 24, 40)
    np.testing.assert_array_equal(series.pixels, np.stack([s.pixels for s in slices]))


def test_series_with_a_stray_file_loads_and_bad_rescale_names_its_file(tmp_path):
    image, _ = ct_phantom((32, 32), (1.0, 1.0), n_slices=4, n_nodules=0)
    paths = write_dicom_series(image, tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("not an image")
    loaded = calcdetect.load(tmp_path / "s")  # 5 files, 4 slices: a volume of 4
    assert loaded.shape == (4, 32, 32)
    ds = pydicom.dcmread(paths[2])
    ds.RescaleSlope = 0
    ds.save_as(paths[2])
    with pytest.raises(calcdetect.CalcdetectError) as err:
        calcdetect.load(tmp_path / "s")
    assert paths[2].name in err.value.message and "RescaleSlope" in err.value.message


def _scan_cases():
    import glob
    import os

    base = os.path.dirname(get_testdata_file("CT_small.dcm"))
    files = sorted(glob.glob(os.path.join(base, "*.dcm")))
    files += sorted(str(p) for p in (Path(__file__).parent / "corpus").iterdir() if p.suffix == ".dcm")
    if SERIES.exists():
        files += [str(p) for p in sorted(SERIES.iterdir())[:3]]
    return files


def test_quick_header_scan_equals_the_full_pydicom_scan():
    """The series scan's quick header walk keeps the elements a load reads as the raw
    elements pydicom holds: the same errors, series keys, values and pixel layouts as a
    full pydicom parse, on pydicom's test files (sequences, private tags, implicit VR,
    big endian, deflated, compressed) and the damaged regression corpus."""
    import math
    import warnings

    from calcdetect.io import ct
    from calcdetect.io.dicom import dicom_value

    def same(a, b):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    quick = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in _scan_cases():
            path = Path(f)
            full, fast = ct._scan_one(path, False), ct._scan_one(path, True)
            quick += ct._quick_scan(path) is not None
            assert (full[3] is None) == (fast[3] is None), path.name
            if full[3] is not None:
                assert full[3].message == fast[3].message
                continue
            assert full[2] == fast[2] or all(same(full[2][k], fast[2][k]) for k in full[2]), path.name
            assert ct.series_key(full[1], full[2]) == ct.series_key(fast[1], fast[2]), path.name
            assert ct._is_image(full[1]) == ct._is_image(fast[1]), path.name
            assert ct._raw_layout(full[1], full[2]) == ct._raw_layout(fast[1], fast[2]), path.name
            for keyword in ct._QUICK_KEYWORDS:
                assert same(dicom_value(full[1], keyword), dicom_value(fast[1], keyword)), (path.name, keyword)
    assert quick >= 20  # the quick walk did read most of them


def test_series_skips_the_finite_scan_only_when_no_rescale_can_overflow(tmp_path, monkeypatch):
    """A series of integer slices whose rescale cannot overflow float32 is known finite
    without a second pass; one whose rescale does overflow still gets the Image's NaN/inf
    warning and fill, as before."""
    import warnings

    from calcdetect import image as image_module
    from calcdetect.io.ct import _finite_hu

    assert _finite_hu(np.dtype("<i2"), 1.0, -1024.0) and _finite_hu(np.dtype("<u2"), 1e33, -1e37)
    assert not _finite_hu(np.dtype("<i2"), 1e35, 0.0) and not _finite_hu(np.dtype("<f4"), 1.0, 0.0)
    image, _ = ct_phantom((16, 16), (0.8, 0.8), n_slices=3, n_nodules=0)
    scans = []
    real_scan = image_module._all_finite
    monkeypatch.setattr(image_module, "_all_finite", lambda p: scans.append(p.shape) or real_scan(p))
    for slope, overflow in ((1.0, False), (1e35, True)):
        folder = tmp_path / f"s{slope:g}"
        for p in write_dicom_series(image, folder):
            ds = pydicom.dcmread(p)
            ds.RescaleSlope, ds.RescaleIntercept = slope, 0
            ds.PixelData = np.repeat(np.array([1, 30000], np.int16), 128).tobytes()  # 30000 overflows
            ds.save_as(p)
        scans.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow warning
            loaded = calcdetect.load(folder)
        assert scans == ([(3, 16, 16)] if overflow else [])
        assert any("NaN or infinite" in w for w in loaded.warnings) == overflow
        assert np.isfinite(loaded.pixels).all()


def test_series_load_restores_the_garbage_collector(tmp_path):
    """The collector is paused during a series load and left as it was: on after a load,
    after a failed load, and off if the caller had turned it off."""
    import gc

    image, _ = ct_phantom((16, 16), (0.8, 0.8), n_slices=3, n_nodules=0)
    write_dicom_series(image, tmp_path / "s")
    (tmp_path / "empty").mkdir()
    was = gc.isenabled()
    try:
        gc.enable()
        calcdetect.load(tmp_path / "s")
        with pytest.raises(calcdetect.CalcdetectError):
            calcdetect.load(tmp_path / "empty")
        assert gc.isenabled()
        gc.disable()
        calcdetect.load(tmp_path / "s")
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_parallel_each_raises_like_an_executor_map(workers):
    """The series threads raise what ThreadPoolExecutor.map would: the lowest failing
    index's exception, after every earlier index ran; an interrupt too."""
    import threading
    import time

    from calcdetect.io.ct import _parallel_each

    ran, lock = set(), threading.Lock()

    def fn(i):
        time.sleep(0.001 * (i % 3))
        with lock:
            ran.add(i)
        if i in (7, 12, 30):
            raise ValueError(i)

    with pytest.raises(ValueError) as err:
        _parallel_each(fn, 40, workers)
    assert err.value.args == (7,) and set(range(8)) <= ran
    ran.clear()
    _parallel_each(lambda i: ran.add(i), 25, workers)
    assert ran == set(range(25))

    def interrupted(i):
        ran.add(i)
        if i == 9:
            raise KeyboardInterrupt

    ran.clear()
    with pytest.raises(KeyboardInterrupt):
        _parallel_each(interrupted, 20, workers)
    assert set(range(10)) <= ran
    _parallel_each(lambda i: None, 0, workers)


def test_a_lossless_copy_of_a_slice_wins_over_a_lossy_one(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    # the same head slice four times: 693_UNCI holds the pixels of the 339:1 JPEG 2000
    # copy (LossyImageCompression 01), decoded; UNCR and J2KR are lossless
    for name in ("693_UNCI.dcm", "693_J2KI.dcm", "693_J2KR.dcm", "693_UNCR.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    image = calcdetect.load(tmp_path)
    # copies of one slice load as that slice: no slice spacing is made up for a volume
    assert image.ndim == 2 and image.spacing_mm == pytest.approx((0.478516, 0.478516))
    assert image.metadata["files"] == [str(tmp_path / "693_UNCR.dcm")]  # lossless, and the larger file
    assert "LossyImageCompression" not in image.metadata
    assert any("693_UNCI.dcm (same position as 693_UNCR.dcm)" in w for w in image.warnings)
    # with only lossy copies the series says it is lossy, whichever copy is kept
    for name in ("693_J2KR.dcm", "693_UNCR.dcm"):
        (tmp_path / name).unlink()
    assert calcdetect.load(tmp_path).metadata["LossyImageCompression"] == "01"
