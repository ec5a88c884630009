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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` without pydicom's validation (the point is to write bad values)."""
    path = Path(path)
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
    """An edit that sets (or, for ``None``, deletes) header keywords.  Values pydicom
    refuses to hold (``"x"`` for a number) are written as raw text, as a broken writer
    would."""
    def edit(ds: Dataset) -> None:
        for key, value in values.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
                continue
            try:
                setattr(ds, key, value)
            except (ValueError, TypeError, OverflowError):
                _set_raw(ds, key, value)
    return edit


def _set_raw(ds: Dataset, keyword: str, value) -> None:
    """Store ``value`` as the raw text of element ``keyword`` (no validation at all)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    raw = text.encode("latin-1")
    if len(raw) % 2:
        raw += b" "
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)


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


def deflate_bomb(out: str | Path, inflated_bytes: int, *, source: Path | None = None) -> Path:
    """A Deflated Explicit VR Little Endian file whose data set inflates to about
    ``inflated_bytes`` (a real CT data set followed by a private OB element of zeros).

    Written in a streaming way, so building a large bomb does not need the memory.
    """
    import zlib
    from io import BytesIO

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    src = source or TINY_CT
    ds = _read(src)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=False)
        fp = BytesIO(buf.getvalue())
        pydicom.filereader.read_preamble(fp, False)
        pydicom.filereader._read_file_meta_info(fp)
    body = BytesIO(buf.getvalue()[fp.tell():])
    body.seek(0, 2)
    zeros = max(0, inflated_bytes - body.tell())
    zeros -= zeros % 2
    # (0009,1011) OB, explicit VR: tag, "OB", 2 reserved bytes, 4-byte length
    element = struct.pack("<HH2sHI", 0x0009, 0x1011, b"OB", 0, zeros)
    meta = ds.file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(out, "wb") as fh:
        head = BytesIO()
        head.write(b"\0" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(head, meta, enforce_standard=False)
        fh.write(head.getvalue())
        # the private element sorts after the group 0008 elements but we only need a
        # parseable stream; put it first so that pydicom meets it at once
        fh.write(comp.compress(element))
        chunk = bytes(1 << 20)
        left = zeros
        while left > 0:
            fh.write(comp.compress(chunk[: min(left, len(chunk))]))
            left -= min(left, len(chunk))
        fh.write(comp.compress(body.getvalue()))
        fh.write(comp.flush())
    return out


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
    bomb = deflate_bomb(out / "deflate-bomb.dcm", 128 * 2**20)  # 128 MiB from ~130 KB
    cases.append(Case(bomb.name, bomb, "CT", "deflate-bomb", expect="error", error="PixelBudgetError"))
    if hasattr(os, "mkfifo"):  # opening a pipe for reading blocks until a writer comes
        fifo = out / "pipe.dcm"
        if not fifo.exists():
            os.mkfifo(fifo)
        cases.append(Case(fifo.name, fifo, "none", "not-a-file", expect="error", error="UnreadableFileError"))
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
                              "float-nonfinite",
                              expect="error" if special == "allnan" else ("report" if src.modality == "CT" else "any"),
                              error="UnreadableFileError" if special == "allnan" and src.modality == "CT" else None))
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


# --------------------------------------------------------------------------- regression set
TINY_CT = PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CT2" / "17106"
TINY_CR = PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154"


def _tiny_us(out: Path) -> Path:
    """A 32 x 32 RGB crop of US1_UNCR.dcm (a real ultrasound header, 3 KB of pixels)."""
    src = _testdata("US1_UNCR.dcm")
    ds = _read(src)
    arr = ds.pixel_array[100:132, 200:232].copy()
    ds.Rows, ds.Columns = 32, 32
    ds.PixelData = arr.tobytes()
    return save(ds, out)


def _tiny_j2k(out: Path) -> Path:
    """The 16 x 16 CT, enlarged to 64 x 64 (openjpeg needs that many pixels for its
    default resolution levels), compressed as JPEG 2000 lossless."""
    from pydicom.uid import JPEG2000Lossless

    ds = _read(TINY_CT)
    arr = np.kron(ds.pixel_array, np.ones((4, 4), dtype=ds.pixel_array.dtype))
    ds.Rows, ds.Columns = arr.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.compress(JPEG2000Lossless, arr)
    return save(ds, out)


def _patch_siz(path: Path, rows: int) -> Path:
    """Make the JPEG 2000 codestream claim ``rows`` rows (Ysiz), header unchanged."""
    data = bytearray(path.read_bytes())
    pos = data.find(b"\xff\x4f\xff\x51")
    data[pos + 12:pos + 16] = rows.to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def build_regression_corpus(out: str | Path) -> dict[str, dict]:
    """The small set of nasty files kept in ``tests/corpus/`` (a few KB each).

    Returns the manifest: file name -> ``{"modality", "expect", "error", "null_mm",
    "note"}``.  Regenerate with ``python tests/corpus.py tests/corpus``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(10)
    man: dict[str, dict] = {}

    def add(name, modality, expect, error=None, null_mm=False, note=""):
        man[name] = {"modality": modality, "expect": expect, "error": error, "null_mm": null_mm,
                     "note": note}

    ct = TINY_CT.read_bytes()
    pix = pixel_data_offset(ct)
    _write(out / "ct16-trunc-pixels.dcm", ct[: pix + 40])
    add("ct16-trunc-pixels.dcm", "CT", "error", "UnreadableFileError", note="cut inside PixelData")
    edited(TINY_CT, out / "ct16-huge-frames.dcm", _set(Rows=65535, Columns=65535, NumberOfFrames=100000))
    add("ct16-huge-frames.dcm", "CT", "error", "PixelBudgetError", note="claims 4.3e14 pixels")
    _retag_ts(ct, out / "ct16-ts-lie-j2k.dcm", J2K_LOSSLESS)
    add("ct16-ts-lie-j2k.dcm", "CT", "error", note="native pixels labelled JPEG 2000")
    edited(TINY_CT, out / "ct16-float-nan.dcm", _float_pixels("mixed"))
    add("ct16-float-nan.dcm", "CT", "report", note="FloatPixelData with NaN and +-inf rows/cols")
    edited(TINY_CT, out / "ct16-rescale-huge.dcm", _float_rescale(1e38))
    add("ct16-rescale-huge.dcm", "CT", "error", "UnreadableFileError", note="RescaleSlope 1e38 overflows")
    edited(TINY_CT, out / "ct16-spacing-tiny.dcm", _set(PixelSpacing=["1e-30", "1e-30"]))
    add("ct16-spacing-tiny.dcm", "CT", "report", null_mm=True, note="1e-30 mm pixels crashed OpenCV")
    edited(TINY_CT, out / "ct16-spacing-nan.dcm", _set(PixelSpacing=["NaN", "NaN"]))
    add("ct16-spacing-nan.dcm", "CT", "report", null_mm=True)
    try:
        _patch_siz(_tiny_j2k(out / "ct16-j2k-siz-lie.dcm"), 1049088)
        add("ct16-j2k-siz-lie.dcm", "CT", "error", "UnreadableFileError",
            note="codestream claims 1049088 rows: openjpeg used to decode 0.5 GB for 15 s")
        edited(out / "ct16-j2k-siz-lie.dcm", out / "ct16-j2k-frames-3.dcm", _set(NumberOfFrames=3))
        _patch_siz(out / "ct16-j2k-frames-3.dcm", 64)
        add("ct16-j2k-frames-3.dcm", "CT", "error", "UnreadableFileError",
            note="3 frames claimed, 1 present: StopIteration from pydicom")
    except Exception as exc:  # no JPEG 2000 encoder here
        warnings.warn(f"JPEG 2000 cases skipped: {exc}")
    src = _testdata("CT_small.dcm")
    if src is not None:
        data = src.read_bytes()
        _write(out / "ct-trunc-header.dcm", data[: pixel_data_offset(data) // 2])
        add("ct-trunc-header.dcm", "CT", "error", "UnreadableFileError",
            note="cut inside an FL element: BytesLengthException from pydicom")
    cr = TINY_CR.read_bytes()
    edited(TINY_CR, out / "cr16-huge-rows-cols.dcm", _set(Rows=65535, Columns=65535))
    add("cr16-huge-rows-cols.dcm", "XRAY", "error", "PixelBudgetError")
    _write(out / "cr16-trunc-pixels.dcm", cr[: pixel_data_offset(cr) + 40])
    add("cr16-trunc-pixels.dcm", "XRAY", "error")
    edited(TINY_CR, out / "cr16-spacing-zero.dcm", _set(PixelSpacing=["0", "0"], ImagerPixelSpacing=["0", "0"]))
    add("cr16-spacing-zero.dcm", "XRAY", "any", null_mm=True)
    us = _tiny_us(out / "us32.dcm").read_bytes()
    (out / "us32.dcm").unlink()
    _write(out / "us32-flip-header.dcm", flip_bits(us, 132, pixel_data_offset(us), 8, rng))
    add("us32-flip-header.dcm", "US", "any")
    _write(out / "us32-trunc-pixels.dcm", us[: pixel_data_offset(us) + 100])
    add("us32-trunc-pixels.dcm", "US", "error")
    _retag_ts(us, out / "us32-ts-lie-implicit.dcm", ImplicitVRLittleEndian)
    add("us32-ts-lie-implicit.dcm", "US", "any",
        note="explicit VR body labelled implicit: pydicom detects the explicit VRs and reads it right")
    _write(out / "us32-huge-frames.dcm", us)
    edited(out / "us32-huge-frames.dcm", out / "us32-huge-frames.dcm",
           _set(Rows=65535, Columns=65535, NumberOfFrames=100000))
    add("us32-huge-frames.dcm", "US", "error", "PixelBudgetError", note="1.3e15 samples claimed")
    _write(out / "random-after-preamble.dcm", random_after_preamble(1500, rng))
    add("random-after-preamble.dcm", "none", "error")
    _write(out / "preamble-only.dcm", b"\0" * 128 + b"DICM")
    add("preamble-only.dcm", "none", "error", "UnreadableFileError")
    _write(out / "text.dcm", b"not a DICOM file\n" * 8)
    add("text.dcm", "none", "error", "UnreadableFileError")
    shutil.copyfile(PYDICOM_TEST_FILES / "rtplan.dcm", out / "rtplan.dcm")
    add("rtplan.dcm", "none", "error", "UnsupportedImageError")
    return man


# --------------------------------------------------------------------------- checking
MM_FIELDS = ("centroid_mm", "equivalent_diameter_mm", "long_axis_mm", "short_axis_mm",
             "area_mm2", "volume_mm3", "depth_mm")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def check_report(text: str, *, null_mm: bool = False) -> str | None:
    """``None`` when ``text`` is a valid JSON report, else what is wrong with it.

    Valid means: strict JSON (no NaN / Infinity), the contract's keys, ``count`` equal
    to the number of findings, positive spacing; and when the spacing is unusable
    (``null_mm`` or ``spacing_mm`` null) no mm field is filled in and a warning says why.
    """
    import json

    try:
        rep = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(rep, dict):
        return "JSON is not an object"
    for key in ("source", "modality", "shape", "spacing_mm", "count", "findings", "warnings"):
        if key not in rep:
            return f"missing key {key!r}"
    if rep["count"] != len(rep["findings"]):
        return "count differs from the number of findings"
    if rep["spacing_mm"] is not None:
        sp = rep["spacing_mm"]
        if not all(isinstance(v, (int, float)) and v > 0 for v in sp):
            return f"spacing_mm {sp} is not positive"
    if null_mm or rep["spacing_mm"] is None:
        if rep["spacing_mm"] is not None:
            return f"spacing should be unusable but spacing_mm is {rep['spacing_mm']}"
        for f in rep["findings"]:
            bad = [k for k in MM_FIELDS if f.get(k) is not None]
            if bad:
                return f"finding {f.get('id')} has mm fields {bad} without spacing"
        if not any("mm" in w for w in rep["warnings"]):
            return "no warning explains the missing spacing"
    return None


def run_cli(path: str | Path, *, args: Iterable[str] = (), null_mm: bool = False,
            timeout: float = 60.0, debug: bool = False) -> dict:
    """Run ``calcdetect detect PATH`` in a subprocess and classify the outcome.

    Returns a dict with ``outcome`` (``report``, ``refused``, ``traceback``, ``hang``,
    ``signal`` or ``other``), ``detail``, ``seconds``, ``returncode``, ``stdout`` and
    ``stderr``.  The package is imported from this repository (``PYTHONPATH``).
    """
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "calcdetect.cli"] + (["--debug"] if debug else []) + [
        "detect", str(path), "--compact"] + list(args)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                              env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "seconds": timeout, "detail": "", "returncode": None,
                "stdout": "", "stderr": ""}
    seconds = time.perf_counter() - t0
    err = proc.stderr.strip()
    lines = err.splitlines()
    if proc.returncode < 0:
        outcome, detail = "signal", f"signal {-proc.returncode}"
    elif "Traceback" in err or "internal error" in err:
        outcome, detail = "traceback", (lines[-1] if lines else "")
    elif proc.returncode == 0:
        problem = check_report(proc.stdout, null_mm=null_mm)
        outcome, detail = ("report", "") if problem is None else ("other", problem)
        if err:
            outcome, detail = "other", f"exit 0 but stderr: {err[:200]}"
    elif len(lines) == 1 and lines[0].startswith("calcdetect: error: "):
        outcome, detail = "refused", lines[0]
    else:
        outcome, detail = "other", f"exit {proc.returncode}, {len(lines)} stderr lines: {err[:300]}"
    return {"outcome": outcome, "seconds": round(seconds, 2), "detail": detail,
            "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


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
    "build_random_corpus", "build_regression_corpus", "check_report", "run_cli", "deflate_bomb",
]


if __name__ == "__main__":  # regenerate the kept regression files
    import json
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "corpus")
    manifest = build_regression_corpus(target)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{len(manifest)} files in {target}")
