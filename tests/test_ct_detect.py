"""CT detection against ground truth: phantoms, hand-computed scores, real anatomy."""

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import calcdetect
from calcdetect.detect.ct import agatston_weight
from calcdetect.phantoms.ct import ct_phantom
from calcdetect.validation import match_findings

SERIES = Path("/work/shared/data/ct-abdomen-series")
for _p in (Path(__file__).resolve().parents[2] / "shared" / "data" / "ct-abdomen-series",):
    if _p.exists():
        SERIES = _p


def test_phantom_slice_found_measured_and_located():
    image, truth = ct_phantom(diameters_mm=[3.0, 5.0, 8.0, 12.0], nodule_hu=(500, 800), seed=3)
    report = calcdetect.detect(image)
    m = match_findings(truth, report.findings, image.spacing_mm)
    assert m.found == 4 and not m.false
    # size within a pixel or two (0.8 mm pixels)
    assert max(abs(e) for e in m.size_errors_mm) <= 1.0
    for ti, fi in m.matched:
        f, t = report.findings[fi], truth[ti]
        assert f.side == t["side"]
        assert f.region in ("subcutaneous", "dermal")
        assert f.depth_mm == pytest.approx(t["depth_mm"], abs=1.0)
        assert f.centroid_mm[:2] == pytest.approx(t["centroid_mm"][:2], abs=0.5)
        assert f.volume_mm3 is None and f.area_mm2 > 0


def test_phantom_series_in_patient_coordinates():
    image, truth = ct_phantom(n_slices=14, diameters_mm=[2.5, 4.0, 7.0], seed=5)
    report = calcdetect.detect(image)
    m = match_findings(truth, report.findings, image.spacing_mm)
    assert m.found == 3 and not m.false
    for ti, fi in m.matched:
        f, t = report.findings[fi], truth[ti]
        assert np.allclose(f.centroid_mm, t["centroid_mm"], atol=1.0)
        if t["diameter_mm"] >= 4:  # volume needs a nodule several voxels across (2 mm slices)
            assert f.volume_mm3 == pytest.approx(np.pi / 6 * t["diameter_mm"] ** 3, rel=0.5)
        assert f.equivalent_diameter_mm == pytest.approx(t["diameter_mm"], abs=1.2)


def test_bone_table_and_arms_are_not_findings():
    image, _ = ct_phantom((320, 420), arms=True, n_nodules=0, seed=1)
    assert calcdetect.detect(image).count == 0
    # through a series ribs are tubes and the spine is large: not soft tissue either
    series, _ = ct_phantom((320, 420), arms=True, n_nodules=0, n_slices=16, seed=1)
    assert calcdetect.detect(series).count == 0
    assert calcdetect.detect(series, region="soft-tissue").count == 0
    # "all" is the calcium-scoring convention: bone counts there
    assert calcdetect.detect(image, region="all").count > 0


def _block_image(peak_hu, spacing=(0.5, 0.5), n_slices=None, slice_step=1.5):
    """A fat body with one uniform 10 x 10 pixel block of ``peak_hu``."""
    yy, xx = np.mgrid[:120, :120]
    body = ((yy - 60) / 55) ** 2 + ((xx - 60) / 55) ** 2 <= 1
    plane = np.where(body, -100.0, -1000.0)
    plane[20:30, 55:65] = peak_hu
    if n_slices is None:
        return calcdetect.Image(plane, spacing, "CT")
    vol = np.repeat(plane[None], n_slices, axis=0)
    vol[0] = np.where(body, -100.0, -1000.0)
    vol[-1] = vol[0]
    return calcdetect.Image(vol, (slice_step, *spacing), "CT")


@pytest.mark.parametrize("peak,weight", [(150, 1), (250, 2), (350, 3), (600, 4)])
def test_agatston_by_hand_on_a_slice(peak, weight):
    report = calcdetect.detect(_block_image(peak), region="all", size_method="threshold")
    assert report.count == 1
    area = 100 * 0.25  # 10 x 10 pixels of 0.5 mm
    assert report.findings[0].extra["agatston"] == pytest.approx(area * weight)
    assert report.scores["agatston"] == pytest.approx(area * weight)
    assert report.findings[0].area_mm2 == pytest.approx(area)
    assert report.findings[0].equivalent_diameter_mm == pytest.approx(np.sqrt(4 * area / np.pi))


def test_agatston_volume_and_mass_on_a_series():
    image = _block_image(500, n_slices=5, slice_step=1.5)  # block on 3 inner slices
    report = calcdetect.detect(image, region="all", mass_calibration=0.001)
    area = 25.0
    # 3 slices x area x weight 4, scaled from 1.5 mm slices to the 3 mm convention
    assert report.scores["agatston"] == pytest.approx(3 * area * 4 * 1.5 / 3.0)
    assert report.scores["volume_mm3"] == pytest.approx(3 * area * 1.5)
    assert report.scores["mass_mg"] == pytest.approx(0.001 * 3 * area * 1.5 * 500)
    assert report.findings[0].volume_mm3 == pytest.approx(3 * area * 1.5)


def test_small_cross_sections_do_not_score():
    w = agatston_weight(np.array([129.9, 130, 199, 200, 399.5, 400, 2000]))
    np.testing.assert_array_equal(w, [0, 1, 1, 2, 3, 4, 4])


def test_threshold_and_mask_options():
    image, truth = ct_phantom(diameters_mm=[4.0, 6.0], nodule_hu=300.0, seed=2)
    assert calcdetect.detect(image, threshold_hu=350).count == 0
    t = truth[0]
    roi = np.zeros(image.shape, bool)
    r, c = (int(round(v)) for v in t["centroid_px"])
    roi[r - 8:r + 8, c - 8:c + 8] = True
    only = calcdetect.detect(image, mask=roi)
    assert only.count == 1 and abs(only.findings[0].centroid_px[0] - r) < 1.5


def test_no_spacing_gives_null_mm_and_a_warning():
    image, _ = ct_phantom(diameters_mm=[6.0], seed=4)
    bare = calcdetect.Image(image.pixels, None, "CT")
    report = calcdetect.detect(bare)
    d = report.to_dict()
    assert d["spacing_mm"] is None and d["count"] == 1
    f = d["findings"][0]
    for key in ("equivalent_diameter_mm", "long_axis_mm", "area_mm2", "centroid_mm", "depth_mm"):
        assert f[key] is None
    assert d["scores"]["agatston"] is None
    assert any("no pixel spacing" in w for w in d["warnings"])


def test_metal_is_set_aside():
    image = _block_image(3000)
    report = calcdetect.detect(image, region="all")
    assert report.count == 0 and any("metal" in w for w in report.warnings)


def test_report_contract_fields():
    image, _ = ct_phantom(diameters_mm=[5.0, 7.0], seed=6)
    d = json.loads(calcdetect.detect(image).to_json())
    for key in ("source", "modality", "shape", "spacing_mm", "count", "warnings", "findings", "distribution", "scores"):
        assert key in d
    for key in ("id", "centroid_px", "centroid_mm", "bbox_px", "equivalent_diameter_mm", "long_axis_mm",
                "short_axis_mm", "area_mm2", "volume_mm3", "peak", "mean", "side", "depth_mm", "region", "agatston"):
        assert key in d["findings"][0]
    assert set(d["distribution"]) >= {"pattern", "by_side", "by_region", "size_mm", "summary"}
    assert set(d["scores"]) >= {"agatston", "volume_mm3", "mass_mg"}
    assert [f["id"] for f in d["findings"]] == [1, 2]


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_UNCR.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm",
                                  "J2K_pixelrep_mismatch.dcm", "eCT_Supplemental.dcm"])
def test_no_false_alarm_on_real_anatomy(name):
    """Skull, spine, ribs, table, head holder, sinuses and contrast: no skin finding."""
    report = calcdetect.detect(calcdetect.load(get_testdata_file(name)))
    assert report.count == 0, [f.to_dict() for f in report.findings]


@pytest.mark.skipif(not SERIES.exists(), reason="shared CT series not available")
def test_real_series_few_false_findings_and_inserted_ones_found():
    from calcdetect.phantoms.ct import insert_calcifications

    image = calcdetect.load(SERIES)
    base = calcdetect.detect(image)
    assert base.count <= 2
    # two calcifications in the subcutaneous fat of the back and the flank (found by HU)
    nodules = [{"centroid_px": [10, 403, 226], "diameter_mm": 5.0, "hu": 600.0},
               {"centroid_px": [6, 264, 87], "diameter_mm": 3.0, "hu": 700.0}]
    for n in nodules:
        z, r, c = n["centroid_px"]
        assert -200 < image.pixels[z, r, c] < -30, "test nodules must sit in fat"
    inserted, truth = insert_calcifications(image, nodules)
    report = calcdetect.detect(inserted)
    m = match_findings(truth, report.findings, image.spacing_mm)
    assert m.found == 2
    assert max(abs(e) for e in m.size_errors_mm) <= 1.0


def _anatomy_volumes():
    image, _ = ct_phantom(diameters_mm=[3.0, 6.0], nodule_hu=(500, 800), seed=5)
    hu = image.pixels[None].astype(np.float32)
    inside = hu[:, hu.shape[1] // 2 - 30:hu.shape[1] // 2 + 30, hu.shape[2] // 2 - 60:hu.shape[2] // 2 + 60].copy()
    fov_inside = np.full((3, 80, 90), 40.0, np.float32)  # the field of view lies inside the body
    fov_inside[:, 20:30, :] = -100.0
    return [(hu, image.spacing_mm), (hu[:, 10:-10, 40:].copy(), image.spacing_mm), (inside, image.spacing_mm),
            (fov_inside, (0.8, 0.8)), (hu[:, ::3, ::3].copy(), tuple(3 * s for s in image.spacing_mm))]


@pytest.mark.parametrize("case", range(5))
def test_anatomy_without_depth_map_is_the_same(case):
    """The detector's path (no depth map: erosion for the dermis test, depths computed at
    the voxels asked about) gives exactly the maps and depths of the full anatomy."""
    from calcdetect.detect.anatomy import ct_anatomy

    hu, spacing = _anatomy_volumes()[case]
    full = ct_anatomy(hu, spacing)
    lazy = ct_anatomy(hu, spacing, depth_map=False)
    assert lazy.depth_mm is None and lazy.fov is None  # all cases are isotropic
    for key in ("body", "deep", "internal_air"):
        assert np.array_equal(getattr(full, key), getattr(lazy, key)), key
    assert np.array_equal(full.skin_missing(), lazy.skin_missing())
    assert np.array_equal(full.skin_missing(), [np.isnan(d).any() for d in full.depth_mm])
    z, y, x = np.indices(hu.shape).reshape(3, -1)[:, ::7]
    assert np.array_equal(full.depth_mm[z, y, x], lazy.depth_at(z, y, x), equal_nan=True)
    if case == 3:
        assert full.skin_missing().all() and np.isnan(lazy.depth_at(z, y, x)).any()


def _slab():
    """A wide slab of tissue in air, two slices: a point's nearest air may lie across the
    slab from its neighbours' (the window test's hard case)."""
    hu = np.full((2, 140, 330), -1000.0, np.float32)
    hu[:, 40:81, 20:301] = 40.0
    hu[1, 60:66, 100:104] = 300.0
    return hu, (0.7, 0.7)


@pytest.mark.parametrize("case", [0, 1, 2, 3, "slab"])
def test_reduced_depths_from_a_window_equal_those_from_the_whole_slice(case):
    """depth_at of the reduced anatomy settles each slice's points on a window around
    them when it can; the depths equal those from the whole slice's air edges, for
    single points (small windows), pairs and many points of a slice at once."""
    from calcdetect.detect.anatomy import _depth_points, ct_anatomy_reduced

    hu, spacing = _slab() if case == "slab" else _anatomy_volumes()[case]
    red = ct_anatomy_reduced(hu, spacing, 2)
    ref = ct_anatomy_reduced(hu, spacing, 2)  # its whole-slice edges, computed apart
    z, y, x = np.nonzero(np.asarray(red.body))
    pick = np.random.default_rng(7).choice(z.size, min(60, z.size), replace=False)
    px = float(np.mean(spacing))

    def whole(i):
        if red.no_skin[z[i]]:
            return np.nan
        return _depth_points(ref.refine_edges(int(z[i])), y[i:i + 1], x[i:i + 1], px)[0]

    expected = np.array([whole(i) for i in pick], np.float32)
    # a fresh anatomy for each query: one that fell back on a slice's whole edges
    # keeps them for that slice, and would no longer test the window
    for j, i in enumerate(pick[:20]):
        fresh = ct_anatomy_reduced(hu, spacing, 2)
        assert np.array_equal(fresh.depth_at(z[i:i + 1], y[i:i + 1], x[i:i + 1]), expected[j:j + 1],
                              equal_nan=True)
    # pairs of points of a slice: the window holds air near one of them, while the
    # other's nearest air may lie outside it (then the whole slice decides)
    for j in range(0, 40, 2):
        a, b = pick[j], pick[j + 1]
        if z[a] == z[b]:
            fresh = ct_anatomy_reduced(hu, spacing, 2)
            pair = np.array([a, b])
            assert np.array_equal(fresh.depth_at(z[pair], y[pair], x[pair]), expected[j:j + 2], equal_nan=True)
    assert np.array_equal(red.depth_at(z[pick], y[pick], x[pick]), expected, equal_nan=True)
    if not red.no_skin.all():  # cases 2 and 3: no skin visible, every depth NaN
        assert np.nanmax(expected) > 2.0  # points below the skin, not only on it


def test_deep_cores_in_mosaics_equal_those_of_single_slices(monkeypatch):
    """The deep core's last steps run on mosaics of several slices; each slice's core is
    the one it gets alone (a mosaic of one), with bodies of different sizes and crops
    cut by the image border, where the outside of a crop must not erode it."""
    from calcdetect.detect import anatomy

    rng = np.random.default_rng(2)
    hu = np.full((7, 120, 150), -1000.0, np.float32)
    for k in range(7):
        r = 30 + 6 * k
        yy, xx = np.mgrid[:120, :150]
        body = ((yy - 60) / (r * 0.8)) ** 2 + ((xx - 75 + 4 * k) / r) ** 2 < 1
        hu[k][body] = -100.0  # fat
        hu[k][body & (((yy - 60) / (r * 0.55)) ** 2 + ((xx - 75 + 4 * k) / (r * 0.7)) ** 2 < 1)] = 40.0  # muscle
        hu[k][rng.random((120, 150)) < 0.01] += 300.0  # dense specks
    hu[4:, :, :20] = 40.0  # tissue cut by the image border
    runs = {}
    for batch in (1, 3, 12):
        monkeypatch.setattr(anatomy, "DEEP_CORE_BATCH", batch)
        runs[batch] = anatomy.ct_anatomy(hu, (1.5, 1.5), depth_map=False).deep
    assert runs[1].any() and runs[1][4:, :, 0].any()  # a core, and one at the border
    assert np.array_equal(runs[1], runs[3]) and np.array_equal(runs[1], runs[12])


def test_anatomy_pipeline_raises_the_errors_of_either_thread(monkeypatch):
    """The anatomy works on the slices on one thread and on the deep-core mosaics of the
    slices done on another: an error on either reaches the caller, and no thread is
    left behind."""
    import threading

    from calcdetect.detect import anatomy

    hu = np.full((40, 60, 70), -1000.0, np.float32)
    hu[:, 10:50, 10:60] = 40.0
    monkeypatch.setenv("CALCDETECT_THREADS", "2")
    before = threading.active_count()
    assert anatomy.ct_anatomy(hu, (1.5, 1.5), depth_map=False).deep.any()  # the pipeline runs

    real_cores = anatomy._deep_cores

    def failing_cores(jobs, deep, **kw):
        if kw.get("only") and 30 in kw["only"]:
            raise ValueError("mosaic failed")
        return real_cores(jobs, deep, **kw)

    monkeypatch.setattr(anatomy, "_deep_cores", failing_cores)
    with pytest.raises(ValueError, match="mosaic failed"):
        anatomy.ct_anatomy(hu, (1.5, 1.5), depth_map=False)
    monkeypatch.setattr(anatomy, "_deep_cores", real_cores)

    real_crop = anatomy._crop_window
    calls = []

    def failing_crop(plane, *a, **kw):
        calls.append(1)
        if len(calls) == 25:
            raise RuntimeError("slice failed")
        return real_crop(plane, *a, **kw)

    monkeypatch.setattr(anatomy, "_crop_window", failing_crop)
    with pytest.raises(RuntimeError, match="slice failed"):
        anatomy.ct_anatomy(hu, (1.5, 1.5), depth_map=False)
    assert threading.active_count() == before


def test_anatomy_factor():
    from calcdetect.detect.anatomy import anatomy_factor

    assert [anatomy_factor((p, p)) for p in (0.43, 0.48, 0.6, 0.78, 0.86, 0.98, 1.07, 3.1)] == [3, 3, 2, 2, 2, 2, 1, 1]
    assert anatomy_factor((0.78, 0.78), 3.0) == 4 and anatomy_factor((0.0, 0.0)) == 1


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_reduced_anatomy(case):
    """Factor 1 is the detector's full-resolution path exactly; factor 2 keeps the maps
    close, and depths (refined at full resolution) agree with the full map near the skin."""
    from calcdetect.detect.anatomy import ct_anatomy, ct_anatomy_reduced

    hu, spacing = _anatomy_volumes()[case]
    full = ct_anatomy(hu, spacing)
    one = ct_anatomy_reduced(hu, spacing, 1)
    for key in ("body", "deep", "internal_air"):
        assert np.array_equal(getattr(full, key), getattr(one, key)), key
    red = ct_anatomy_reduced(hu, spacing, 2)
    assert red.factor == 2 and red.body.shape == hu.shape
    assert np.array_equal(red.skin_missing(), full.skin_missing())
    for key in ("body", "deep", "internal_air"):
        assert (getattr(full, key) == getattr(red, key)).mean() > 0.98, key
    z, y, x = np.nonzero(full.body & red.body)
    d_full, d_red = full.depth_mm[z, y, x], red.depth_at(z, y, x)
    assert np.array_equal(np.isnan(d_full), np.isnan(d_red))
    ok = ~np.isnan(d_full) & (d_full < 20)
    if ok.any():
        assert np.median(np.abs(d_full[ok] - d_red[ok])) <= 0.1
        assert np.percentile(np.abs(d_full[ok] - d_red[ok]), 90) <= 1.0
    exact = red.exact_slice(0)
    assert np.array_equal(exact.body[0], full.body[0]) and np.array_equal(exact.deep[0], full.deep[0])


def test_reduced_anatomy_finds_the_same_phantom_calcifications():
    image, truth = ct_phantom(n_slices=10, diameters_mm=[2.0, 3.0, 5.0, 8.0], seed=11)
    reduced = calcdetect.detect(image)
    full = calcdetect.detect(image, anatomy_pixel_mm=None)
    for report in (reduced, full):
        m = match_findings(truth, report.findings, image.spacing_mm)
        assert m.found == 4 and not m.false
    assert [f.region for f in reduced.findings] == [f.region for f in full.findings]


def test_body_parts_shortcut_matches_the_distance_transform():
    """_keep_body_parts skips the distance transform when a cheap erosion already
    decides; the kept parts must be those the transform alone keeps."""
    import cv2

    from calcdetect.detect.anatomy import _keep_body_parts

    def reference(mask, r, frac, abs_area):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
        if n <= 1:
            return np.zeros(mask.shape, bool)
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
        thick = np.bincount(labels[dist >= r], minlength=n) > 0
        thick[0] = False
        if not thick.any():
            return np.zeros(mask.shape, bool)
        keep = thick & ((area >= frac * area[thick].max()) | (area >= abs_area))
        return keep[labels]

    rng = np.random.default_rng(0)
    for trial in range(40):
        mask = np.zeros((120, 160), np.uint8)
        for _ in range(rng.integers(1, 8)):
            x, y = (int(v) for v in rng.integers(0, 160, 2))
            if rng.random() < 0.5:
                cv2.circle(mask, (x, y % 120), int(rng.integers(2, 30)), 1, -1)
            else:  # thin plates and bars (a table top)
                w, h = int(rng.integers(3, 120)), int(rng.integers(1, 14))
                mask[y % 120:y % 120 + h, x:x + w] = 1
        r = float(rng.choice([3.0, 6.4, 7.5]))
        frac, abs_area = float(rng.choice([0.02, 0.3])), float(rng.choice([50.0, 2000.0]))
        assert np.array_equal(_keep_body_parts(mask, r, frac, abs_area), reference(mask, r, frac, abs_area)), trial


def test_touching_air_on_its_box_matches_the_whole_crop():
    import cv2

    from calcdetect.detect.anatomy import _disk, _touching_air

    rng = np.random.default_rng(1)
    for trial in range(30):
        tissue = (rng.random((60, 80)) < 0.02).astype(np.uint8)
        tissue = cv2.dilate(tissue, _disk(int(rng.integers(1, 4))))
        inner = (cv2.dilate((rng.random((60, 80)) < 0.01).astype(np.uint8), _disk(2)) > 0) & (tissue == 0)
        if trial % 5 == 0:
            inner[:, :] = False
        n, lab = cv2.connectedComponents(inner.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        touching = np.zeros(n, bool)
        touching[lab[(cv2.dilate(tissue, _disk(1)) > 0) & inner]] = True
        touching[0] = False
        assert np.array_equal(_touching_air(inner, tissue), touching[lab]), trial


@pytest.mark.parametrize("with_box", [False, True])
def test_rim_in_deep_matches_a_fresh_rim_statistics(with_box):
    """The deep-core rim fraction recomputed from the kept rim voxels (after the deep
    core of some slices was refined) equals that of a full new _rim_stats."""
    from calcdetect.detect.ct import _label_box, _measure, _rim_in_deep, _rim_stats
    from calcdetect.measure import label

    rng = np.random.default_rng(5)
    hu = rng.normal(0.0, 150.0, (9, 60, 70)).astype(np.float32)
    hu[:, :4] = 0.0  # no labels near the top rows: a box smaller than the slice
    labels, n = label(hu >= 200.0)
    assert n > 5
    table = _measure(labels, hu, (1.0, 0.7, 0.7))
    box = _label_box(table, labels.shape) if with_box else None
    air = rng.random(hu.shape) < 0.1
    deep = rng.random(hu.shape) < 0.5
    rim: dict = {}
    first = _rim_stats(labels, hu, air, deep, table["label"], 130.0, box, rim=rim)
    assert np.array_equal(first[2], _rim_in_deep(rim, deep, table["label"]))
    # only some components' rims gathered: theirs are the same, the others' are 0
    needed = np.arange(n) % 3 == 0
    part = _rim_stats(labels, hu, air, deep, table["label"], 130.0, box, needed=needed)
    for full, some in zip(first, part):
        assert np.array_equal(some[needed], full[needed]) and not some[~needed].any()
        assert full[~needed].any()
    deep[2:5] = rng.random((3, 60, 70)) < 0.3
    fresh = _rim_stats(labels, hu, air, deep, table["label"], 130.0, box)
    assert np.array_equal(fresh[2], _rim_in_deep(rim, deep, table["label"]))
    # only the components with rim voxels in the changed slices, the rest as before
    some = _rim_in_deep(rim, deep, table["label"], [2, 3, 4], first[2])
    assert np.array_equal(fresh[2], some)
    assert not np.array_equal(first[2], some)  # the change reached some rims
    assert np.array_equal(first[2][table["bbox-0"] >= 6], some[table["bbox-0"] >= 6])  # far ones kept


def test_label_candidates_in_their_box_equals_labelling_the_volume():
    from calcdetect.detect.ct import _label_candidates
    from calcdetect.measure import label

    rng = np.random.default_rng(7)
    mask = np.zeros((6, 50, 64), bool)
    mask[:, 7:41, 5:52] = rng.random((6, 34, 47)) < 0.2
    ref, n_ref = label(mask)
    out, n, fg = _label_candidates(np.ascontiguousarray(mask[:, 7:41, 5:52]), (7, 5), mask.shape)
    assert n == n_ref > 10 and out.dtype == np.int32
    assert np.array_equal(out, ref) and np.array_equal(fg, np.flatnonzero(ref))
    out, n, fg = _label_candidates(np.zeros((3, 2, 4), bool), (1, 3), (3, 8, 9))
    assert n == 0 and not out.any() and fg.size == 0 and out.shape == (3, 8, 9)


def test_block_map_reads_like_the_expanded_volume():
    """BlockMap (the reduced anatomy's maps) gives, for every kind of index the detector
    uses, exactly what indexing the block-repeated full-resolution volume gives."""
    from calcdetect.detect.anatomy import BlockMap

    rng = np.random.default_rng(3)
    coarse = rng.random((4, 6, 5)) > 0.5
    f, shape = 3, (4, 17, 14)  # the last block row and column are cut
    full = np.repeat(np.repeat(coarse, f, axis=1), f, axis=2)[:, :17, :14]
    m = BlockMap(coarse, f, shape)
    assert np.array_equal(np.asarray(m), full) and m.shape == shape
    z, y, x = (rng.integers(0, n, 50) for n in shape)
    keys = [2, -1, (1, slice(2, 11), slice(4, 13)), (slice(1, 3), slice(0, 17), slice(13, 14)),
            (np.array([0, 3]),), (3, slice(None), 5), (slice(None), slice(None, None, 2)),
            (z, y, x), (2, y, x), (slice(0, 0),)]
    for key in keys:
        assert np.array_equal(m[key], full[key]), key
    for k in (0, 2, -1):
        assert np.array_equal(m.at(k, y, x), full[k][y, x])
    for k in range(shape[0]):
        rows, cols = np.nonzero(full[k])
        assert m.box(k) == (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert BlockMap(np.zeros((1, 2, 2), bool), 2, (1, 4, 4)).box(0) is None
    # a slice replaced by a full-resolution plane is read from that plane everywhere
    plane = rng.random(shape[1:]) > 0.5
    m[2] = plane
    full[2] = plane
    for key in keys:
        assert np.array_equal(m[key], full[key]), key
    assert np.array_equal(m.at(2, y, x), plane[y, x])
    rows, cols = np.nonzero(plane)
    assert m.box(2) == (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    with pytest.raises(IndexError):
        m[0, y, slice(None)]
    with pytest.raises(ValueError):
        m[0] = np.zeros((3, 3), bool)


def test_sparse_zeros_leaves_numpys_huge_page_switch_as_it_was():
    from calcdetect.measure import _set_madvise_hugepage, sparse_zeros

    a = sparse_zeros((3, 4, 5), np.int32)
    assert a.dtype == np.int32 and a.shape == (3, 4, 5) and not a.any()
    if _set_madvise_hugepage is not None:
        from calcdetect.measure import no_huge_pages

        before = _set_madvise_hugepage(True)
        try:
            sparse_zeros((8, 1024, 1024), bool)
            assert _set_madvise_hugepage(True) is True
            with no_huge_pages():  # the switch is off inside, and nested blocks keep it off
                with no_huge_pages():
                    pass
                assert _set_madvise_hugepage(False) is False
            assert _set_madvise_hugepage(True) is True
        finally:
            _set_madvise_hugepage(before)


@pytest.mark.parametrize("case", [0, 1])
def test_midline_test_on_coarse_maps_is_the_same(case):
    """The midline rule read on the coarse planes (components of the coarse maps, areas
    weighted by block size) decides exactly as on the expanded full-resolution maps, for
    foci at every depth and distance from the midline, with one slice replaced by a
    full-resolution plane."""
    import dataclasses
    import importlib

    from calcdetect.detect.anatomy import ct_anatomy_reduced

    ct = importlib.import_module("calcdetect.detect.ct")
    hu, spacing = _anatomy_volumes()[case]
    hu = np.concatenate([hu, hu[:, ::-1]])  # two slices (the second one flipped)
    red = ct_anatomy_reduced(hu, spacing, 3)
    red.deep[1] = np.asarray(red.deep[1]) & (np.arange(hu.shape[2]) % 7 != 0)[None, :]  # a replaced slice
    full = dataclasses.replace(red, body=np.asarray(red.body), deep=np.asarray(red.deep),
                               internal_air=np.asarray(red.internal_air))
    z, y, x = np.nonzero(np.asarray(red.body))
    pick = np.random.default_rng(case).choice(z.size, 300, replace=False)
    table = {"label": np.arange(1, 301), "centroid-0": z[pick].astype(float),
             "centroid-1": y[pick].astype(float), "centroid-2": x[pick].astype(float)}
    sp3 = (1.0,) + tuple(spacing)
    a, b = ct._midline_test(red, table, sp3), ct._midline_test(full, table, sp3)
    for u, v in zip(a, b):
        assert np.array_equal(u, v, equal_nan=True)
    assert a[0].any() and np.isfinite(a[1]).any()  # the rule was exercised


def test_process_switch_is_restored_after_overlapping_blocks_in_threads():
    """The first block in saves the setting, the last one out restores it, whatever the
    order in which overlapping blocks of several threads end."""
    import threading

    from calcdetect._switches import ProcessSwitch

    state = {"v": "user"}
    switch = ProcessSwitch(lambda: state["v"], lambda v: state.update(v=v), "held")
    inside, release = threading.Barrier(3), [threading.Event() for _ in range(2)]
    seen = []

    def worker(i):
        with switch.held():
            inside.wait()
            release[i].wait()
            seen.append(state["v"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert state["v"] == "held"
    release[0].set()  # the first block in leaves first: the other still holds
    threads[0].join()
    assert state["v"] == "held"
    release[1].set()
    threads[1].join()
    assert state["v"] == "user" and seen == ["held", "held"]


def test_depth_map_equals_depth_at_on_the_threaded_path():
    """On a volume large enough for the slice threads (16 slices), the depth map still
    equals the exact depths of the detector's path (OpenCV's precise distance transform
    rounds differently with its pool at one thread, so the map path keeps the pool)."""
    from calcdetect.detect.anatomy import ct_anatomy

    hu, spacing = _anatomy_volumes()[0]
    hu = np.repeat(hu, 16, axis=0)
    full = ct_anatomy(hu, spacing)
    lazy = ct_anatomy(hu, spacing, depth_map=False)
    z, y, x = np.nonzero(full.body)
    pick = np.random.default_rng(1).choice(z.size, 5000)
    z, y, x = z[pick], y[pick], x[pick]
    assert np.array_equal(full.depth_mm[z, y, x], lazy.depth_at(z, y, x), equal_nan=True)


@pytest.mark.parametrize("factor", [2, 3])
def test_refine_deep_window_test_equals_the_full_resolution_window(factor):
    """_refine_deep's coarse 5 x 5 filter answers 'deep and not-deep pixels within two
    coarse pixels of the centre' exactly as the full-resolution window would, for
    centres everywhere (borders included); the slices it replaces are those."""
    import importlib

    from calcdetect.detect.anatomy import ct_anatomy_reduced

    ct = importlib.import_module("calcdetect.detect.ct")
    hu, spacing = _anatomy_volumes()[0]
    hu = np.concatenate([hu, hu[:, ::-1], hu[:, :, ::-1]] * 3)  # 9 slices
    nz = hu.shape[0]
    full = np.asarray(ct_anatomy_reduced(hu, spacing, factor).deep)
    m = 2 * factor
    partial = 0
    for seed in range(12):
        red = ct_anatomy_reduced(hu, spacing, factor)
        rng = np.random.default_rng(seed)
        n = 4
        z = rng.integers(0, nz, n)
        y, x = rng.integers(0, hu.shape[1], n), rng.integers(0, hu.shape[2], n)
        if seed % 3 == 0:  # centres on the deep core's edge, where the windows are mixed
            ez, ey, ex = np.nonzero(full & ~np.roll(full, 1, axis=2))
            pick = rng.integers(0, ez.size, n)
            z, y, x = ez[pick], ey[pick], ex[pick]
        table = {"label": np.arange(1, n + 1), "centroid-0": z.astype(float), "centroid-1": y.astype(float),
                 "centroid-2": x.astype(float), "bbox-0": z, "bbox-3": z + 1}
        rim = np.zeros(n)  # far from the limit: only the window decides
        expect = set()
        for i in range(n):
            win = full[z[i], max(y[i] - m, 0):y[i] + m + 1, max(x[i] - m, 0):x[i] + m + 1]
            if win.any() and not win.all():
                expect.update(range(max(z[i] - 1, 0), min(z[i] + 2, nz)))
        replaced = []
        red.exact_slice = lambda k: replaced.append(k) or type("A", (), {"deep": full[k:k + 1]})()
        assert ct._refine_deep(red, table, np.arange(n), rim, 0.4) == sorted(expect)
        assert set(replaced) == expect
        partial += 0 < len(expect) < nz
    assert partial >= 2  # the test saw both answers


# ----------------------------------------------------------------------------- contrast
def _pool_slice(disk_hu=180.0, radius_mm=10.0, ring_hu=None, texture_sd=0.0, seed=0):
    """A 1 mm-pixel slice: soft tissue (40 HU), a disk (a vessel or marrow) of known
    HU and radius at (60, 70), optionally inside a 3 mm ring (cortex), with 10 HU noise
    plus texture of the given SD inside the disk."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    rr = np.hypot(yy - 60, xx - 70)
    hu = np.full((128, 128), 40.0)
    hu[rr <= radius_mm] = disk_hu
    if texture_sd:
        hu[rr <= radius_mm] += rng.normal(0, texture_sd, int((rr <= radius_mm).sum()))
    if ring_hu is not None:
        hu[(rr > radius_mm) & (rr <= radius_mm + 3)] = ring_hu
    return (hu + rng.normal(0, 10, hu.shape)).astype(np.float32)


def test_blood_pool_is_a_large_smooth_region_at_blood_density_outside_a_cortex():
    from calcdetect.detect.contrast import blood_pool

    pool = blood_pool(_pool_slice(), (1.0, 1.0))
    assert pool is not None and (pool["row"], pool["col"]) == (60, 70)
    assert 170 <= pool["median_hu"] <= 190 and pool["sd_hu"] < 20
    # the inside begins 1.5 mm in from the outline, rounded to whole pixels: 2 px here
    assert pool["interior_mm2"] == pytest.approx(np.pi * 8.0 ** 2, rel=0.05)
    assert blood_pool(_pool_slice(disk_hu=50.0), (1.0, 1.0)) is None  # unenhanced blood
    assert blood_pool(_pool_slice(radius_mm=6.0), (1.0, 1.0)) is None  # a 12 mm vessel: too small to tell
    assert blood_pool(_pool_slice(texture_sd=80.0), (1.0, 1.0)) is None  # trabecular texture
    assert blood_pool(_pool_slice(disk_hu=250.0, ring_hu=800.0), (1.0, 1.0)) is None  # marrow in a cortex
    assert blood_pool(_pool_slice(disk_hu=900.0), (1.0, 1.0)) is None  # a dense deposit
    # the same vessel is found in a volume, and the slice it lies on is named
    vol = np.stack([_pool_slice(disk_hu=50.0, seed=1), _pool_slice(seed=2)])
    assert blood_pool(vol, (3.0, 1.0, 1.0))["slice"] == 1


def test_undeclared_enhancement_is_seen_in_the_image():
    # a portal-venous abdomen whose ContrastBolusAgent was emptied by de-identification
    image = calcdetect.load(get_testdata_file("explicit_VR-UN.dcm"))
    assert not image.metadata.get("ContrastBolusAgent")
    seen = calcdetect.detect(image, region="soft-tissue")
    told_not = calcdetect.detect(image, region="soft-tissue", contrast=False)
    assert seen.parameters["contrast_source"] == "image" and seen.parameters["contrast_enhanced"]
    assert told_not.parameters["contrast_source"] == "user" and not told_not.parameters["contrast_enhanced"]
    # enhanced vessels peaking at 130-200 HU were "calcifications" before
    assert told_not.count >= 80 and seen.count <= 15
    assert seen.parameters["components_faint_contrast"] >= 70
    assert all(f.peak >= 200 for f in seen.findings)
    assert [w for w in seen.warnings if "seen in the image, not in the header" in w and "--contrast no" in w]
    # without a spacing the test runs at the 1 mm pixels the detector assumes, and says so
    bare = calcdetect.detect(image.with_pixels(image.pixels, spacing_mm=None), region="soft-tissue")
    assert bare.parameters["contrast_source"] == "image"
    assert [w for w in bare.warnings if "taken as 1 mm each: the image has no spacing" in w]
    # unenhanced real slices (head, spine) and the CT phantom show no blood pool
    for name in ("693_UNCR.dcm", "bad_sequence.dcm", "J2K_pixelrep_mismatch.dcm", "eCT_Supplemental.dcm"):
        rep = calcdetect.detect(calcdetect.load(get_testdata_file(name)), region="soft-tissue")
        assert rep.parameters["contrast_source"] is None, name
    phantom, _ = ct_phantom(seed=3)
    assert calcdetect.detect(phantom).parameters["contrast_source"] is None


@pytest.mark.skipif(not SERIES.exists(), reason="shared CT series not available")
def test_enhancement_of_a_series_without_its_tag():
    image = calcdetect.load(SERIES)
    assert image.metadata.get("ContrastBolusAgent") == "APPLIED"
    assert calcdetect.detect(image).parameters["contrast_source"] == "header"
    untagged = image.with_pixels(image.pixels, metadata={k: v for k, v in image.metadata.items()
                                                          if not k.startswith("ContrastBolus")})
    rep = calcdetect.detect(untagged)
    assert rep.parameters["contrast_source"] == "image"
    assert any("looks like an enhanced blood pool" in w for w in rep.warnings)


def test_cli_contrast_option(capsys):
    from calcdetect.cli import main

    path = get_testdata_file("explicit_VR-UN.dcm")
    assert main(["detect", path, "--region", "soft-tissue", "--contrast", "no", "--compact"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["contrast"] is False and data["count"] >= 80
    assert main(["detect", path, "--region", "soft-tissue", "--contrast", "yes", "--compact"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["contrast_source"] == "user" and data["count"] <= 15


# ----------------------------------------------------------------------------- lossy
def test_lossy_ct_is_said_and_a_ratio_that_makes_artefacts_is_named():
    from calcdetect.lossy import compression_ratio

    # the same head slice: lossless, and JPEG 2000 at 339:1 (its artefacts at the skull
    # and scalp exceed 130 HU: 8 small faint "foci" against none)
    lossless = calcdetect.detect(calcdetect.load(get_testdata_file("693_J2KR.dcm")))
    lossy_image = calcdetect.load(get_testdata_file("693_J2KI.dcm"))
    assert compression_ratio(lossy_image) == pytest.approx(338.687, abs=0.01)
    lossy = calcdetect.detect(lossy_image)
    assert lossless.count == 0 and not [w for w in lossless.warnings if "lossy" in w]
    assert lossy.count > 0
    assert [w for w in lossy.warnings if "ratio 339:1" in w and "use the original images" in w]
    # a mild ratio is said, without the artefact warning; several ratios compound
    base = calcdetect.load(get_testdata_file("693_UNCR.dcm"))
    mild = base.with_pixels(base.pixels, metadata={"LossyImageCompression": "01",
                                                   "LossyImageCompressionRatio": ["5", "4"]})
    assert compression_ratio(mild) == 20.0
    said = [w for w in calcdetect.detect(mild).warnings if "lossy" in w]
    assert len(said) == 1 and "ratio 20:1" in said[0] and "use the original" not in said[0]
