"""The shared labelling + measurement core against shapes of known size."""

import numpy as np
import pytest

from calcdetect.measure import filter_labels, foreground, label, regionprops_table


def disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_disk_and_ellipse_sizes_in_mm():
    yy, xx = np.mgrid[:200, :200]
    mask = disk((200, 200), (50, 60), 20) | (((yy - 150) / 10) ** 2 + ((xx - 120) / 30) ** 2 <= 1)
    labels, n = label(mask)
    t = regionprops_table(labels, yy.astype(float), spacing=(0.5, 0.5))
    assert n == 2
    # disk of radius 20 px at 0.5 mm: diameter 20 mm
    assert t["equivalent_diameter"][0] == pytest.approx(20.0, abs=0.2)
    assert t["axis_major_length"][0] == pytest.approx(20.0, abs=0.3)
    # ellipse 60 x 20 px -> 30 x 10 mm
    assert t["axis_major_length"][1] == pytest.approx(30.0, abs=0.3)
    assert t["axis_minor_length"][1] == pytest.approx(10.0, abs=0.3)
    assert t["centroid-0"][0] == pytest.approx(50.0)
    assert t["centroid-1"][1] == pytest.approx(120.0)
    assert t["intensity_max"][1] == pytest.approx(160.0)
    assert t["size"][0] == pytest.approx(np.pi * 10.0 ** 2, rel=0.02)


def test_sphere_anisotropic_spacing():
    z, y, x = np.mgrid[:40, :60, :60]
    sphere = ((z - 20) * 2.0) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 10 ** 2
    labels, n = label(sphere)
    t = regionprops_table(labels, spacing=(2.0, 1.0, 1.0))
    assert n == 1
    assert t["equivalent_diameter"][0] == pytest.approx(20.0, abs=0.4)
    assert t["axis_major_length"][0] == pytest.approx(20.0, abs=0.5)
    assert t["num_slices"][0] == 11
    assert t["max_slice_size"][0] == pytest.approx(np.pi * 100, rel=0.03)


def test_single_pixel_has_its_true_extent():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    t = regionprops_table(label(mask)[0], spacing=(0.8, 0.8))
    # a uniform 0.8 mm square: second-moment "ellipse" spans 4*sqrt(0.8^2/12) mm
    assert t["axis_major_length"][0] == pytest.approx(4 * np.sqrt(0.64 / 12))
    assert t["size"][0] == pytest.approx(0.64)


def test_matches_scikit_image():
    from skimage.measure import regionprops_table as sk_table

    rng = np.random.default_rng(0)
    mask = rng.random((120, 130)) > 0.7
    labels, n = label(mask)
    ours = regionprops_table(labels, labels.astype(float))
    sk = sk_table(labels, labels.astype(float), properties=("label", "area", "centroid", "bbox", "intensity_max"))
    assert n == len(sk["label"])
    np.testing.assert_array_equal(ours["label"], sk["label"])
    np.testing.assert_allclose(ours["num_pixels"], sk["area"])
    np.testing.assert_allclose(ours["centroid-0"], sk["centroid-0"])
    np.testing.assert_allclose(ours["centroid-1"], sk["centroid-1"])
    for i in range(4):
        np.testing.assert_array_equal(ours[f"bbox-{i}"], sk[f"bbox-{i}"])


def test_empty_and_relabel():
    labels, n = label(np.zeros((10, 10), bool))
    t = regionprops_table(labels, labels.astype(float))
    assert n == 0 and t["label"].size == 0 and t["intensity_max"].size == 0
    lab = np.array([[0, 3, 3], [5, 0, 7]])
    out, k = filter_labels(lab, np.array([7, 3]))
    assert k == 2
    np.testing.assert_array_equal(out, [[0, 2, 2], [0, 0, 1]])


@pytest.mark.parametrize("in_place", [False, True])
def test_shared_foreground_gives_the_same_results(in_place):
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(12, 40, 50))
    labels, n = label(vol > 1.2)
    assert n > 10
    fg = foreground(labels)
    assert np.array_equal(fg, np.flatnonzero(labels))
    for a, b in zip(regionprops_table(labels, vol, spacing=(2.0, 0.5, 0.7)).items(),
                    regionprops_table(labels, vol, spacing=(2.0, 0.5, 0.7), foreground=fg).items()):
        assert a[0] == b[0] and np.array_equal(a[1], b[1])
    keep = np.array([7, 2, n, 5])
    ref, k_ref = filter_labels(labels.copy(), keep)
    out, k, kept_fg = filter_labels(labels.copy(), keep, in_place=in_place, foreground=fg,
                                    return_foreground=True)
    assert k == k_ref == 4 and out.dtype == ref.dtype and np.array_equal(out, ref)
    assert np.array_equal(kept_fg, np.flatnonzero(ref))
    # 2D and a kept 0 take the lookup path, foreground still returned
    out2, k2, fg2 = filter_labels(labels[3], np.array([0, 2]), return_foreground=True)
    assert np.array_equal(fg2, np.flatnonzero(out2))


def test_slice_columns_match_a_per_label_count():
    """max_slice_size and num_slices against a per-label, per-slice count, on labels that
    are scattered, non-consecutive and absent from some slices."""
    rng = np.random.default_rng(11)
    labels = np.zeros((7, 30, 40), np.int32)
    on = rng.random(labels.shape) < 0.15
    labels[on] = rng.choice([3, 8, 9, 40, 41, 500], on.sum())
    labels[2] = np.where(labels[2] == 8, 0, labels[2])  # label 8 skips slice 2
    t = regionprops_table(labels, spacing=(2.0, 0.5, 0.7))
    for i, lab in enumerate(t["label"]):
        per = (labels == lab).sum(axis=(1, 2))
        assert t["num_slices"][i] == np.count_nonzero(per)
        assert t["max_slice_size"][i] == per.max() * 0.5 * 0.7
    assert list(t["label"]) == [3, 8, 9, 40, 41, 500]
    empty = regionprops_table(np.zeros((3, 4, 5), np.int32))
    assert empty["max_slice_size"].size == 0 and empty["num_slices"].size == 0


def test_nonzero_rc_is_numpys_nonzero():
    from calcdetect.errors import InvalidParameterError
    from calcdetect.measure import nonzero_rc

    rng = np.random.default_rng(4)
    for shape, p in (((210, 230), 0.01), ((7, 1), 0.5), ((0, 5), 0.5), ((40, 33), 0.9)):
        mask = rng.random(shape) < p
        for a, b in zip(nonzero_rc(mask), np.nonzero(mask)):
            assert np.array_equal(a, b) and a.dtype == b.dtype
    assert np.array_equal(nonzero_rc(np.array([[0, 3], [2, 0]], np.int32))[1], [1, 0])
    with pytest.raises(InvalidParameterError):
        nonzero_rc(np.zeros((2, 2, 2)))
