"""CT validation: calcifications inserted into real CT at known places.

Real images: the CT slices shipped by pydicom / pydicom-data (head, abdomen, neck) and
every slice of the shared 20-slice abdomen series, plus the series as a volume.
Calcifications are spheres of 1.5-13 mm and 300-1000 HU inserted with
:func:`calcdetect.phantoms.ct.insert_calcifications` (partial volume over the slice
thickness, PSF blur).  Places are chosen *independently of the detector*: pixels whose
whole neighbourhood is fat (-150..-40 HU) within 25 mm of the skin of a simple body
mask (largest component above -400 HU).  The untouched originals are run too.

Scoring (docs/validation.md): a truth is found when a finding's centroid lies within
max(2 mm, 0.75 x diameter); one-to-one; unmatched findings are false.

    python benchmarks/validate_ct.py [--trials N] [--seed S] [--slice-profile MM] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

import calcdetect
from calcdetect.phantoms.ct import insert_calcifications
from calcdetect.validation import match_findings

SLICES = ["693_UNCR.dcm", "explicit_VR-UN.dcm", "J2K_pixelrep_mismatch.dcm"]
SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct-abdomen-series"
BANDS = [(1.5, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 13.01)]


def fat_places(plane: np.ndarray, spacing: tuple[float, float], diameter: float, max_depth: float = 25.0):
    """Pixels where a sphere of ``diameter`` mm lies wholly in subcutaneous fat."""
    body = plane > -400
    lab, n = ndi.label(body)
    if n == 0:
        return np.zeros((0, 2), int)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = ndi.binary_fill_holes(lab == sizes.argmax())
    depth = ndi.distance_transform_edt(body, sampling=spacing)
    fat = (plane > -150) & (plane < -40)
    r_px = int(np.ceil((diameter / 2 + 1.0) / spacing[0]))
    yy, xx = np.mgrid[-r_px:r_px + 1, -r_px:r_px + 1]
    disk = yy ** 2 + xx ** 2 <= r_px ** 2
    all_fat = ndi.binary_erosion(fat, structure=disk)
    ok = all_fat & (depth >= diameter / 2 + 1.5) & (depth <= max_depth)
    return np.argwhere(ok)


def sample_nodules(rng, planes, spacing, n, slice_indices=None):
    out = []
    for _ in range(n * 20):
        if len(out) == n:
            break
        d = float(rng.choice([rng.uniform(1.5, 2.0), rng.uniform(2.0, 4.0), rng.uniform(4.0, 8.0), rng.uniform(8.0, 13.0)]))
        k = int(rng.choice(slice_indices)) if slice_indices is not None else 0
        places = fat_places(planes[k], spacing, d)
        if len(places) == 0:
            continue
        r, c = places[rng.integers(len(places))]
        if any(np.hypot((r - o["r"]) * spacing[0], (c - o["c"]) * spacing[1]) < (d + o["d"]) / 2 + 8 and abs(k - o["k"]) < 4
               for o in out):
            continue
        out.append({"k": k, "r": int(r), "c": int(c), "d": d, "hu": float(rng.uniform(300, 1000))})
    return out


def band_of(d):
    for lo, hi in BANDS:
        if lo <= d < hi:
            return f"{lo:g}-{hi:g}"
    return "other"


def run(trials: int, seed: int, per_image: int = 4, thickness: float | None = None):
    rng = np.random.default_rng(seed)
    from pydicom.data import get_testdata_file

    images = [(name, calcdetect.load(get_testdata_file(name))) for name in SLICES]
    series = calcdetect.load(SERIES) if SERIES.exists() else None
    if series is not None:
        for k in range(0, series.shape[0], 2):
            img = series.with_pixels(series.pixels[k], spacing_mm=series.spacing_mm[1:], affine=None,
                                     source=f"series slice {k}")
            img.metadata["SliceThickness"] = 3.0
            images.append((f"series slice {k}", img))
    results = {"2d": {"truth": [], "false": 0, "images": 0, "originals_false": 0, "originals": 0, "seconds": []},
               "3d": {"truth": [], "false": 0, "images": 0, "originals_false": 0, "originals": 0, "seconds": []}}
    # untouched originals
    for name, img in images:
        rep = calcdetect.detect(img)
        results["2d"]["originals"] += 1
        results["2d"]["originals_false"] += rep.count
    if series is not None:
        rep = calcdetect.detect(series)
        results["3d"]["originals"] += 1
        results["3d"]["originals_false"] += rep.count
    for t in range(trials):
        for name, img in images:
            sp = img.spacing_mm
            nods = sample_nodules(rng, [img.pixels], sp, per_image)
            spec = [{"centroid_px": [o["r"], o["c"]], "diameter_mm": o["d"], "hu": o["hu"]} for o in nods]
            ins, truth = insert_calcifications(img, spec, slice_thickness_mm=thickness)
            t0 = time.perf_counter()
            rep = calcdetect.detect(ins)
            results["2d"]["seconds"].append(time.perf_counter() - t0)
            _score(results["2d"], truth, rep, sp, ins, name)
        if series is not None:
            sp = series.spacing_mm
            nods = sample_nodules(rng, series.pixels, sp[1:], 6, slice_indices=range(2, series.shape[0] - 2))
            spec = [{"centroid_px": [o["k"], o["r"], o["c"]], "diameter_mm": o["d"], "hu": o["hu"]} for o in nods]
            ins, truth = insert_calcifications(series, spec, slice_thickness_mm=thickness or 3.0)
            t0 = time.perf_counter()
            rep = calcdetect.detect(ins)
            results["3d"]["seconds"].append(time.perf_counter() - t0)
            _score(results["3d"], truth, rep, sp, ins, "series")
    return results


def _score(bucket, truth, rep, spacing, image, name):
    m = match_findings(truth, rep.findings, spacing)
    matched = dict(m.matched)
    for i, t in enumerate(truth):
        entry = {"image": name, "centroid_px": t["centroid_px"], "d": t["diameter_mm"], "hu": t["hu"],
                 "found": i in matched}
        if i in matched:
            f = rep.findings[matched[i]]
            entry["size_error"] = f.equivalent_diameter_mm - t["diameter_mm"]
            if image.affine is not None and f.centroid_mm is not None:
                true_mm = image.index_to_patient(np.asarray(t["centroid_px"], float))
                entry["centroid_error_mm"] = float(np.linalg.norm(np.asarray(f.centroid_mm) - true_mm))
        bucket["truth"].append(entry)
    bucket["false"] += len(m.false)
    bucket["images"] += 1


def run_phantoms(trials: int, seed: int):
    """CT phantoms (calcdetect.phantoms.ct): slices and 16-slice series with 5 random
    subcutaneous nodules each (1.5-13 mm, 300-1000 HU), arms and table included."""
    from calcdetect.phantoms.ct import ct_phantom

    rng = np.random.default_rng(seed)
    results = {"2d": {"truth": [], "false": 0, "images": 0, "originals_false": 0, "originals": 0, "seconds": []},
               "3d": {"truth": [], "false": 0, "images": 0, "originals_false": 0, "originals": 0, "seconds": []}}
    for kind, n_slices in (("2d", None), ("3d", 16)):
        for t in range(trials):
            s = int(rng.integers(1 << 30))
            empty, _ = ct_phantom((320, 420), arms=True, n_nodules=0, n_slices=n_slices, seed=s)
            results[kind]["originals"] += 1
            results[kind]["originals_false"] += calcdetect.detect(empty).count
            d = [float(rng.uniform(lo, hi)) for lo, hi in BANDS for _ in range(1)] + [float(rng.uniform(2, 8))]
            image, truth = ct_phantom((320, 420), arms=True, n_slices=n_slices, diameters_mm=d,
                                      nodule_hu=(300.0, 1000.0), seed=s)
            t0 = time.perf_counter()
            rep = calcdetect.detect(image)
            results[kind]["seconds"].append(time.perf_counter() - t0)
            _score(results[kind], truth, rep, image.spacing_mm, image, "phantom")
    return results


def summarize(results):
    lines = []
    for kind, b in results.items():
        truth = b["truth"]
        if not truth:
            continue
        found = [t for t in truth if t["found"]]
        errs = np.array([t["size_error"] for t in found])
        lines.append(f"## {'single slices' if kind == '2d' else 'series'}: {len(truth)} inserted in {b['images']} images")
        lines.append("| size band (mm) | inserted | found | sensitivity |")
        lines.append("|---|---|---|---|")
        for lo, hi in BANDS:
            band = [t for t in truth if lo <= t["d"] < hi]
            if band:
                k = sum(t["found"] for t in band)
                lines.append(f"| {lo:g}-{hi:g} | {len(band)} | {k} | {k / len(band):.1%} |")
        k = len(found)
        ge2 = [t for t in truth if t["d"] >= 2]
        lines.append(f"| all | {len(truth)} | {k} | {k / len(truth):.1%} |")
        lines.append("")
        lines.append(f"- sensitivity, diameter >= 2 mm: {sum(t['found'] for t in ge2) / max(len(ge2), 1):.1%}")
        per = "slice" if kind == "2d" else "series"
        lines.append(f"- false findings per {per} with insertions: {b['false'] / b['images']:.2f}")
        lines.append(f"- false findings per untouched original {per}: {b['originals_false'] / max(b['originals'], 1):.2f}"
                     f" ({b['originals_false']} in {b['originals']})")
        lines.append(f"- size error (equivalent diameter - true): median {np.median(errs):+.2f} mm, "
                     f"median |error| {np.median(np.abs(errs)):.2f} mm, 90th percentile |error| {np.percentile(np.abs(errs), 90):.2f} mm")
        ce = [t["centroid_error_mm"] for t in found if "centroid_error_mm" in t]
        if ce:
            lines.append(f"- centroid error in patient coordinates: median {np.median(ce):.2f} mm, max {np.max(ce):.2f} mm")
        lines.append(f"- detect time: median {np.median(b['seconds']):.2f} s per {per}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--phantoms", action="store_true",
                   help="score CT phantoms (known truth, no real image) instead of real CT")
    p.add_argument("--slice-profile", type=float, default=None, metavar="MM",
                   help="slice profile width used to insert (default: each image's SliceThickness)")
    args = p.parse_args(argv)
    if args.phantoms:
        results = run_phantoms(args.trials, args.seed)
        print(f"# CT phantom validation: {args.trials} trial(s), seed {args.seed}, 3 mm slab, 0.8 mm pixels\n")
    else:
        results = run(args.trials, args.seed, thickness=args.slice_profile)
        profile = f"{args.slice_profile:g} mm" if args.slice_profile else "native SliceThickness"
        print(f"# CT validation: {args.trials} trial(s), seed {args.seed}, insertion slice profile {profile}\n")
    print(summarize(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
