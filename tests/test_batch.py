"""calcdetect annotate: folder walk, outputs, errors, resumability, parallel and Dask runs,
and the overlay pictures."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from calcdetect import Image, cli
from calcdetect.batch import (
    OUTPUT_MARKER,
    annotate,
    find_inputs,
    read_sidecar,
    report_from_dict,
    run_job,
)
from calcdetect.errors import InvalidParameterError
from calcdetect.render import choose_slices, display_pixels, render_overlay, save_overlay
from calcdetect.report import Finding, Report

SERIES = Path("/work/shared/data/ct-abdomen-series")
# The radiograph detector lives in its own module (issue 3); until it is part of the
# package the raster XRAY input fails with ModuleNotFoundError (and is expected to).
HAVE_XRAY = importlib.util.find_spec("calcdetect.detect.xray") is not None


# ----------------------------------------------------------------------------- fixtures
def _write_ct_copy(src: str, dst: Path, series_uid: str, number: int, z: float, sop: str) -> None:
    ds = pydicom.dcmread(src)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    pos = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [pos[0], pos[1], z]
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)


def _xray_png(path: Path) -> None:
    """A synthetic radiograph: smooth soft-tissue background and one bright 3 mm focus."""
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    img = 60 + 30 * np.exp(-((xx - 160) ** 2) / 2e4)
    img[(yy - 120) ** 2 + (xx - 170) ** 2 <= 7.5 ** 2] = 230  # 15 px = 3 mm at 0.2 mm
    cv2.imwrite(str(path), img.astype(np.uint8))
    path.with_suffix(".json").write_text(json.dumps({"modality": "XRAY", "pixel_size_mm": 0.2}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch") / "in"
    (root / "ct" / "series").mkdir(parents=True)
    for f in sorted(SERIES.iterdir())[8:11]:
        shutil.copy(f, root / "ct" / "series" / f.name)
    (root / "single").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "single" / "CT_small.dcm")
    (root / "raster").mkdir()
    _xray_png(root / "raster" / "focus.png")
    bad = root / "bad"
    bad.mkdir()
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (bad / "truncated.dcm").write_bytes(data[: len(data) // 2])
    shutil.copy(get_testdata_file("rtplan.dcm"), bad / "rtplan.dcm")
    (bad / "notes.txt").write_text("not an image\n")
    # skipped silently: hidden files, documentation, sidecars
    (root / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "README.md").write_text("# study\n")
    return root


EXPECTED_BAD = {"bad/truncated.dcm", "bad/rtplan.dcm", "bad/notes.txt"} | (
    set() if HAVE_XRAY else {"raster/focus.png"})
ALL_INPUTS = {"ct/series", "single/CT_small.dcm", "raster/focus.png",
              "bad/truncated.dcm", "bad/rtplan.dcm", "bad/notes.txt"}


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- walking
def test_find_inputs_groups_series_and_skips_noise(folder):
    jobs, errors = find_inputs(folder)
    by_input = {j.input: j for j in jobs}
    assert set(by_input) == ALL_INPUTS - {"bad/notes.txt"}
    series = by_input["ct/series"]
    assert series.kind == "series" and len(series.paths) == 3 and series.name == "ct/series"
    assert by_input["single/CT_small.dcm"].kind == "dicom"
    raster = by_input["raster/focus.png"]
    assert raster.kind == "raster" and raster.sidecar.endswith("focus.json")
    # the only discovery error is the text file; hidden files and README are not inputs
    # the same error type as calcdetect.load() raises for it (docs/robustness.md)
    assert [(e.input, e.error_type) for e in errors] == [("bad/notes.txt", "UnreadableFileError")]
    assert len({j.name for j in jobs}) == len(jobs)


def test_every_raster_format_the_loader_reads_is_an_annotate_input(tmp_path):
    from calcdetect.io import RASTER_SUFFIXES

    img = np.full((40, 40), 90, np.uint8)
    for suffix in RASTER_SUFFIXES:
        cv2.imwrite(str(tmp_path / f"frame{suffix}"), img)
    jobs, errors = find_inputs(tmp_path)
    assert not errors and sorted(j.input for j in jobs) == sorted(f"frame{s}" for s in RASTER_SUFFIXES)
    assert {j.kind for j in jobs} == {"raster"}


def test_two_series_in_one_folder_get_distinct_names(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    for k, (uid, num) in enumerate([("1.2.3.4.1", 1), ("1.2.3.4.2", 2)]):
        for s in range(2):
            _write_ct_copy(src, tmp_path / "in" / "study" / f"s{num}_{s}.dcm", uid, num, 10.0 * s,
                           f"1.2.3.5.{k}.{s}")
    jobs, errors = find_inputs(tmp_path / "in")
    assert not errors
    assert sorted(j.name for j in jobs) == ["study/series-1", "study/series-2"]
    assert all(j.kind == "series" and len(j.paths) == 2 for j in jobs)


def test_output_folder_inside_input_is_not_walked(tmp_path, folder):
    root = tmp_path / "in"
    shutil.copytree(folder / "single", root / "single")
    out = root / "annotated"
    res = annotate(root, out, jobs=1, quiet=True)
    assert res.exit_code == 0 and (out / OUTPUT_MARKER).exists()
    # a second run from the parent must not pick up the overlays/JSON as inputs
    jobs, errors = find_inputs(root)
    assert [j.input for j in jobs] == ["single/CT_small.dcm"] and not errors


# ----------------------------------------------------------------------------- sidecar
def test_sidecar_gives_modality_and_pixel_size(folder, tmp_path):
    meta, side = read_sidecar(folder / "raster" / "focus.png")
    assert meta == {"modality": "XRAY", "pixel_size_mm": 0.2} and side.name == "focus.json"
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.json").write_text('{"modality": "US", "pixel_size_mm": [0.1, 0.25]}')
    assert read_sidecar(tmp_path / "a.png")[0] == {"modality": "US", "pixel_size_mm": (0.1, 0.25)}
    for bad in ('{"modality": "CT"}', '{"pixel_size_mm": -1}', "[1, 2]", "{not json"):
        (tmp_path / "a.json").write_text(bad)
        with pytest.raises(InvalidParameterError):
            read_sidecar(tmp_path / "a.png")
    assert read_sidecar(tmp_path / "missing.png") is None


def test_sidecar_reaches_the_loaded_image(folder):
    from calcdetect.batch import _load

    job = next(j for j in find_inputs(folder)[0] if j.kind == "raster")
    image = _load(job, {"modality": "US", "pixel_size_mm": 0.5})  # the sidecar wins
    assert image.modality == "XRAY" and image.spacing_mm == (0.2, 0.2)
    assert image.spacing_source == "sidecar focus.json"


# ----------------------------------------------------------------------------- end to end
def test_annotate_cli_end_to_end(folder, tmp_path, capsys):
    before = _hashes(folder)
    out = tmp_path / "out"
    rc = cli.main(["annotate", str(folder), "-o", str(out), "--jobs", "2", "--quiet"])
    assert rc == 1  # some inputs failed
    assert _hashes(folder) == before  # inputs unchanged, nothing written into the input folder
    stderr = capsys.readouterr().err
    for bad in EXPECTED_BAD:
        assert sum(line.startswith(f"calcdetect: {bad}: ") for line in stderr.splitlines()) == 1

    errors = _read_csv(out / "errors.csv")
    assert {e["input"] for e in errors} == EXPECTED_BAD
    types = {e["input"]: e["error_type"] for e in errors}
    assert types["bad/truncated.dcm"] == "UnreadableFileError"
    assert types["bad/rtplan.dcm"] == "UnsupportedImageError"
    assert all("\n" not in e["reason"] and e["reason"] for e in errors)

    good = ALL_INPUTS - EXPECTED_BAD
    summary = {r["input"]: r for r in _read_csv(out / "summary.csv")}
    assert set(summary) == good
    findings = _read_csv(out / "findings.csv")
    html = (out / "index.html").read_text()
    for inp in good:
        row = summary[inp]
        report = json.loads((out / row["report_json"]).read_text())
        assert report["input"] == inp and report["count"] == int(row["count"])
        assert sum(f["input"] == inp for f in findings) == report["count"]
        ids = [int(f["id"]) for f in findings if f["input"] == inp]
        assert ids == [f["id"] for f in report["findings"]]
        picture = cv2.imread(str(out / row["overlay_png"]))
        assert picture is not None and picture.ndim == 3 and min(picture.shape[:2]) >= 256
        assert max(picture.shape[:2]) <= 2400
        assert row["overlay_png"] in html
    for bad in EXPECTED_BAD:
        assert bad in html
    # output names mirror the input paths
    assert (out / "ct" / "series.json").exists() and (out / "single" / "CT_small.dcm.png").exists()
    # the single CT slice: the real CT_small.dcm holds dense foci; check a known header value
    ct = json.loads((out / "single" / "CT_small.dcm.json").read_text())
    assert ct["spacing_mm"] == pytest.approx([0.661468, 0.661468], abs=1e-5)
    if HAVE_XRAY:  # the sidecar's metadata reached the report (detection itself: test_xray)
        xr = json.loads((out / "raster" / "focus.png.json").read_text())
        assert xr["modality"] == "XRAY" and xr["spacing_mm"] == [0.2, 0.2]
        assert xr["spacing_source"] == "sidecar focus.json"
    # no temporary files left behind
    assert not [p for p in out.rglob("*.part")]


def test_resume_skips_up_to_date_and_overwrite_redoes(folder, tmp_path):
    out = tmp_path / "out"
    first = annotate(folder, out, jobs=1, quiet=True)
    good = ALL_INPUTS - EXPECTED_BAD
    assert len(first.processed) == len(good) and not first.skipped
    tables = {n: (out / n).read_bytes() for n in ("findings.csv", "summary.csv", "errors.csv")}
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}

    second = annotate(folder, out, jobs=1, quiet=True)
    assert not second.processed and len(second.skipped) == len(good)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps
    for n, data in tables.items():  # the skipped inputs' rows are still in the tables
        assert (out / n).read_bytes() == data, n
    assert second.exit_code == 1  # the bad inputs are tried (and listed) again

    # an input newer than its report is redone; so is everything with overwrite
    src = folder / "single" / "CT_small.dcm"
    st = src.stat()
    report = out / "single" / "CT_small.dcm.json"
    os.utime(report, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    third = annotate(folder, out, jobs=1, quiet=True)
    assert third.processed == ["single/CT_small.dcm"]
    fourth = annotate(folder, out, jobs=1, quiet=True, overwrite=True)
    assert len(fourth.processed) == len(good)
    # a changed detector option makes the reports stale
    fifth = annotate(folder, out, jobs=1, quiet=True, detect_options={"CT": {"region": "all"}})
    assert sorted(fifth.processed) == sorted(j for j in good if j in ("ct/series", "single/CT_small.dcm"))
    # ... and so does dropping it again (back to the default)
    sixth = annotate(folder, out, jobs=1, quiet=True)
    assert sorted(sixth.processed) == sorted(fifth.processed)
    assert json.loads((out / "single" / "CT_small.dcm.json").read_text())["parameters"]["region"] == "skin"
    assert not annotate(folder, out, jobs=1, quiet=True).processed


def test_resume_redoes_exactly_the_inputs_a_changed_load_option_changes(folder, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(folder / "raster" / "focus.png", src / "plain.png")  # no sidecar: takes the options
    shutil.copy(folder / "raster" / "focus.png", src / "focus.png")
    shutil.copy(folder / "raster" / "focus.json", src / "focus.json")  # its sidecar says 0.2 mm
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")  # its own PixelSpacing
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelSpacing
    ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".9"  # a series of its own, not the CT's
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(src / "nospacing.dcm")
    out = tmp_path / "out"

    def run(**load):
        res = annotate(src, out, jobs=1, quiet=True, load_options={"modality": "XRAY", **load})
        assert not res.errors, res.errors
        return sorted(res.processed)

    assert len(run(pixel_size_mm=0.3)) == 4
    plain = json.loads((out / "plain.png.json").read_text())
    assert plain["spacing_mm"] == [0.3, 0.3]
    assert plain["load_options"] == {"modality": "XRAY", "pixel_size_mm": 0.3}
    assert json.loads((out / "ct.dcm.json").read_text())["load_options"] == {}  # CT says both itself
    assert run(pixel_size_mm=0.3) == []
    # a new pixel size reaches only the inputs without one of their own
    assert run(pixel_size_mm=0.25) == ["nospacing.dcm", "plain.png"]
    assert json.loads((out / "plain.png.json").read_text())["spacing_mm"] == [0.25, 0.25]
    assert json.loads((out / "nospacing.dcm.json").read_text())["spacing_mm"] == [0.25, 0.25]
    assert json.loads((out / "focus.png.json").read_text())["spacing_mm"] == [0.2, 0.2]
    # inverting concerns raster files only (DICOM says MONOCHROME1 itself)
    assert run(pixel_size_mm=0.25, invert=True) == ["focus.png", "plain.png"]
    # a report written before load options were recorded is redone when options are given
    report = out / "ct.dcm.json"
    data = json.loads(report.read_text())
    del data["load_options"]
    report.write_text(json.dumps(data))
    assert run(pixel_size_mm=0.25, invert=True) == []  # CT uses none of them: still equal
    data = json.loads((out / "plain.png.json").read_text())
    del data["load_options"]
    (out / "plain.png.json").write_text(json.dumps(data))
    assert run(pixel_size_mm=0.25, invert=True) == ["plain.png"]


def test_report_round_trip_gives_same_rows():
    from calcdetect import detect, load

    report = detect(load(get_testdata_file("CT_small.dcm")), region="all")
    assert report.count >= 1
    back = report_from_dict(json.loads(report.to_json()))
    assert back.to_rows() == report.to_rows()
    assert back.summary_row() == report.summary_row()


def test_worker_errors_are_data_not_exceptions(tmp_path):
    from calcdetect.batch import Job

    job = Job(name="x", input="x.dcm", kind="dicom", paths=(str(tmp_path / "x.dcm"),))
    res = run_job(job, str(tmp_path / "out"))
    assert res["report"] is None and res["error"]["error_type"] == "UnreadableFileError"
    assert not (tmp_path / "out").exists()


def test_cli_usage_errors(folder, tmp_path, capsys):
    assert cli.main(["annotate", str(folder), "-o", str(folder)]) == 2
    assert "cannot be the input folder" in capsys.readouterr().err
    assert cli.main(["annotate", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["annotate", str(folder), "-o", str(tmp_path / "o"), "--jobs", "0"])
    assert exc.value.code == 2


def test_dask_flag_without_dask_names_the_extra(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails
    rc = cli.main(["annotate", str(folder), "-o", str(tmp_path / "o"), "--dask-scheduler", "tcp://127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "calcdetect[dask]" in err[0]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- dask
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_dask_scheduler_is_an_error(folder, tmp_path, capsys):
    pytest.importorskip("distributed")
    out = tmp_path / "o"
    rc = cli.main(["annotate", str(folder), "-o", str(out), "--dask-scheduler",
                   f"tcp://127.0.0.1:{_free_port()}", "--dask-timeout", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "cannot reach the Dask scheduler" in err[0]
    assert not out.exists()  # nothing ran locally


def test_dask_local_cluster_matches_local_run(folder, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    small = tmp_path / "in"
    for sub in ("ct", "single", "bad"):
        shutil.copytree(folder / sub, small / sub)
    local = annotate(small, tmp_path / "local", jobs=1, quiet=True)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        rc = cli.main(["annotate", str(small), "-o", str(tmp_path / "dask"), "--quiet",
                       "--dask-scheduler", cluster.scheduler_address])
        with distributed.Client(cluster) as client:
            pids = set(client.run(os.getpid).values())
    assert rc == local.exit_code == 1
    assert len(pids) == 2 and os.getpid() not in pids  # separate worker processes
    names = sorted(local.reports)
    assert names == ["ct/series", "single/CT_small.dcm"]
    for name in names:
        a = json.loads((tmp_path / "local" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "dask" / f"{name}.json").read_text())
        assert a == b
        assert (tmp_path / "dask" / f"{name}.png").exists()
    for table in ("findings.csv", "summary.csv", "errors.csv"):
        assert (tmp_path / "local" / table).read_bytes() == (tmp_path / "dask" / table).read_bytes()


# ----------------------------------------------------------------------------- pictures
def _ct_phantom(spacing=0.5):
    """A 2D CT slice: air, a 60 x 80 mm soft-tissue body, one 4 mm focus of 400 HU."""
    n = 200
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    hu = np.full((n, n), -1000.0, np.float32)
    body = ((yy - 100) / 60) ** 2 + ((xx - 100) / 80) ** 2 <= 1
    hu[body] = 40.0
    focus = (yy - 60) ** 2 + (xx - 130) ** 2 <= 4 ** 2  # 8 px = 4 mm across
    hu[focus] = 400.0
    labels = focus.astype(np.int32)
    image = Image(hu, (spacing, spacing), "CT")
    f = Finding(id=1, centroid_px=[60.0, 130.0], centroid_mm=[30.0, 65.0], bbox_px=[56, 126, 65, 135],
                equivalent_diameter_mm=4.0, long_axis_mm=4.0, short_axis_mm=4.0, area_mm2=12.6,
                volume_mm3=None, peak=400.0, mean=400.0)
    report = Report(source="phantom", modality="CT", shape=[n, n], spacing_mm=[spacing, spacing],
                    findings=[f], distribution={"summary": "1 calcification, 4.0 mm, solitary",
                                                "size_mm": {"min": 4.0, "median": 4.0, "max": 4.0}},
                    labels=labels)
    return image, report


def _yellow(img: np.ndarray) -> np.ndarray:
    b, g, r = img[..., 0].astype(int), img[..., 1].astype(int), img[..., 2].astype(int)
    return (r > 180) & (g > 180) & (b < 90)


def test_ct_window_is_soft_tissue():
    px, desc = display_pixels(Image(np.array([[-1000, -160, 40, 240, 1000]], np.float32), (1, 1), "CT"))
    assert px.tolist() == [[0, 0, 127, 255, 255]] and "W400 L40" in desc


def test_overlay_outlines_the_finding_where_it_is(tmp_path):
    image, report = _ct_phantom()
    pic = render_overlay(image, report)
    # 200 px image is enlarged to 512: factor 2.56; the picture sits on top of the legend
    f = 512 / 200
    assert pic.shape[1] == 640 and pic.shape[0] > 512
    x_off = (640 - 512) // 2
    yel = _yellow(pic[:512, x_off:x_off + 512])
    ys, xs = np.nonzero(yel)
    assert ys.size > 0
    # the outline hugs the focus: centre (60, 130) px, radius 4 px -> in display pixels
    ring = np.hypot(ys - 60.5 * f, xs - 130.5 * f)
    outline = ring < 30
    assert outline.sum() > 50
    assert np.median(ring[outline]) == pytest.approx(4.5 * f + 2, abs=4)
    # the calcification itself is not painted over
    assert not yel[int(60.5 * f), int(130.5 * f)]
    # scale bar: white run at the bottom left (10 mm at 0.5 mm / 2.56 = 51 px... rounded)
    bar_row = pic[512 - 14, x_off + 12:x_off + 300]
    white = np.all(bar_row > 240, axis=1)
    mm_per_px = 0.5 / f
    length_mm = white.sum() * mm_per_px
    assert length_mm == pytest.approx(20.0, abs=1.0)  # the "nice" length for a 100 mm wide field
    save_overlay(image, report, tmp_path / "o.png")
    assert cv2.imread(str(tmp_path / "o.png")).shape == pic.shape


def test_overlay_without_spacing_has_no_scale_bar():
    image, report = _ct_phantom()
    image = Image(image.pixels, None, "CT")
    report.spacing_mm = None
    pic = render_overlay(image, report)
    x_off = (640 - 512) // 2
    bar_row = pic[512 - 14, x_off + 12:x_off + 300]
    assert np.all(bar_row > 240, axis=1).sum() < 5


def test_overlay_from_json_report_outlines_bounding_boxes():
    image, report = _ct_phantom()
    back = report_from_dict(report.to_dict())
    assert back.labels is None
    pic = render_overlay(image, back)
    assert _yellow(pic[:512]).sum() > 50


def test_choose_slices_covers_every_finding_with_fewest_slices():
    lab = np.zeros((10, 8, 8), np.int32)
    lab[2:4, 1, 1] = 1     # slices 2-3
    lab[3, 5, 5] = 2       # slice 3
    lab[7, 2, 2] = 3       # slice 7
    lab[7:9, 6, 6] = 4     # slices 7-8
    chosen, home = choose_slices(lab, 4)
    assert chosen == [3, 7]
    assert home == {1: 3, 2: 3, 3: 7, 4: 7}
    chosen, home = choose_slices(lab, 4, max_tiles=1)
    assert len(chosen) == 1 and len(home) == 2
    assert choose_slices(np.zeros((5, 4, 4), np.int32), 0) == ([2], {})


def test_series_overlay_is_a_montage_of_finding_slices():
    vol = np.full((6, 64, 64), 40.0, np.float32)
    lab = np.zeros(vol.shape, np.int32)
    lab[1, 10:13, 10:13] = 1
    lab[4, 40:44, 40:44] = 2
    vol[lab > 0] = 500
    image = Image(vol, (2.0, 1.0, 1.0), "CT")
    fs = [Finding(id=i, centroid_px=[z, c, c], centroid_mm=None, bbox_px=[z, c - 2, c - 2, z + 1, c + 2, c + 2],
                  equivalent_diameter_mm=3.0, long_axis_mm=3.0, short_axis_mm=3.0, area_mm2=9.0,
                  volume_mm3=18.0, peak=500.0, mean=500.0)
          for i, z, c in ((1, 1, 11), (2, 4, 42))]
    report = Report(source="vol", modality="CT", shape=list(vol.shape), spacing_mm=[2.0, 1.0, 1.0],
                    findings=fs, labels=lab)
    pic = render_overlay(image, report)
    # two tiles side by side (2 columns), each at least 256 px
    assert pic.shape[1] >= 2 * 256
    tile = 512  # 64 px enlarged to the 512 px minimum
    left, right = pic[:tile, : pic.shape[1] // 2], pic[:tile, pic.shape[1] // 2:]
    ys, xs = np.nonzero(_yellow(left))
    assert ys.size and abs(np.median(ys) - 11.5 * 8) < 30  # finding 1 on slice 2
    ys, xs = np.nonzero(_yellow(right))
    assert ys.size and abs(np.median(ys) - 42 * 8) < 30  # finding 2 on slice 5


class _FakeTTY:
    def __init__(self):
        import io

        self.buf = io.StringIO()

    def write(self, text):
        return self.buf.write(text)

    def flush(self):
        pass

    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_only_on_a_terminal_and_not_quiet(folder, tmp_path, monkeypatch, quiet):
    pytest.importorskip("tqdm")
    small = tmp_path / "in"
    shutil.copytree(folder / "single", small / "single")
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    annotate(small, tmp_path / "out", jobs=1, quiet=quiet)
    text = tty.buf.getvalue()
    assert ("100%" in text) is (not quiet)
    assert ("1 input(s): 1 analysed" in text) is (not quiet)
    # not a terminal: no bar even when not quiet
    import io

    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    annotate(small, tmp_path / "out2", jobs=1, quiet=quiet)
    assert "100%" not in pipe.getvalue() and "%|" not in pipe.getvalue()


def test_radiograph_voi_uses_percentiles_of_the_exposed_field():
    rng = np.random.default_rng(1)
    px = rng.uniform(1000, 3000, (100, 100)).astype(np.float32)
    px[:10] = 4095  # collimator blade outside the exposed field
    vm = np.ones(px.shape, bool)
    vm[:10] = False
    out, desc = display_pixels(Image(px, None, "XRAY", valid_mask=vm))
    lo, hi = np.percentile(px[vm], (1.0, 99.5))
    k = np.unravel_index(np.argmin(np.abs(px - (lo + hi) / 2) + 1e9 * ~vm), px.shape)
    assert abs(int(out[k]) - 127) <= 2 and "percentile" in desc
    assert out[:10].min() == 255
    # a nearly uniform field keeps its tissue grey, not black
    flat = np.full((50, 50), 60.0, np.float32)
    flat[20:23, 20:23] = 250.0  # 0.4 % of the pixels: above the 99.5th percentile
    out, desc = display_pixels(Image(flat, (0.2, 0.2), "XRAY"))
    assert 30 < out[0, 0] < 80 and out[21, 21] == 255 and "full range" in desc


def test_pixel_size_option_fills_in_only_where_a_file_has_none(folder, tmp_path):
    from calcdetect.batch import _load

    jobs = {j.input: j for j in find_inputs(folder)[0]}
    ct = _load(jobs["single/CT_small.dcm"], {"pixel_size_mm": 0.3, "modality": "XRAY"})
    assert ct.modality == "CT" and ct.spacing_mm == pytest.approx((0.661468, 0.661468), abs=1e-5)
    # a raster without a sidecar takes the options
    shutil.copy(folder / "raster" / "focus.png", tmp_path / "plain.png")
    job = find_inputs(tmp_path)[0][0]
    img = _load(job, {"pixel_size_mm": 0.3, "modality": "US"})
    assert img.modality == "US" and img.spacing_mm == (0.3, 0.3)
    assert img.spacing_source == "user (--pixel-size)"
    # a CT slice with no PixelSpacing gets the given one
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelSpacing
    ds.save_as(tmp_path / "nospacing.dcm")
    job = next(j for j in find_inputs(tmp_path)[0] if j.input == "nospacing.dcm")
    assert _load(job, {}).spacing_mm is None
    assert _load(job, {"pixel_size_mm": 0.5}).spacing_mm == (0.5, 0.5)


def test_any_executor_and_a_task_that_dies_is_that_inputs_error(folder, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import calcdetect.batch as batch

    real = batch.run_job

    def flaky(job, *args, **kwargs):
        if job.input == "single/CT_small.dcm":
            raise RuntimeError("worker lost")  # as a BrokenProcessPool / KilledWorker would
        return real(job, *args, **kwargs)

    monkeypatch.setattr(batch, "run_job", flaky)
    small = tmp_path / "in"
    for sub in ("ct", "single"):
        shutil.copytree(folder / sub, small / sub)
    with ThreadPoolExecutor(2) as ex:
        res = batch.annotate(small, tmp_path / "out", executor=ex, quiet=True)
        assert not ex._shutdown  # a given executor is left to its owner
    assert res.exit_code == 1 and res.processed == ["ct/series"]
    assert [(e.input, e.error_type) for e in res.errors] == [("single/CT_small.dcm", "RuntimeError")]
    assert [r["input"] for r in _read_csv(tmp_path / "out" / "errors.csv")] == ["single/CT_small.dcm"]
