"""Robustness against damaged, hostile and odd input (issue 10).

For every generated input (see ``tests/corpus.py``), ``calcdetect.load`` followed by
``calcdetect.detect`` must either return a valid report (strict JSON, mm fields null
when the spacing is unusable) or raise a :class:`~calcdetect.CalcdetectError` whose
message is one line naming the file -- never another exception, never a hang.  The CLI
must exit 0 with JSON, or non-zero with exactly one line on stderr and no traceback.

Radiograph and ultrasound loaders are developed elsewhere; until they land their files
raise :class:`~calcdetect.UnsupportedImageError`.  The checks accept "valid report OR
CalcdetectError" for them, so they stay meaningful when the real loaders arrive.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import corpus  # noqa: E402

import calcdetect  # noqa: E402
from calcdetect import errors as E  # noqa: E402
from calcdetect.io import dicom as io_dicom  # noqa: E402

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# damaged input makes pydicom, numpy and OpenCV warn on purpose; the promises checked
# here are about exceptions, reports and messages, not about library warnings
pytestmark = pytest.mark.filterwarnings("ignore")

REGRESSION_DIR = Path(__file__).parent / "corpus"
MANIFEST = json.loads((REGRESSION_DIR / "manifest.json").read_text())
CASE_TIMEOUT_S = 60
SERIES_SLICES = 4  # slices per generated series folder (each a 512 x 512 JPEG 2000 slice)


# --------------------------------------------------------------------------- helpers
class CaseTimeout(Exception):
    """Raised by the alarm when one case runs longer than allowed."""


@contextmanager
def time_limit(seconds: float):
    """Fail a case that runs longer than ``seconds`` (SIGALRM, main thread only)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def digest(path: Path) -> str:
    """SHA-256 of a file, or of every file below a folder."""
    h = hashlib.sha256()
    paths = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for p in paths:
        if not p.is_file():  # a pipe: reading it would block
            h.update(b"not a regular file")
            continue
        h.update(str(p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def load_and_detect(path: Path, *, timeout: float = CASE_TIMEOUT_S, **load_kw):
    """``("report", Report)`` or ``("error", CalcdetectError)``.  Any other exception
    propagates (and fails the test with its traceback)."""
    with time_limit(timeout):
        try:
            image = calcdetect.load(path, **load_kw)
            return "report", calcdetect.detect(image)
        except calcdetect.CalcdetectError as exc:
            return "error", exc


def problems_with(path: Path, *, expect: str = "any", error: str | None = None,
                  null_mm: bool = False, name: str | None = None, **load_kw) -> list[str]:
    """Run one input in-process and list every broken promise (empty when all is well)."""
    name = name or Path(path).name
    before = digest(path)
    try:
        kind, value = load_and_detect(path, **load_kw)
    except CaseTimeout as exc:
        return [f"{name}: hang ({exc})"]
    except Exception as exc:  # noqa: BLE001 - this is exactly what must not happen
        return [f"{name}: {type(exc).__name__} escaped: {exc}"]
    found = []
    if digest(path) != before:
        found.append(f"{name}: the input was modified")
    if kind == "error":
        msg = value.message
        if "\n" in msg or "\r" in msg:
            found.append(f"{name}: message is not one line: {msg!r}")
        if str(path) not in msg and Path(path).name not in msg and str(Path(path).parent) not in msg:
            found.append(f"{name}: message does not name the file: {msg}")
        if expect == "report":
            found.append(f"{name}: expected a report, got {type(value).__name__}: {msg}")
        if error is not None and type(value).__name__ != error:
            found.append(f"{name}: expected {error}, got {type(value).__name__}: {msg}")
    else:
        problem = corpus.check_report(value.to_json(), null_mm=null_mm)
        if problem:
            found.append(f"{name}: invalid report: {problem}")
        if expect == "error":
            found.append(f"{name}: expected an error, got a report with {value.count} finding(s)")
    return found


def run_cases(cases: list[corpus.Case]) -> list[str]:
    found: list[str] = []
    for case in cases:
        args = case.extra.get("args", [])
        kw = {"modality": args[1]} if args[:1] == ["--modality"] else {}
        found += problems_with(case.path, expect=case.expect, error=case.error,
                               null_mm=case.null_mm, name=case.name, **kw)
    return found


@pytest.fixture(scope="module")
def originals():
    """Hashes of every real source file, to prove the generators never touch them."""
    paths = [s.path for s in corpus.sources()] + [p for _, p in corpus.non_image_sources()]
    paths += corpus.ct_series_files()
    return {p: digest(p) for p in paths}


@pytest.fixture(scope="module")
def built(tmp_path_factory, originals):
    out = tmp_path_factory.mktemp("corpus")
    cases = {
        "files": corpus.build_file_corpus(out / "files", flips=1),
        "special": corpus.build_special_corpus(out / "special"),
        "series": corpus.build_series_corpus(out / "series", n=SERIES_SLICES),
    }
    for path, h in originals.items():
        assert digest(path) == h, f"generator modified the original {path}"
    return cases


# --------------------------------------------------------------------------- the corpus
def test_sources_cover_all_three_modalities():
    mods = {s.modality for s in corpus.sources()}
    assert mods == {"CT", "XRAY", "US"}, f"real source files missing: only {mods}"
    assert {s.name for s in corpus.sources()} >= {"ct_small", "ct_j2k", "cr_small", "us_palette"}


def test_generated_files_really_are_damaged(built):
    """Guard against a generator that silently writes the original back."""
    files = {c.name: c for c in built["files"]}
    ct = next(s for s in corpus.sources() if s.name == "ct_small")
    data = ct.path.read_bytes()
    assert files["ct_small-trunc-pixels.dcm"].path.stat().st_size < len(data)
    assert files["ct_small-flip-pixels-0.dcm"].path.read_bytes() != data
    import pydicom

    huge = pydicom.dcmread(files["ct_small-huge-frames.dcm"].path, stop_before_pixels=True)
    assert (huge.Rows, huge.Columns, int(huge.NumberOfFrames)) == (65535, 65535, 100000)
    lie = pydicom.dcmread(files["ct_small-ts-lie.dcm"].path, stop_before_pixels=True)
    assert lie.file_meta.TransferSyntaxUID == corpus.J2K_LOSSLESS
    zero = pydicom.dcmread(files["ct_small-spacing-zero.dcm"].path, stop_before_pixels=True)
    assert [float(v) for v in zero.PixelSpacing] == [0.0, 0.0]


def test_damaged_files_report_or_refuse(built):
    found = run_cases(built["files"])
    assert not found, "\n".join(found)


def test_special_inputs_report_or_refuse(built):
    found = run_cases(built["special"])
    assert not found, "\n".join(found)


def test_series_folders_report_or_refuse(built):
    found = run_cases(built["series"])
    assert not found, "\n".join(found)


def test_series_defects_are_named_in_warnings(built):
    cases = {c.name: c for c in built["series"]}
    n = SERIES_SLICES
    ok = calcdetect.load(cases["series-ok"].path)
    assert ok.shape[0] == n and not any("irregular" in w for w in ok.warnings)
    missing = calcdetect.load(cases["series-missing-slice"].path)
    assert missing.shape[0] == n - 1
    assert any("irregular" in w for w in missing.warnings)
    dup = calcdetect.load(cases["series-duplicate-slice"].path)
    assert dup.shape[0] == n and any("duplicate" in w for w in dup.warnings)
    mixed = calcdetect.load(cases["series-mixed-orientation"].path)
    assert mixed.shape[0] == n - 1 and any("orientations" in w for w in mixed.warnings)


def test_zero_spacing_gives_null_mm_not_made_up_numbers(built):
    cases = {c.name: c for c in built["files"]}
    for label in ("zero", "negative", "nan"):
        image = calcdetect.load(cases[f"ct_small-spacing-{label}.dcm"].path)
        assert image.spacing_mm is None and image.affine is None
        report = calcdetect.detect(image, region="all")
        d = json.loads(report.to_json())
        assert d["spacing_mm"] is None
        assert d["count"] > 0, "CT_small has bone above 130 HU: region='all' must find something"
        for f in d["findings"]:
            assert all(f[k] is None for k in corpus.MM_FIELDS if k in f), f


def test_nonfinite_float_pixels_are_excluded(built):
    cases = {c.name: c for c in built["special"]}
    image = calcdetect.load(cases["ct_small-float-mixed.dcm"].path)
    assert np.isfinite(image.pixels).all()
    # rows 0, 16, ... are NaN and columns 0, 16, ... are +inf (see corpus._float_pixels)
    assert image.valid_mask is not None
    assert not image.valid_mask[0].any() and not image.valid_mask[:, 0].any()
    assert image.valid_mask[1:16, 1:16].sum() == 15 * 15 - 1  # [1, 1] is -inf
    assert any("NaN or infinite" in w for w in image.warnings)
    calcdetect.detect(image).to_json()  # strict JSON: raises on NaN


# --------------------------------------------------------------------------- regression set
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_regression_corpus(name):
    entry = MANIFEST[name]
    found = problems_with(REGRESSION_DIR / name, expect=entry["expect"], error=entry["error"],
                          null_mm=entry["null_mm"])
    assert not found, "\n".join(found)


def test_regression_corpus_is_small():
    sizes = [p.stat().st_size for p in REGRESSION_DIR.iterdir()]
    assert max(sizes) < 8_000 and sum(sizes) < 1_000_000


def test_inputs_are_opened_read_only(monkeypatch):
    opened: list[tuple[str, str]] = []
    real_open = builtins.open

    def spy(file, mode="r", *args, **kwargs):
        opened.append((str(file), str(mode)))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    for name in ("ct16-float-nan.dcm", "ct16-trunc-pixels.dcm", "ct16-spacing-tiny.dcm"):
        load_and_detect(REGRESSION_DIR / name)
    mine = [(f, m) for f, m in opened if str(REGRESSION_DIR) in f]
    assert mine, "the spy saw no open() of the inputs"
    assert all(not set(m) & set("wax+") for _, m in mine), mine


# --------------------------------------------------------------------------- pixel budget
def test_huge_claims_refused_before_allocating(built, monkeypatch):
    """Rows=Columns=65535, NumberOfFrames=100000 on every modality: PixelBudgetError in
    well under a second, without decoding anything."""
    def no_decode(*args, **kwargs):
        raise AssertionError("pixel data was decoded despite the budget")

    monkeypatch.setattr(io_dicom, "_decode_via_dataset", no_decode)
    huge = [c for c in built["files"] if c.kind == "huge"]
    assert {c.modality for c in huge} == {"CT", "XRAY", "US"}
    for case in huge:
        t0 = time.perf_counter()
        with pytest.raises(calcdetect.PixelBudgetError) as info:
            calcdetect.load(case.path)
        assert time.perf_counter() - t0 < 2.0, case.name
        assert "budget" in info.value.message and case.path.name in info.value.message


def test_pixel_budget_is_configurable(monkeypatch):
    path = next(s.path for s in corpus.sources() if s.name == "ct_small")  # 128 x 128
    assert calcdetect.load(path, max_pixels=128 * 128).shape == (128, 128)
    with pytest.raises(calcdetect.PixelBudgetError, match="16,384 pixels, above the budget of 16,383"):
        calcdetect.load(path, max_pixels=128 * 128 - 1)
    monkeypatch.setenv("CALCDETECT_MAX_PIXELS", "16000")
    with pytest.raises(calcdetect.PixelBudgetError):
        calcdetect.load(path)
    monkeypatch.setenv("CALCDETECT_MAX_PIXELS", "16384")
    assert calcdetect.load(path).shape == (128, 128)


def test_series_budget_counts_every_slice(built):
    folder = next(c.path for c in built["series"] if c.name == "series-ok")
    with pytest.raises(calcdetect.PixelBudgetError):
        calcdetect.load(folder, max_pixels=SERIES_SLICES * 512 * 512 - 1)


def test_deflate_bomb_refused_in_bounded_memory(tmp_path):
    """A deflated data set inflating 1000 times is refused while streaming, before pydicom
    inflates it at once; a small genuine deflated file still loads."""
    import tracemalloc

    bomb = corpus.deflate_bomb(tmp_path / "bomb.dcm", 20_000_000)
    assert bomb.stat().st_size < 40_000
    tracemalloc.start()
    try:
        with pytest.raises(calcdetect.PixelBudgetError, match="inflates to more than 2,000,000 bytes"):
            calcdetect.load(bomb, max_pixels=1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, f"{peak:,} bytes traced while refusing the bomb"
    genuine = calcdetect.load(corpus.deflate_bomb(tmp_path / "small.dcm", 0))
    assert genuine.shape == (16, 16) and genuine.spacing_mm == pytest.approx((0.488281, 0.488281))


def test_lying_codestream_refused_before_decoding(monkeypatch):
    """A JPEG 2000 frame whose SIZ claims 1049088 rows (one flipped bit) made openjpeg
    allocate 0.5 GB for 15 s; now it is refused from the codestream header."""
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a codestream that disagrees with Rows/Columns")

    monkeypatch.setattr(io_dicom, "_decode_via_dataset", no_decode)
    with pytest.raises(calcdetect.UnreadableFileError, match="claims 1049088 x 64 pixels"):
        calcdetect.load(REGRESSION_DIR / "ct16-j2k-siz-lie.dcm")


def test_codestream_size_reads_real_headers():
    import pydicom
    from pydicom.encaps import generate_frames

    for name, shape in (("693_J2KR.dcm", (512, 512)), ("RG3_J2KI.dcm", (1760, 1760)),
                        ("JPGLosslessP14SV1_1s_1f_8b.dcm", (768, 1024))):
        path = corpus._testdata(name)
        if path is None:
            continue
        ds = pydicom.dcmread(path)
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        assert io_dicom.codestream_size(frame) == shape
    assert io_dicom.codestream_size(b"\x00" * 64) is None


# --------------------------------------------------------------------------- error hierarchy
def test_error_hierarchy_and_messages():
    classes = [E.UnreadableFileError, E.UnsupportedImageError, E.MissingDecoderError,
               E.InconsistentSeriesError, E.NoSpacingError, E.PixelBudgetError, E.InvalidParameterError]
    for cls in classes:
        assert issubclass(cls, calcdetect.CalcdetectError)
        exc = cls("first\nsecond line", path="/x/y.dcm", fix="do this")
        assert exc.message == "/x/y.dcm: first second line -- do this"
        import pickle

        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is cls and again.message == exc.message
    assert E.InvalidParameterError("x").exit_code == 2
    assert E.UnreadableFileError("x").exit_code == 1


def test_all_nonfinite_pixels_are_refused():
    with pytest.raises(calcdetect.InvalidParameterError, match="every pixel is NaN or infinite"):
        calcdetect.Image(np.full((4, 4), np.nan), spacing_mm=1.0, modality="CT")
    with pytest.raises(calcdetect.UnreadableFileError, match="x.dcm: every pixel"):
        calcdetect.Image(np.full((4, 4), np.inf), spacing_mm=1.0, modality="CT", source="x.dcm")
    one = calcdetect.Image(np.array([[np.nan, 5.0]]), spacing_mm=1.0, modality="CT")
    assert one.pixels.tolist() == [[5.0, 5.0]] and one.valid_mask.tolist() == [[False, True]]


def test_implausible_spacing_is_refused_for_arrays():
    with pytest.raises(calcdetect.InvalidParameterError):
        calcdetect.Image(np.zeros((4, 4)), spacing_mm=1e-30, modality="CT")
    with pytest.raises(calcdetect.InvalidParameterError):
        calcdetect.Image(np.zeros((4, 4)), spacing_mm=(float("nan"), 1.0), modality="CT")
    assert calcdetect.Image(np.zeros((4, 4)), spacing_mm=0.05, modality="XRAY").spacing_mm == (0.05, 0.05)
    with pytest.raises(calcdetect.InvalidParameterError, match="^/x/us.dcm: spacing_mm"):
        calcdetect.Image(np.zeros((4, 4)), spacing_mm=1e-29, modality="US", source="/x/us.dcm")


# --------------------------------------------------------------------------- CLI
CLI_CASES = {
    "ct16-float-nan.dcm": "report",
    "ct16-spacing-tiny.dcm": "report",
    "ct16-huge-frames.dcm": "refused",
    "ct16-j2k-siz-lie.dcm": "refused",
    "ct-trunc-header.dcm": "refused",
    "us32-huge-frames.dcm": "refused",
    "text.dcm": "refused",
    "rtplan.dcm": "refused",
}


def test_cli_reports_or_refuses_in_one_line():
    def run(name):
        entry = MANIFEST[name]
        return name, corpus.run_cli(REGRESSION_DIR / name, null_mm=entry["null_mm"], timeout=CASE_TIMEOUT_S)

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(run, CLI_CASES))
    bad = {n: (r["outcome"], r["detail"]) for n, r in results.items() if r["outcome"] != CLI_CASES[n]}
    assert not bad, bad
    for name, r in results.items():
        if r["outcome"] == "refused":
            assert r["returncode"] == 1 and r["stdout"] == ""
            assert name in r["stderr"] and r["stderr"].count("\n") == 1
        else:
            assert r["returncode"] == 0 and r["stderr"] == ""
    assert "budget" in results["ct16-huge-frames.dcm"]["stderr"]


def test_cli_debug_shows_the_traceback():
    r = corpus.run_cli(REGRESSION_DIR / "text.dcm", debug=True, timeout=CASE_TIMEOUT_S)
    assert r["returncode"] not in (0, None) and r["returncode"] > 0
    assert "Traceback (most recent call last)" in r["stderr"]
    assert "UnreadableFileError" in r["stderr"]


def test_cli_turns_a_bug_into_one_line(monkeypatch, capsys):
    from calcdetect import cli

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(sys.modules["calcdetect.detect"], "detect", broken)
    path = str(REGRESSION_DIR / "ct16-float-nan.dcm")
    assert cli.main(["detect", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and path in err and "RuntimeError" in err
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "detect", path])


def test_cli_usage_error_exit_2(capsys):
    from calcdetect import cli

    assert cli.main(["detect", str(REGRESSION_DIR / "ct16-float-nan.dcm"), "--pixel-size", "1e-9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pixel size" in err


# --------------------------------------------------------------------------- property-based
def _seeds() -> dict[str, bytes]:
    out = {}
    for s in corpus.sources():
        if s.name in ("ct_small", "ct_j2k", "cr_small"):
            out[s.name] = s.path.read_bytes()
    for name in ("us32-flip-header.dcm", "ct16-float-nan.dcm"):
        out[name] = (REGRESSION_DIR / name).read_bytes()
    return out


SEEDS = _seeds()
OPS = st.lists(
    st.tuples(st.sampled_from(["flip", "flip", "flip", "zero", "dup", "del", "cut"]),
              st.integers(0, 2**31 - 1), st.integers(0, 2**16)),
    min_size=1, max_size=6,
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(SEEDS)), ops=OPS)
def test_mutated_bytes_report_or_refuse(seed, ops):
    data = corpus.mutate(SEEDS[seed], ops)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutant.dcm"
        path.write_bytes(data)
        found = problems_with(path, timeout=CASE_TIMEOUT_S)
    assert not found, f"{seed} {ops}: {found}"


HEADER_VALUES = st.fixed_dictionaries({}, optional={
    "Rows": st.integers(0, 65535),
    "Columns": st.integers(0, 65535),
    "NumberOfFrames": st.sampled_from(["0", "1", "2", "-1", "100000", "x"]),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64]),
    "BitsStored": st.integers(0, 64),
    "SamplesPerPixel": st.integers(0, 4),
    "PixelRepresentation": st.integers(0, 2),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR", ""]),
    "PixelSpacing": st.lists(st.sampled_from(["0", "-1", "NaN", "inf", "1e-30", "1e30", "0.5", "x", ""]),
                             min_size=0, max_size=3),
    "RescaleSlope": st.sampled_from(["0", "NaN", "-1", "1e38", "1e-38", "x"]),
    "ImageOrientationPatient": st.lists(st.sampled_from(["0", "1", "-1", "NaN"]), min_size=0, max_size=7),
})


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(values=HEADER_VALUES, seed=st.sampled_from(["ct16", "cr16"]))
def test_generated_headers_report_or_refuse(values, seed):
    src = corpus.TINY_CT if seed == "ct16" else corpus.TINY_CR
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated.dcm"
        corpus.edited(src, path, corpus._set(**values))
        found = problems_with(path, timeout=CASE_TIMEOUT_S)
    assert not found, f"{values}: {found}"



def test_claimed_pixels_never_lowered_by_a_damaged_samples_per_pixel():
    """A SamplesPerPixel that is not a number counts as 1, so the pixel budget still
    sees the frames x rows x columns; it used to count the file as 0 pixels."""
    from pydicom.dataset import Dataset

    from calcdetect.io.dicom import claimed_pixels

    ds = Dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1000, 1200, 50
    ds.SamplesPerPixel = [3, 3]  # two values where one number belongs
    assert claimed_pixels(ds) == 50 * 1000 * 1200
    ds.SamplesPerPixel = 3
    assert claimed_pixels(ds) == 3 * 50 * 1000 * 1200
    ds.Rows = [1, 2]
    assert claimed_pixels(ds) == 0  # no size at all: decoding reports it
