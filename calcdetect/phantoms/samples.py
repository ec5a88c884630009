"""Build the bundled ``sample_images/`` folder (deterministic).

    python -m calcdetect.phantoms.samples sample_images [--shared ../shared/data]

Writes DICOM and PNG inputs across the three modalities, ``truth.json`` (ground truth of
every inserted or synthetic calcification, in array index order and mm) and a README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import write_text_atomic
from .ct import ct_phantom, insert_calcifications, write_dicom_series

REAL_SLICE_NAME = "ct_real_abdomen_slice.dcm"


def _ct_phantom_series(out: Path) -> dict[str, Any]:
    nodules = [
        {"y_mm": -52.0, "x_mm": -45.0, "diameter_mm": 4.0, "hu": 650.0, "z_mm": 12.0},
        {"y_mm": -56.0, "x_mm": -28.0, "diameter_mm": 3.0, "hu": 700.0, "z_mm": 14.0},
        {"y_mm": -20.0, "x_mm": 83.0, "diameter_mm": 7.0, "hu": 500.0, "z_mm": 16.0},
        {"y_mm": 30.0, "x_mm": -78.0, "diameter_mm": 5.0, "hu": 800.0, "z_mm": 18.0},
    ]
    image, truth = ct_phantom((200, 240), (0.9, 0.9), n_slices=16, slice_spacing_mm=2.0, slice_thickness_mm=2.0,
                              nodules=nodules, seed=11)
    folder = out / "ct_phantom_series"
    if folder.exists():
        shutil.rmtree(folder)
    write_dicom_series(image, folder, slice_thickness_mm=2.0, series_description="calcdetect CT phantom")
    return {"path": "ct_phantom_series", "modality": "CT", "kind": "synthetic series", "calcifications": truth,
            "what": "body with skin, fat, muscle, spine, ribs and table; 4 subcutaneous calcifications 3-7 mm, both sides"}


def _ct_real_slice(out: Path, shared: Path | None) -> dict[str, Any] | None:
    import pydicom

    series = None
    for root in ([shared] if shared else []) + [Path(__file__).resolve().parents[3] / "shared" / "data",
                                                 Path("/work/shared/data")]:
        if root and (root / "ct-abdomen-series").exists():
            series = root / "ct-abdomen-series"
            break
    if series is None:
        print("samples: the shared CT series is not available; skipping the real CT sample", file=sys.stderr)
        return None
    from .. import load

    files = sorted(series.glob("*.dcm"))
    zs = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    src = files[int(np.argsort(zs)[len(files) // 2])]
    image = load(src)
    # three calcifications in the subcutaneous fat of the back and both flanks (checked fat)
    spec = [{"centroid_px": [403, 226], "diameter_mm": 6.0, "hu": 700.0},
            {"centroid_px": [264, 87], "diameter_mm": 4.0, "hu": 600.0},
            {"centroid_px": [326, 412], "diameter_mm": 9.0, "hu": 500.0}]
    for s in spec:
        r, c = s["centroid_px"]
        if not -200 < float(image.pixels[r, c]) < -30:
            print(f"samples: {src.name} pixel {r},{c} is not fat; real CT sample skipped", file=sys.stderr)
            return None
    inserted, truth = insert_calcifications(image, spec, slice_thickness_mm=1.0)
    ds = pydicom.dcmread(src)
    ds.decompress()
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    stored = np.rint((inserted.pixels - intercept) / slope)
    info = np.iinfo(ds.pixel_array.dtype)
    ds.PixelData = np.clip(stored, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
    ds.SeriesDescription = "CT Body 3.0 with 3 inserted calcifications (calcdetect sample)"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out / REAL_SLICE_NAME, enforce_file_format=True)
    for t in truth:
        t["centroid_mm"] = [float(v) for v in inserted.index_to_patient(np.asarray(t["centroid_px"], float))]
    return {"path": REAL_SLICE_NAME, "modality": "CT", "kind": "real CT slice with inserted calcifications",
            "calcifications": truth,
            "what": "real contrast-enhanced upper-abdomen slice (TotalSegmentator test data, CC BY 4.0) with "
                    "three calcifications inserted in the subcutaneous fat (back, right and left flank)"}


def _xray_samples(out: Path) -> list[dict[str, Any]]:
    from .xray import radiograph_phantom, write_radiograph_dicom

    from .xray import random_foci

    base, _ = radiograph_phantom((900, 800), 0.15, foci=[], seed=4)
    allowed = np.zeros(base.shape, bool)
    allowed[80:820, 200:560] = True  # over the limb: soft tissue and bone
    allowed &= (base.pixels > 900) & (base.pixels < 3500)
    foci = random_foci(base, 8, diameters_mm=(2.0, 5.0), contrast_per_mm=45.0, allowed=allowed, seed=0)
    image, truth = radiograph_phantom((900, 800), 0.15, foci=foci, seed=4, lead_marker=True, collimation=True)
    write_radiograph_dicom(image, out / "xray_phantom_cr.dcm", laterality="R", view_position="PA")
    return [{"path": "xray_phantom_cr.dcm", "modality": "XRAY", "kind": "synthetic radiograph",
             "calcifications": truth, "min_found": 7, "size_tolerance_mm": 1.5,
             "note": "the focus at row 643, col 314 abuts the bone cortex and is rejected as edge-like "
                     "(the radiograph detector's trade-off against bone edges, docs/xray.md)",
             "what": "extremity radiograph phantom (CR, 0.15 mm ImagerPixelSpacing): soft tissue, a long "
                     "bone, 8 radiopaque foci 2-5 mm (speckled, three over bone), a lead 'R' marker and "
                     "a collimated border"}]


def _ultrasound_samples(out: Path) -> list[dict[str, Any]]:
    import cv2

    from .ultrasound import ultrasound_phantom, write_ultrasound_dicom

    entries = []
    image, truth = ultrasound_phantom((480, 640), 0.1, "linear", seed=5)
    write_ultrasound_dicom(image, out / "us_linear_phantom.dcm")
    entries.append({"path": "us_linear_phantom.dcm", "modality": "US", "kind": "synthetic B-mode (DICOM)",
                    "calcifications": [t for t in truth if t.get("shadow")], "size_tolerance_mm": 1.5,
                    "decoys": [t for t in truth if not t.get("shadow")],
                    "what": "linear-probe B-mode phantom with ultrasound regions (0.1 mm): echogenic foci "
                            "with posterior acoustic shadow, bright decoys without shadow, calipers and text"})
    image, truth = ultrasound_phantom((480, 640), 0.1, "sector", seed=6)
    grey = np.clip(np.rint(image.pixels), 0, 255).astype(np.uint8)
    cv2.imwrite(str(out / "us_sector_frame.png"), grey)
    write_text_atomic(out / "us_sector_frame.json", json.dumps({"modality": "US", "pixel_size_mm": 0.1}) + "\n")
    entries.append({"path": "us_sector_frame.png", "modality": "US", "kind": "synthetic B-mode (PNG + sidecar)",
                    "load": {"modality": "US", "pixel_size_mm": 0.1},
                    "calcifications": [t for t in truth if t.get("shadow")], "size_tolerance_mm": 1.5,
                    "decoys": [t for t in truth if not t.get("shadow")],
                    "what": "sector-probe B-mode frame saved as PNG; its pixel size (0.1 mm) and modality "
                            "come from the sidecar us_sector_frame.json"})
    return entries


def build(out: Path, shared: Path | None = None) -> dict[str, Any]:
    """Write every sample into ``out`` and return the truth record."""
    out.mkdir(parents=True, exist_ok=True)
    entries = [_ct_phantom_series(out)]
    real = _ct_real_slice(out, shared)
    if real:
        entries.append(real)
    entries.extend(_xray_samples(out))
    entries.extend(_ultrasound_samples(out))
    truth = {"generated_by": "python -m calcdetect.phantoms.samples sample_images",
             "matching_rule": "a truth is found when a finding's centroid lies within max(2 mm, 0.75 x diameter)",
             "images": entries}
    write_text_atomic(out / "truth.json", json.dumps(truth, indent=1) + "\n")
    return truth


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="build sample_images/")
    p.add_argument("out", type=Path)
    p.add_argument("--shared", type=Path, default=None, help="folder holding ct-abdomen-series")
    args = p.parse_args(argv)
    truth = build(args.out, args.shared)
    print(f"wrote {len(truth['images'])} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
