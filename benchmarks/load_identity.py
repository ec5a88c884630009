#!/usr/bin/env python
"""Check that a change to the DICOM loaders left ``calcdetect.load`` bit-identical.

Usage (from the repository root)::

    python benchmarks/load_identity.py build /tmp/cases          # write the inputs once
    git checkout BEFORE && python benchmarks/load_identity.py save /tmp/cases /tmp/before.json
    git checkout AFTER  && python benchmarks/load_identity.py check /tmp/cases /tmp/before.json

The inputs are written once and reused by both checkouts (some carry generated UIDs).
For every input, ``calcdetect.load`` gives either a fingerprint of the Image (SHA-1 of
the pixels' dtype, shape and bytes, and of the spacing, affine, modality, source,
metadata, warnings, spacing source, valid mask and geometry) or the error's class and
message.  The inputs:

* the real series ``/work/shared/data/ct-abdomen-series`` (JPEG 2000) as a folder and
  file by file;
* a 300-slice uncompressed 512 x 512 series written like ``run.py``'s ``load``
  benchmark (``--slices``);
* small uncompressed series: 12-bit unsigned with high bits set, 12-bit signed,
  implicit VR, rescaled 16-bit unsigned, and rescales whose float32 HU overflow (some
  pixels become infinite: the NaN/inf warning) or come close to it;
* pydicom's test files, each alone in a folder and file by file, and all of them in one
  folder (several series);
* the damaged corpus of ``tests/corpus.py`` (damaged files, special cases, series
  folders) file by file, every damaged file also inside a folder with three good
  uncompressed slices of its series (so it goes through the series path), and the
  regression corpus ``tests/corpus/*.dcm``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "calcdetect" / "__init__.py").exists():
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

REAL = Path("/work/shared/data/ct-abdomen-series")


def _h(data: Any) -> str:
    if isinstance(data, np.ndarray):
        data = data.dtype.str.encode() + str(data.shape).encode() + np.ascontiguousarray(data).tobytes()
    elif not isinstance(data, bytes):
        data = json.dumps(data, sort_keys=True, default=repr).encode()
    return hashlib.sha1(data).hexdigest()


def _small_series(folder: Path, implicit: bool, signed: int, stored: int, slope: float, intercept: float) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from identity import _write_series  # benchmarks/identity.py: the same odd-encoding series

    _write_series(folder, ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian, signed, stored, slope,
                  intercept, shuffled=True)


def _with_good_slices(damaged: Path, good: Path, folder: Path) -> None:
    """``damaged`` next to three uncompressed slices made from ``good`` (same series,
    other positions and UIDs)."""
    import pydicom

    folder.mkdir(parents=True)
    shutil.copyfile(damaged, folder / "damaged.dcm")
    for k in range(3):
        ds = pydicom.dcmread(good)
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 7}"
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = pos[:2] + [pos[2] + 10.0 * (k + 1)]
        ds.save_as(folder / f"good{k}.dcm")


def build(out: Path, slices: int) -> None:
    """Write every input below ``out`` (see the module docstring)."""
    import corpus  # tests/corpus.py
    from pydicom.data import get_testdata_file

    import run  # benchmarks/run.py

    out.mkdir(parents=True)
    big = run._write_series(slices, 512)()
    shutil.move(str(big["folder"]), str(out / "bench-series"))
    small = out / "small"
    for name, args in {
        "u12": (False, 0, 12, 1.0, -1024.0), "s12": (False, 1, 12, 2.5, 3.0), "implicit16": (True, 1, 16, 1.0, 0.0),
        "u16-rescaled": (False, 0, 16, 0.5, -1000.5), "overflow": (False, 1, 16, 1e35, 0.0),
        "near-overflow": (False, 0, 16, 1e33, -1e37), "huge-slope": (False, 0, 16, 1e39, 0.0),
    }.items():
        _small_series(small / name, *args)
    base = Path(get_testdata_file("CT_small.dcm")).parent
    pyd = out / "pydicom"
    for f in sorted(base.glob("*.dcm")):
        (pyd / "one" / f.stem).mkdir(parents=True)
        shutil.copyfile(f, pyd / "one" / f.stem / f.name)
    (pyd / "all").mkdir()
    for f in sorted(base.glob("*.dcm")):
        shutil.copyfile(f, pyd / "all" / f.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = (corpus.build_file_corpus(out / "corpus" / "files", flips=1)
                 + corpus.build_special_corpus(out / "corpus" / "special")
                 + corpus.build_series_corpus(out / "corpus" / "series", n=5))
    good = Path(get_testdata_file("CT_small.dcm"))
    mixed = out / "corpus" / "in-series"
    for i, case in enumerate(cases):
        if case.path.is_file() and case.modality == "CT":
            _with_good_slices(case.path, good, mixed / f"{i:03d}-{case.path.name}")


def _inputs(cases: Path) -> list[Path]:
    items: list[Path] = []
    if REAL.is_dir():
        items += [REAL] + sorted(REAL.glob("*.dcm"))
    items.append(cases / "bench-series")
    items += sorted((cases / "small").iterdir())
    items += sorted((cases / "pydicom" / "one").iterdir()) + sorted((cases / "pydicom" / "one").glob("*/*"))
    items.append(cases / "pydicom" / "all")
    items += sorted(p for p in (cases / "corpus").rglob("*") if "in-series" not in p.parts[-2:])
    items += sorted((cases / "corpus" / "in-series").iterdir())
    items += sorted((ROOT / "tests" / "corpus").glob("*.dcm"))
    return items


def fingerprint(path: Path) -> str:
    """The loaded Image's fingerprint, or the error's class and message."""
    import calcdetect

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = calcdetect.load(path)
    except calcdetect.CalcdetectError as exc:
        return f"{type(exc).__name__}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - an unexpected error is a result too
        return f"UNEXPECTED {type(exc).__name__}: {exc}"
    parts = [
        _h(image.pixels), _h(None if image.valid_mask is None else image.valid_mask),
        _h(None if image.affine is None else image.affine), _h(image.spacing_mm), image.modality, image.source,
        _h(image.metadata), _h(image.warnings), str(image.spacing_source), _h(image.geometry),
        _h(None if image.color is None else image.color),
    ]
    return _h(parts) + f" {image.pixels.dtype} {list(image.pixels.shape)}"


def fingerprints(cases: Path) -> dict[str, str]:
    """``{path relative to the cases (or absolute): fingerprint}`` for every input."""
    out = {}
    for path in _inputs(cases):
        key = str(path.relative_to(cases)) if path.is_relative_to(cases) else str(path)
        out[key] = fingerprint(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["build", "save", "check"])
    ap.add_argument("cases", type=Path, help="folder of the inputs (written by build)")
    ap.add_argument("file", type=Path, nargs="?", help="fingerprints to save or to check against")
    ap.add_argument("--slices", type=int, default=300, help="slices of the uncompressed 512 x 512 series")
    args = ap.parse_args(argv)
    if args.action == "build":
        build(args.cases, args.slices)
        print(f"{len(_inputs(args.cases))} inputs in {args.cases}")
        return 0
    if args.file is None:
        ap.error("save and check need a fingerprint file")
    current = fingerprints(args.cases)
    if args.action == "save":
        args.file.write_text(json.dumps(current, indent=1, sort_keys=True))
        errors = sum(v.startswith(("UNEXPECTED",)) for v in current.values())
        print(f"saved {len(current)} fingerprints ({errors} unexpected errors)")
        return 0
    before = json.loads(args.file.read_text())
    differ = sorted(k for k in before.keys() | current.keys() if before.get(k) != current.get(k))
    for k in differ:
        print(f"DIFFERS {k}\n  before {before.get(k)}\n  after  {current.get(k)}")
    loaded = sum(not v.split(":")[0].endswith(("Error", "UNEXPECTED")) for v in current.values())
    print(f"{len(current) - len(differ)}/{len(current)} identical ({loaded} loaded, the rest errors)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
