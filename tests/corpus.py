"""Generate damaged, hostile and odd DICOM inputs from real files (issue 10).

The generators read real DICOM files of the three modalities (CT, radiograph,
ultrasound), damage copies of them and write the copies to a directory the caller owns
(pytest's ``tmp_path``).  The originals are only ever opened for reading.

Every generated input is described by a :class:`Case`: where it is, which modality its
source was, what kind of damage it carries and what calcdetect must do with it:

``expect="any"``
    either a valid report or a :class:`~calcdetect.CalcdetectError` (most damage: a bit
    flip may or may not hit something that matters);
``expect="error"``
    a :class:`~calcdetect.CalcdetectError` (optionally of class ``error``);
``expect="report"``
    a valid report (odd but readable inputs, e.g. a zero PixelSpacing: the report must
    then carry null mm fields).

Used by ``tests/test_robustness.py`` and ``benchmarks/robustness.py``.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SERIES_DIR = Path("/work/shared/data/ct-abdomen-series")
J2K_LOSSLESS = UID("1.2.840.10008.1.2.4.90")
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData


@dataclass(frozen=True)
class Source:
    """A real DICOM file used as raw material."""

    name: str
    path: Path
    modality: str  # "CT", "XRAY" or "US"
    compressed: bool


@dataclass
class Case:
    """One generated input and what calcdetect must do with it."""

    name: str
    path: Path
    modality: str  # source modality: "CT", "XRAY", "US", or "none" (not an image)
    kind: str  # damage category, e.g. "truncated", "bitflip-header"
    expect: str = "any"  # "any" | "error" | "report"
    error: str | None = None  # name of the expected CalcdetectError subclass, if fixed
    null_mm: bool = False  # a report must carry null mm fields (unusable spacing)
    note: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- sources
def _testdata(name: str) -> Path | None:
    """Path of a pydicom / pydicom-data test file, without any network access."""
    local = PYDICOM_TEST_FILES / name
    if local.exists():
        return local
    try:  # pydicom-data installs its files in the `data_store` package
        import data_store  # type: ignore[import-not-found]

        for base in getattr(data_store, "__path__", []):
            cand = Path(base) / "data" / name
            if cand.exists():
                return cand
    except ImportError:
        pass
    return None


def ct_series_files() -> list[Path]:
    """The slices of the shared real CT series (JPEG 2000), sorted by name."""
    if not CT_SERIES_DIR.is_dir():
        return []
    return sorted(CT_SERIES_DIR.glob("*.dcm"))


def sources() -> list[Source]:
    """Real DICOM files of the three modalities that exist on this machine."""
    series = ct_series_files()
    wanted: list[tuple[str, Path | None, str, bool]] = [
        ("ct_small", _testdata("CT_small.dcm"), "CT", False),
        ("ct_abdomen", series[len(series) // 2] if series else None, "CT", True),
        ("ct_j2k", _testdata("693_J2KR.dcm"), "CT", True),
        ("cr_small", PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154", "XRAY", False),
        ("rg_j2k", _testdata("RG3_J2KI.dcm"), "XRAY", True),
        ("us_palette", _testdata("OBXXXX1A.dcm"), "US", False),
        ("us_rgb", _testdata("US1_UNCR.dcm"), "US", False),
        ("us_aloka", _testdata("gdcm-US-ALOKA-16.dcm"), "US", False),
    ]
    return [Source(n, p, m, c) for n, p, m, c in wanted if p is not None and p.exists()]


def non_image_sources() -> list[tuple[str, Path]]:
    """Real DICOM files that hold no image: an RT plan, a structured report, DICOMDIRs."""
    items = [
        ("rtplan", PYDICOM_TEST_FILES / "rtplan.dcm"),
        ("sr", PYDICOM_TEST_FILES / "test-SR.dcm"),
        ("dicomdir", PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR"),
        ("dicomdir_empty", PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR-empty.dcm"),
    ]
    return [(n, p) for n, p in items if p.exists()]


# --------------------------------------------------------------------------- byte tools
def pixel_data_offset(data: bytes) -> int:
    """Offset of the first pixel data element tag in a DICOM byte string.

    Falls back to ``len(data)`` when none is found (so "after the header" is empty).
    """
    best = len(data)
    for tag in PIXEL_TAGS:
        group, elem = tag >> 16, tag & 0xFFFF
        needle = struct.pack("<HH", group, elem)
        pos = data.rfind(needle)  # the last one: icons in sequences come earlier
        if pos >= 132:
            best = min(best, pos)
    return best


def truncate(data: bytes, length: int) -> bytes:
    """The first ``length`` bytes."""
    return data[: max(0, length)]


def flip_bits(data: bytes, start: int, stop: int, n: int, rng: random.Random) -> bytes:
    """Flip ``n`` random bits with byte offsets in ``[start, stop)``."""
    buf = bytearray(data)
    stop = min(stop, len(buf))
    if stop <= start:
        return bytes(buf)
    for _ in range(n):
        pos = rng.randrange(start, stop)
        buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf)


def random_after_preamble(n: int, rng: random.Random) -> bytes:
    """A 128-byte preamble, ``DICM`` and ``n`` random bytes."""
    return b"\0" * 128 + b"DICM" + bytes(rng.getrandbits(8) for _ in range(n))


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` without pydicom's validation (the point is to write bad values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=False)
    return path


def edited(src: Path, out: Path, edit: Callable[[Dataset], None]) -> Path:
    """Copy ``src`` to ``out`` with ``edit(ds)`` applied to the dataset."""
    ds = _read(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edit(ds)
    return save(ds, out)


def _set(**values) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        for key, value in values.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
    return edit


def _float_pixels(special: str) -> Callable[[Dataset], None]:
    """Replace PixelData by FloatPixelData holding NaN / inf values."""

    def edit(ds: Dataset) -> None:
        rows, cols = int(ds.Rows), int(ds.Columns)
        arr = np.linspace(-100, 300, rows * cols, dtype=np.float32).reshape(rows, cols)
        if special in ("nan", "mixed"):
            arr[:: max(1, rows // 8), :] = np.nan
        if special in ("inf", "mixed"):
            arr[:, :: max(1, cols // 8)] = np.inf
            arr[1, 1] = -np.inf
        if special == "allnan":
            arr[:] = np.nan
        for key in ("PixelData", "NumberOfFrames", "LargestImagePixelValue", "SmallestImagePixelValue"):
            if key in ds:
                delattr(ds, key)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 32
        for key in ("BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration",
                    "RedPaletteColorLookupTableDescriptor"):
            if key in ds:
                delattr(ds, key)
        ds.FloatPixelData = arr.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return edit


def _float_rescale(value: float) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        ds.RescaleSlope = str(value) if not np.isfinite(value) else value
        ds.RescaleIntercept = 0
    return edit


def _orientation(iop) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        ds.ImageOrientationPatient = list(iop)
    return edit


# --------------------------------------------------------------------------- builders
def _spacing_cases(src: Source, out: Path) -> list[Case]:
    """Zero, negative and NaN physical spacing (the tag the modality uses)."""
    cases = []
    values = {"zero": ["0", "0"], "negative": ["-0.5", "-0.5"], "nan": ["NaN", "NaN"]}
    for label, value in values.items():
        name = f"{src.name}-spacing-{label}.dcm"
        if src.modality == "CT":
            edit = _set(PixelSpacing=value)
        elif src.modality == "XRAY":
            edit = _set(PixelSpacing=value, ImagerPixelSpacing=value)
        else:
            def edit(ds, value=value):  # ultrasound: the region calibration
                if "SequenceOfUltrasoundRegions" in ds:
                    for reg in ds.SequenceOfUltrasoundRegions:
                        reg.PhysicalDeltaX = float(value[0])
                        reg.PhysicalDeltaY = float(value[1])
                ds.PixelSpacing = value
        cases.append(Case(name, edited(src.path, out / name, edit), src.modality, f"spacing-{label}",
                          expect="report" if src.modality == "CT" else "any",
                          null_mm=True, note=f"PixelSpacing {value}"))
    return cases


def build_file_corpus(
    out: str | Path,
    *,
    flips: int = 2,
    truncations: Iterable[str] = ("preamble", "dicm", "meta", "header", "before-pixels", "pixels", "last-byte"),
    selected: Iterable[str] | None = None,
    seed: int = 0,
) -> list[Case]:
    """Damaged single files made from every real source.

    Parameters
    ----------
    out : path
        Directory to write into (created).
    flips : int
        How many independent bit-flip variants (header and pixel data each) per source.
    truncations : iterable of str
        Which truncation points to generate, by name.
    selected : iterable of str, optional
        Only these source names (default: all).
    seed : int
        Random seed (the corpus is reproducible).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cases: list[Case] = []
    keep = set(selected) if selected is not None else None
    for src in sources():
        if keep is not None and src.name not in keep:
            continue
        data = src.path.read_bytes()
        pix = pixel_data_offset(data)
        cut = {
            "preamble": 64, "dicm": 130, "meta": 180, "header": max(133, pix // 2),
            "before-pixels": max(133, pix - 2), "pixels": pix + (len(data) - pix) // 2,
            "last-byte": len(data) - 1,
        }
        for label in truncations:
            name = f"{src.name}-trunc-{label}.dcm"
            cases.append(Case(name, _write(out / name, truncate(data, cut[label])), src.modality,
                              "truncated", expect="error" if label != "last-byte" else "any",
                              note=f"first {cut[label]} of {len(data)} bytes"))
        for k in range(flips):
            name = f"{src.name}-flip-header-{k}.dcm"
            cases.append(Case(name, _write(out / name, flip_bits(data, 132, pix, 8, rng)),
                              src.modality, "bitflip-header"))
            name = f"{src.name}-flip-pixels-{k}.dcm"
            cases.append(Case(name, _write(out / name, flip_bits(data, pix + 12, len(data), 64, rng)),
                              src.modality, "bitflip-pixels"))
        # a transfer syntax that lies
        name = f"{src.name}-ts-lie.dcm"
        lie = ExplicitVRLittleEndian if src.compressed else J2K_LOSSLESS
        cases.append(Case(name, _retag_ts(data, out / name, lie), src.modality,
                          "ts-lie", expect="error", note=f"labelled {lie.name}"))
        if not src.compressed:
            other = ImplicitVRLittleEndian if _read_ts(src.path) != ImplicitVRLittleEndian else ExplicitVRLittleEndian
            name = f"{src.name}-ts-vr-lie.dcm"
            cases.append(Case(name, _retag_ts(data, out / name, other), src.modality, "ts-lie",
                              note=f"file meta says {other.name}"))
        # sizes that lie
        ds = _read(src.path)
        rows, cols = int(ds.Rows), int(ds.Columns)
        for label, edit in {
            "rows-double": _set(Rows=rows * 2),
            "cols-double": _set(Columns=cols * 2),
            "frames-3": _set(NumberOfFrames=3),
        }.items():
            name = f"{src.name}-{label}.dcm"
            cases.append(Case(name, edited(src.path, out / name, edit), src.modality, "size-lie",
                              expect="error" if not src.compressed else "any"))
        for label, edit in {
            "huge-rows-cols": _set(Rows=65535, Columns=65535),
            "huge-frames": _set(Rows=65535, Columns=65535, NumberOfFrames=100000),
        }.items():
            name = f"{src.name}-{label}.dcm"
            cases.append(Case(name, edited(src.path, out / name, edit), src.modality, "huge",
                              expect="error", error="PixelBudgetError"))
        # odd values in the image pixel module
        for label, edit in {
            "zero-rows": _set(Rows=0),
            "no-columns": _set(Columns=None),
            "bits-allocated-7": _set(BitsAllocated=7),
            "samples-0": _set(SamplesPerPixel=0),
            "photometric-garbage": _set(PhotometricInterpretation="BANANA"),
        }.items():
            name = f"{src.name}-{label}.dcm"
            cases.append(Case(name, edited(src.path, out / name, edit), src.modality, "pixel-module"))
        cases += _spacing_cases(src, out)
    return cases


def _read_ts(path: Path) -> UID | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.file_meta.get("TransferSyntaxUID")


def _retag_ts(data: bytes, out: Path, uid: UID) -> Path:
    """Rewrite only the file meta's TransferSyntaxUID, leaving the data set bytes as they
    are (so an implicit-VR body is labelled explicit, or the reverse)."""
    from io import BytesIO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp = BytesIO(data)
        pydicom.filereader.read_preamble(fp, False)
        file_meta = pydicom.filereader._read_file_meta_info(fp)
        body = data[fp.tell():]
        file_meta.TransferSyntaxUID = uid
        buf = BytesIO()
        buf.write(b"\0" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(buf, file_meta, enforce_standard=False)
    return _write(out, buf.getvalue() + body)


def build_special_corpus(out: str | Path, *, seed: int = 0) -> list[Case]:
    """Cases not derived file by file: float pixel data, odd rescale, non-image DICOMs,
    files that are not DICOM, random bytes after a preamble, empty files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cases: list[Case] = []
    srcs = {s.name: s for s in sources()}
    cases.append(Case("empty.dcm", _write(out / "empty.dcm", b""), "none", "empty",
                      expect="error", error="UnreadableFileError"))
    cases.append(Case("preamble-only.dcm", _write(out / "preamble-only.dcm", b"\0" * 128 + b"DICM"),
                      "none", "truncated", expect="error", error="UnreadableFileError"))
    for k in range(3):
        name = f"random-after-preamble-{k}.dcm"
        cases.append(Case(name, _write(out / name, random_after_preamble(2000 + 3000 * k, rng)),
                          "none", "random", expect="error"))
    name = "random-no-preamble.dcm"
    cases.append(Case(name, _write(out / name, bytes(rng.getrandbits(8) for _ in range(4096))),
                      "none", "random", expect="error"))
    cases.append(Case("text.dcm", _write(out / "text.dcm", b"This is not a DICOM file.\nJust text.\n" * 20),
                      "none", "not-dicom", expect="error", error="UnreadableFileError"))
    import cv2

    ok, png = cv2.imencode(".png", (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64))
    cases.append(Case("png.dcm", _write(out / "png.dcm", png.tobytes()), "none", "not-dicom",
                      expect="error", error="UnreadableFileError"))
    cases.append(Case("truncated.png", _write(out / "truncated.png", png.tobytes()[:60]), "none",
                      "not-dicom", expect="error", error="UnreadableFileError",
                      extra={"args": ["--modality", "XRAY"]}))
    for name, path in non_image_sources():
        dst = out / f"{name}.dcm"
        shutil.copyfile(path, dst)
        cases.append(Case(dst.name, dst, "none", "non-image", expect="error", error="UnsupportedImageError"))
    # float pixel data with NaN / inf, and rescale values that overflow float32
    for src_name in ("ct_small", "cr_small", "us_palette"):
        src = srcs.get(src_name)
        if src is None:
            continue
        for special in ("nan", "inf", "mixed", "allnan"):
            name = f"{src.name}-float-{special}.dcm"
            cases.append(Case(name, edited(src.path, out / name, _float_pixels(special)), src.modality,
                              "float-nonfinite", expect="report" if src.modality == "CT" and special != "allnan" else "any"))
    if "ct_small" in srcs:
        src = srcs["ct_small"]
        for label, value in {"nan": float("nan"), "huge": 1e38, "inf": float("inf")}.items():
            name = f"ct_small-rescale-{label}.dcm"
            cases.append(Case(name, edited(src.path, out / name, _float_rescale(value)), "CT",
                              "rescale", expect="any"))
        name = "ct_small-orientation-zero.dcm"
        cases.append(Case(name, edited(src.path, out / name, _orientation([0] * 6)), "CT", "geometry",
                          expect="report"))
        name = "ct_small-position-nan.dcm"
        cases.append(Case(name, edited(src.path, out / name, _set(ImagePositionPatient=["NaN", "0", "0"])),
                          "CT", "geometry", expect="report"))
    return cases


def _series_subset(out: Path, n: int) -> list[Path]:
    """Copy ``n`` consecutive slices of the shared CT series into ``out``."""
    files = ct_series_files()
    start = max(0, len(files) // 2 - n // 2)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files[start:start + n]:
        dst = out / f.name
        shutil.copyfile(f, dst)
        os.chmod(dst, 0o644)
        paths.append(dst)
    return paths


def build_series_corpus(out: str | Path, *, n: int = 5) -> list[Case]:
    """Series folders with missing, duplicate, damaged and mis-oriented slices, and
    folders holding no DICOM at all."""
    out = Path(out)
    cases: list[Case] = []
    empty = out / "empty-folder"
    empty.mkdir(parents=True, exist_ok=True)
    cases.append(Case(empty.name, empty, "none", "folder", expect="error", error="UnreadableFileError"))
    texts = out / "no-dicom-folder"
    texts.mkdir(parents=True, exist_ok=True)
    (texts / "notes.txt").write_text("no images here\n")
    (texts / "fake.dcm").write_text("not a dicom\n")
    cases.append(Case(texts.name, texts, "none", "folder", expect="error", error="UnreadableFileError"))
    if not ct_series_files():
        return cases
    folder = out / "series-ok"
    _series_subset(folder, n)
    cases.append(Case(folder.name, folder, "CT", "series-ok", expect="report"))
    folder = out / "series-missing-slice"
    paths = _series_subset(folder, n)
    paths[len(paths) // 2].unlink()
    cases.append(Case(folder.name, folder, "CT", "series-missing", expect="report",
                      note="irregular spacing must be warned about"))
    folder = out / "series-duplicate-slice"
    paths = _series_subset(folder, n)
    edited(paths[1], folder / "duplicate.dcm", _set(SOPInstanceUID=generate_uid()))
    cases.append(Case(folder.name, folder, "CT", "series-duplicate", expect="report"))
    folder = out / "series-mixed-orientation"
    paths = _series_subset(folder, n)
    edited(paths[0], paths[0], _orientation([0, 1, 0, 0, 0, -1]))
    cases.append(Case(folder.name, folder, "CT", "series-orientation", expect="report"))
    folder = out / "series-truncated-slice"
    paths = _series_subset(folder, n)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: pixel_data_offset(data) + 100])
    cases.append(Case(folder.name, folder, "CT", "series-damaged", expect="any"))
    folder = out / "series-no-positions"
    paths = _series_subset(folder, n)
    for p in paths:
        edited(p, p, _set(ImagePositionPatient=None))
    cases.append(Case(folder.name, folder, "CT", "series-geometry", expect="error",
                      error="InconsistentSeriesError"))
    folder = out / "series-bad-orientation"
    paths = _series_subset(folder, n)
    for p in paths:
        edited(p, p, _orientation([0, 0, 0, 0, 0, 0]))
    cases.append(Case(folder.name, folder, "CT", "series-geometry", expect="error",
                      error="InconsistentSeriesError"))
    folder = out / "series-mixed-sizes"
    paths = _series_subset(folder, n)
    src = {s.name: s for s in sources()}.get("ct_small")
    if src is not None:
        ref = _read(paths[0])

        def same_series(ds, ref=ref):
            ds.SeriesInstanceUID = ref.SeriesInstanceUID
            ds.ImageOrientationPatient = ref.ImageOrientationPatient
            ds.ImagePositionPatient = [float(v) for v in ref.ImagePositionPatient[:2]] + [1000.0]
            ds.PixelSpacing = ref.PixelSpacing
        edited(src.path, folder / "odd-size.dcm", same_series)
        cases.append(Case(folder.name, folder, "CT", "series-sizes", expect="error",
                          error="InconsistentSeriesError"))
    folder = out / "series-zero-spacing"
    paths = _series_subset(folder, 3)
    for p in paths:
        edited(p, p, _set(PixelSpacing=["0", "0"]))
    cases.append(Case(folder.name, folder, "CT", "series-spacing", expect="report", null_mm=True))
    return cases


def build_corpus(out: str | Path, *, seed: int = 0, flips: int = 2) -> list[Case]:
    """The whole corpus: damaged files, special cases and series folders."""
    out = Path(out)
    return (build_file_corpus(out / "files", seed=seed, flips=flips)
            + build_special_corpus(out / "special", seed=seed)
            + build_series_corpus(out / "series"))


def build_random_corpus(out: str | Path, count: int, *, seed: int = 0) -> list[Case]:
    """``count`` randomly damaged DICOMs spread evenly over the three modalities.

    Each one is a real source file with one random kind of damage: truncation at a
    random offset, bit flips in the header or the pixel data, a random size or
    transfer-syntax lie, a random spacing value, or random bytes spliced in.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    by_mod: dict[str, list[Source]] = {}
    for s in sources():
        by_mod.setdefault(s.modality, []).append(s)
    mods = sorted(by_mod)
    cases = []
    blobs: dict[Path, bytes] = {}
    for i in range(count):
        mod = mods[i % len(mods)]
        src = rng.choice(by_mod[mod])
        data = blobs.setdefault(src.path, src.path.read_bytes())
        pix = pixel_data_offset(data)
        kind = rng.choice(["truncate", "flip-header", "flip-pixels", "splice", "size-lie",
                           "ts-lie", "spacing", "huge"])
        name = f"{i:03d}-{src.name}-{kind}.dcm"
        path = out / name
        if kind == "truncate":
            _write(path, truncate(data, rng.randrange(0, len(data))))
        elif kind == "flip-header":
            _write(path, flip_bits(data, 132, pix, rng.randint(1, 16), rng))
        elif kind == "flip-pixels":
            _write(path, flip_bits(data, pix, len(data), rng.randint(1, 256), rng))
        elif kind == "splice":
            pos = rng.randrange(132, len(data))
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512)))
            _write(path, data[:pos] + junk + data[pos + rng.randint(0, 512):])
        elif kind == "size-lie":
            key = rng.choice(["Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel"])
            value = rng.choice([0, 1, 2, 3, 7, 12, 255, 4096, 32767])
            edited(src.path, path, _set(**{key: value}))
        elif kind == "ts-lie":
            uid = rng.choice([ExplicitVRLittleEndian, ImplicitVRLittleEndian, J2K_LOSSLESS,
                              UID("1.2.840.10008.1.2.4.50"), UID("1.2.840.10008.1.2.5"),
                              UID("1.2.840.10008.1.2.2"), UID("9.9.9")])
            _retag_ts(data, path, uid)
        elif kind == "spacing":
            value = rng.choice(["0", "-1", "NaN", "inf", "1e-30", "1e30", "abc"])
            key = "PixelSpacing" if mod != "XRAY" else rng.choice(["PixelSpacing", "ImagerPixelSpacing"])
            edited(src.path, path, _set(**{key: [value, value]}))
        else:  # huge
            edited(src.path, path, _set(Rows=65535, Columns=65535,
                                        NumberOfFrames=rng.choice([1, 2, 100000])))
        cases.append(Case(name, path, mod, kind, expect="error" if kind == "huge" else "any",
                          error="PixelBudgetError" if kind == "huge" else None))
    return cases


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """Apply a list of byte-level mutations (used by the hypothesis tests).

    Each op is ``(kind, a, b)`` with ``kind`` in ``flip`` (xor byte ``a % len`` with
    ``b``), ``cut`` (truncate at ``a % len``), ``zero`` (zero ``b % 64`` bytes from
    ``a``), ``dup`` (insert a copy of ``b % 64`` bytes at ``a``) or ``del`` (delete
    ``b % 64`` bytes at ``a``).  Offsets below 132 are shifted past the preamble so
    most mutants still look like DICOM.
    """
    buf = bytearray(data)
    for kind, a, b in ops:
        if not buf:
            break
        pos = a % len(buf)
        if pos < 132 and len(buf) > 132:
            pos = 132 + pos % (len(buf) - 132)
        n = b % 64
        if kind == "flip":
            buf[pos] ^= (b % 255) + 1
        elif kind == "cut":
            del buf[pos:]
        elif kind == "zero":
            buf[pos:pos + n] = bytes(len(buf[pos:pos + n]))
        elif kind == "dup":
            buf[pos:pos] = buf[pos:pos + n]
        elif kind == "del":
            del buf[pos:pos + n]
    return bytes(buf)


__all__ = [
    "Case", "Source", "sources", "non_image_sources", "ct_series_files", "pixel_data_offset",
    "truncate", "flip_bits", "random_after_preamble", "edited", "save", "mutate",
    "build_file_corpus", "build_special_corpus", "build_series_corpus", "build_corpus",
    "build_random_corpus",
]
