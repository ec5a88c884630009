"""What a user sees: the entry points, error messages that name the file, and outputs that
others can read.  Found in a review of the public contract (design.md section 3)."""

from __future__ import annotations

import csv
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from calcdetect import cli
from calcdetect.batch import annotate
from calcdetect.outputs import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"


def test_python_dash_m_calcdetect_runs_the_cli():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "calcdetect", "--version"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("calcdetect ")


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_atomic_outputs_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    os.umask(old)
    target = write_text_atomic(tmp_path / "report.json", "{}\n")
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~old  # not mkstemp's 0600: colleagues must be able to read it


@pytest.mark.parametrize("modality", [None, "CT"])
def test_raster_without_usable_modality_names_the_file(tmp_path, capsys, modality):
    png = tmp_path / "cheek.png"
    cv2.imwrite(str(png), np.full((40, 40), 90, np.uint8))
    argv = ["detect", str(png)] + (["--modality", modality] if modality else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(png) in err


def test_annotate_names_the_damaged_slice_of_a_series(tmp_path):
    src = tmp_path / "in" / "series"
    shutil.copytree(SAMPLES / "ct_phantom_series", src)
    victim = sorted(src.glob("*.dcm"))[4]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 5000])  # cut into the pixel data
    result = annotate(tmp_path / "in", tmp_path / "out", jobs=1, quiet=True)
    assert result.exit_code == 1
    rows = list(csv.DictReader(open(tmp_path / "out" / "errors.csv", newline="")))
    assert len(rows) == 1 and rows[0]["input"] == "series"
    assert rows[0]["reason"].startswith(victim.name + ": ")


def test_long_decoder_messages_are_cut_at_a_word():
    from calcdetect.io.dicom import _first_line

    text = "The number of bytes of pixel data is less than expected " + "word " * 40
    line = _first_line(ValueError(text))
    assert len(line) <= 164 and line.endswith(" ...")
    assert line[:-4].split()[-1] == "word"


def test_unwritable_detect_output_is_one_line_not_an_internal_error(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    target = blocker / "report.json"  # a file stands where a folder should be
    assert cli.main(["detect", str(SAMPLES / "us_linear_phantom.dcm"), "-o", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(target) in err and "internal error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing half-written


def test_unwritable_annotate_outdir_is_one_line_not_an_internal_error(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "out"
    assert cli.main(["annotate", str(SAMPLES), "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(out) in err and "internal error" not in err


@pytest.mark.parametrize("before", [True, False])
def test_debug_is_accepted_before_and_after_the_subcommand(tmp_path, before):
    """Error messages say "rerun with --debug"; appending it must not be a usage error."""
    png = tmp_path / "cheek.png"
    cv2.imwrite(str(png), np.full((40, 40), 90, np.uint8))
    argv = ["detect", str(png)]
    argv = ["--debug"] + argv if before else argv + ["--debug"]
    from calcdetect.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError):  # --debug: the exception, not the one-liner
        cli.main(argv)
    assert cli.main(["detect", str(png)]) == 2  # without it: one line, exit 2


def test_dicom_outputs_of_a_png_are_refused_up_front(tmp_path, capsys):
    """--dicom-sr on a PNG said 'is not a DICOM file -- give a DICOM, PNG, ...' after the
    JSON had been printed; it must be refused before any output, saying why."""
    import calcdetect
    from calcdetect.dicom_out import source_datasets
    from calcdetect.errors import UnsupportedImageError

    png = SAMPLES / "us_sector_frame.png"
    sr = tmp_path / "p.sr.dcm"
    rc = cli.main(["detect", str(png), "--modality", "US", "--pixel-size", "0.1", "--dicom-sr", str(sr)])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and not sr.exists()
    assert len(err.strip().splitlines()) == 1 and "DICOM outputs need" in err and str(png) in err
    image = calcdetect.load(png, modality="US", pixel_size_mm=0.1)
    with pytest.raises(UnsupportedImageError, match="DICOM outputs need"):
        source_datasets(image)


def test_modality_mismatch_error_carries_the_path():
    import calcdetect
    from calcdetect.errors import InvalidParameterError

    path = SAMPLES / "us_linear_phantom.dcm"
    with pytest.raises(InvalidParameterError) as info:
        calcdetect.load(path, modality="CT")
    assert info.value.path == str(path)  # in .path (as every other error), not pasted into .reason
    assert str(path) not in info.value.reason


def test_annotate_names_the_output_it_cannot_write_and_goes_on(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLES / "us_linear_phantom.dcm", src / "a.dcm")
    shutil.copy(SAMPLES / "xray_phantom_cr.dcm", src / "b.dcm")
    out = tmp_path / "out"
    (out / "a.dcm.json").mkdir(parents=True)  # a folder where the report must go
    result = annotate(src, out, jobs=1, quiet=True)
    assert result.exit_code == 1 and result.processed == ["b.dcm"]
    (err,) = result.errors
    assert err.input == "a.dcm" and err.reason.startswith(f"{out / 'a.dcm.json'}: cannot write")


@pytest.mark.parametrize("value", ["inf", "abc", "0", "-5", "nan"])
def test_bad_pixel_budget_variable_is_one_usage_line(monkeypatch, capsys, value):
    """inf crashed as an internal OverflowError; typos were silently ignored."""
    monkeypatch.setenv("CALCDETECT_MAX_PIXELS", value)
    from calcdetect.io.dicom import max_pixels

    if value == "inf":
        assert max_pixels() >= 10**15  # no practical limit
        assert cli.main(["detect", str(SAMPLES / "us_linear_phantom.dcm"), "--compact"]) == 0
        return
    assert cli.main(["detect", str(SAMPLES / "us_linear_phantom.dcm")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CALCDETECT_MAX_PIXELS" in err


def test_pixel_size_completes_a_series_with_zero_pixel_spacing(tmp_path):
    """The warning says 'pass --pixel-size'; doing so raised 'a volume without slice
    positions ...' although the slices have positions."""
    import pydicom

    import calcdetect

    for f in sorted((SAMPLES / "ct_phantom_series").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [0, 0]
        ds.save_as(tmp_path / f.name)
    bare = calcdetect.load(tmp_path)
    assert bare.spacing_mm is None
    ref = calcdetect.detect(calcdetect.load(SAMPLES / "ct_phantom_series")).to_dict()
    image = calcdetect.load(tmp_path, pixel_size_mm=0.9)
    assert image.spacing_mm == pytest.approx(ref["spacing_mm"])
    got = calcdetect.detect(image).to_dict()
    assert got["count"] == ref["count"]
    assert [f["volume_mm3"] for f in got["findings"]] == [f["volume_mm3"] for f in ref["findings"]]


def test_detect_says_which_options_did_not_apply(tmp_path):
    import json

    out = tmp_path / "xray.json"
    assert cli.main(["detect", str(SAMPLES / "xray_phantom_cr.dcm"), "--threshold", "200", "--region", "all",
                     "--frames", "2", "-o", str(out)]) == 0
    warnings = json.loads(out.read_text())["warnings"]
    assert "--region, --threshold, --frames do not apply to a XRAY image and were ignored" in warnings
    # the same findings as without them: ignored, not half-applied
    plain = tmp_path / "plain.json"
    assert cli.main(["detect", str(SAMPLES / "xray_phantom_cr.dcm"), "-o", str(plain)]) == 0
    assert json.loads(out.read_text())["findings"] == json.loads(plain.read_text())["findings"]
    # options that apply give no such warning
    ct = tmp_path / "ct.json"
    assert cli.main(["detect", str(SAMPLES / "ct_real_abdomen_slice.dcm"), "--region", "all", "-o", str(ct)]) == 0
    assert not any("do not apply" in w or "does not apply" in w for w in json.loads(ct.read_text())["warnings"])


@pytest.mark.parametrize("spacing", [(0.7, 0.7), None])
def test_empty_dataframe_has_the_columns_of_a_full_one(spacing):
    pytest.importorskip("pandas")
    from calcdetect import detect
    from calcdetect.image import Image

    plane = np.full((96, 96), 40.0, np.float32)  # soft tissue
    empty = detect(Image(pixels=plane.copy(), spacing_mm=spacing, modality="CT", source="empty"), region="all")
    plane[40:46, 40:46] = 600.0  # one calcified focus
    full = detect(Image(pixels=plane, spacing_mm=spacing, modality="CT", source="full"), region="all")
    assert empty.count == 0 and full.count == 1
    empty_cols = list(empty.to_dataframe().columns)
    full_cols = list(full.to_dataframe().columns)
    assert empty_cols and empty_cols == [c for c in full_cols if c in empty_cols]
    assert set(empty_cols) <= set(full_cols)


def test_write_dataset_without_file_meta_is_a_calcdetect_error(tmp_path):
    pytest.importorskip("highdicom")
    from pydicom.dataset import Dataset

    from calcdetect.dicom_out import write_dataset
    from calcdetect.errors import InvalidParameterError

    ds = Dataset()
    ds.PatientName = "Test"
    target = tmp_path / "out.dcm"
    with pytest.raises(InvalidParameterError, match="out.dcm"):
        write_dataset(ds, target)
    assert not target.exists()


def test_sop_class_name_of_an_empty_uid_is_unknown():
    from pydicom.dataset import Dataset

    from calcdetect.io.dicom import sop_class_name

    ds = Dataset()
    assert sop_class_name(ds) == "unknown SOP class"
    ds.SOPClassUID = ""  # present but empty (anonymised exports): the message said "image ()"
    assert sop_class_name(ds) == "unknown SOP class"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    assert sop_class_name(ds) == "CT Image Storage"
