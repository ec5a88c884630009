#!/usr/bin/env python
"""Check that a performance change left results bit-identical.

Usage (from the repository root)::

    git checkout BEFORE && python benchmarks/identity.py save /tmp/before.json
    git checkout AFTER  && python benchmarks/identity.py check /tmp/before.json

Fingerprints (SHA-1 of the exact bytes) of:

* the full JSON report and the label image of ``calcdetect.detect`` on the real series
  (``--series``, default ``/work/shared/data/ct-abdomen-series`` when present) for the
  regions skin / soft-tissue / all and ``size_method="threshold"``, on a synthetic 60-slice
  CT (skin, all), on a cluttered one (the benchmark's input class; skin, soft-tissue) and
  on one synthetic slice;
* the anatomy maps (body, deep, depth, fov, internal air) of ``ct_anatomy`` on the real
  series and on synthetic volumes built to reach every branch: plain, cut by the image
  border, anisotropic pixels, background that is not air, NaN outside the body, foam pads
  and air bands at the border, coarse 3.1 mm pixels; each map's fingerprint is replaced
  by "differs" when the detector's path (``depth_map=False``: same maps, depths from
  ``Anatomy.depth_at`` on 3000 body voxels and 200 random ones, same no-skin slices)
  does not agree with it;
* the pixels, geometry, metadata and warnings of ``calcdetect.load`` on the real series
  and on small uncompressed series written here (12-bit unsigned with high bits set,
  12-bit signed, implicit VR, rescaled 16-bit unsigned).

``--detect-options '{"anatomy_pixel_mm": null}'`` runs ``detect`` with its anatomy at full
resolution, the only path before the reduced-resolution anatomy (which changes results).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if (HERE.parent / "calcdetect" / "__init__.py").exists():
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import synthetic  # noqa: E402

REAL = Path("/work/shared/data/ct-abdomen-series")


def _h(data: bytes | np.ndarray | str) -> str:
    if isinstance(data, np.ndarray):
        data = data.dtype.str.encode() + str(data.shape).encode() + np.ascontiguousarray(data).tobytes()
    elif isinstance(data, str):
        data = data.encode()
    return hashlib.sha1(data).hexdigest()


def _write_series(folder: Path, transfer_syntax: str, signed: int, stored: int, slope: float, intercept: float,
                  shuffled: bool = False) -> Path:
    """Six 32 x 48 uncompressed CT slices of random 16-bit words (high bits set beyond
    ``stored``), in ``transfer_syntax`` (explicit or implicit VR little endian), named
    in slice order or (``shuffled``) in another order.  Also used by load_identity.py."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(6):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{k + 1}"
        meta.TransferSyntaxUID = transfer_syntax
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber = "CT", "1.2.3.9", "1.2.3.8", k + 1
        ds.ImagePositionPatient = [0, 0, -k * 2.5]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 32, 48, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, stored, stored - 1, signed
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = rng.integers(0, 65536, size=(32, 48)).astype(np.uint16).tobytes()
        ds.save_as(folder / f"f{(k * 5) % 6 if shuffled else k}.dcm", implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
                   little_endian=True, enforce_file_format=True)
    return folder


def fingerprints(series: Path | None, detect_options: dict | None = None) -> dict[str, str]:
    """Fingerprint every case (see the module docstring); ``detect_options`` are passed to
    every ``calcdetect.detect`` call."""
    import calcdetect
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    anatomy = importlib.import_module("calcdetect.detect.anatomy")
    out: dict[str, str] = {}
    real = calcdetect.load(series) if series and series.exists() else None
    ph = synthetic.synthetic_ct(60, seed=3)
    synth = calcdetect.Image(ph.hu.astype(np.float32), ph.spacing_mm, "CT")
    # the benchmark's cluttered input (20 dense specks per slice, as run.py's CT_CLUTTER)
    pc = synthetic.synthetic_ct(60, seed=4, clutter=20.0)
    clutter = calcdetect.Image(pc.hu.astype(np.float32), pc.spacing_mm, "CT")
    cases = []
    if real is not None:
        cases += [(f"detect real {kw}", real, kw) for kw in
                  ({"region": "skin"}, {"region": "soft-tissue"}, {"region": "all"}, {"size_method": "threshold"})]
    cases += [("detect synth skin", synth, {}), ("detect synth all", synth, {"region": "all"}),
              ("detect clutter skin", clutter, {}), ("detect clutter soft-tissue", clutter, {"region": "soft-tissue"}),
              ("detect synth 2d", calcdetect.Image(ph.hu[30].astype(np.float32), ph.spacing_mm[1:], "CT"), {})]
    for name, image, kw in cases:
        report = calcdetect.detect(image, **kw, **(detect_options or {}))
        out[name + " report"] = _h(json.dumps(report.to_dict(), sort_keys=True, default=str))
        out[name + " labels"] = _h(report.labels)
        out[name + " count"] = str(report.count)
    p = synthetic.synthetic_ct(40, seed=5)
    hu = p.hu.astype(np.float32)
    cut = hu[:, 60:452, 20:300].copy()
    water = hu.copy()
    water[water < -900] = -600
    nan = hu.copy()
    nan[:, 5:9, 5:60] = np.nan
    foam = hu.copy()
    foam[:, 470:500, 100:400] = -850
    foam[::2, 0:6, :] = -950
    volumes = [("synth", hu, p.spacing_mm[1:]), ("cut", cut, p.spacing_mm[1:]), ("aniso", cut, (0.7, 0.9)),
               ("water", water, p.spacing_mm[1:]), ("nan", nan, p.spacing_mm[1:]), ("foam", foam, p.spacing_mm[1:]),
               ("coarse", hu[:, ::4, ::4].copy(), (3.1, 3.1))]
    if real is not None:
        volumes.insert(0, ("real", real.pixels, real.spacing_mm[1:]))
    for name, vol, spacing in volumes:
        maps = anatomy.ct_anatomy(vol, spacing)
        # the detector's path (no depth map) must give the same maps and depths
        lazy = anatomy.ct_anatomy(vol, spacing, depth_map=False)
        rng = np.random.default_rng(0)
        z, y, x = np.nonzero(maps.body)
        pick = rng.choice(z.size, min(z.size, 3000), replace=False) if z.size else np.zeros(0, int)
        zz = np.concatenate([z[pick], rng.integers(0, vol.shape[0], 200)])
        yy = np.concatenate([y[pick], rng.integers(0, vol.shape[1], 200)])
        xx = np.concatenate([x[pick], rng.integers(0, vol.shape[2], 200)])
        same_depth = (np.array_equal(maps.depth_at(zz, yy, xx), lazy.depth_at(zz, yy, xx), equal_nan=True)
                      and np.array_equal(maps.skin_missing(), lazy.skin_missing()))
        for key in ("body", "deep", "depth_mm", "fov", "internal_air"):
            if key == "depth_mm":
                same = same_depth
            elif key == "fov":  # not kept without the depth map
                same = lazy.fov is None or np.array_equal(maps.fov, lazy.fov)
            else:
                same = np.array_equal(getattr(maps, key), getattr(lazy, key))
            out[f"anatomy {name} {key}"] = _h(getattr(maps, key)) if same else "differs with depth_map=False"
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            "u12": _write_series(Path(tmp) / "u12", ExplicitVRLittleEndian, 0, 12, 1, -1024),
            "s12": _write_series(Path(tmp) / "s12", ExplicitVRLittleEndian, 1, 12, 2.5, 3),
            "implicit16": _write_series(Path(tmp) / "imp", ImplicitVRLittleEndian, 1, 16, 1, 0),
            "u16": _write_series(Path(tmp) / "u16", ExplicitVRLittleEndian, 0, 16, 0.5, -1000.5),
        }
        if real is not None:
            folders["real"] = series
        for name, folder in folders.items():
            image = calcdetect.load(folder)
            out[f"load {name} pixels"] = _h(image.pixels)
            out[f"load {name} header"] = _h(json.dumps(
                [image.shape, image.spacing_mm, None if image.affine is None else image.affine.tolist(),
                 image.warnings, sorted((k, str(v)) for k, v in image.metadata.items()
                                        if k not in ("files",))], default=str))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["save", "check"])
    ap.add_argument("file")
    ap.add_argument("--series", type=Path, default=REAL if REAL.exists() else None)
    ap.add_argument("--detect-options", type=json.loads, default=None, metavar="JSON",
                    help='options for every detect call, e.g. \'{"anatomy_pixel_mm": null}\' (the '
                         'full-resolution anatomy, to compare with fingerprints saved before it was reduced)')
    args = ap.parse_args(argv)
    prints = fingerprints(args.series, args.detect_options)
    if args.mode == "save":
        Path(args.file).write_text(json.dumps(prints, indent=1) + "\n")
        print(f"saved {len(prints)} fingerprints to {args.file}")
        return 0
    ref = json.loads(Path(args.file).read_text())
    bad = [k for k in ref if prints.get(k) != ref[k]]
    for k in bad:
        print(f"DIFFERENT: {k}")
    print(f"{len(ref) - len(bad)} of {len(ref)} identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
