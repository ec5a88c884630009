"""Validate the radiograph detector on real radiographs with inserted foci of known size.

Images: pydicom-data ``RG1_UNCR.dcm`` (chest PA, zero spacing) and ``RG3_UNCR.dcm`` (tibia
AP, no spacing, lead "R" marker).  Neither file has a pixel size, so one is *stated*
(``--pixel-size``, default 0.15 mm as in the issue) and used both to lay out the foci and
to measure them.  For each image and trial, ``--foci`` foci of 1-6 mm are inserted at
random places inside the exposed body (at least 6 mm apart, not within 15 mm of a lead
marker) with peak contrast ``--contrast-per-mm`` x diameter, expressed as a fraction of
the image's own body signal range (p1-p99 inside the field), so it means the same on the
10-bit tibia and the 15-bit chest.  Findings are matched with
:func:`calcdetect.validation.match_findings`; the untouched originals are run too.

    python benchmarks/validate_xray.py                 # the table in docs/xray.md
    python benchmarks/validate_xray.py --trials 2 --contrast-per-mm 0.01
    python benchmarks/validate_xray.py --seed 7 --diagnose    # where each missed focus was lost
    python benchmarks/validate_xray.py --contrast-per-mm 0.08 --clip   # dense foci, clipped at the image maximum
    python benchmarks/validate_xray.py --blur-mm 0.3                   # foci as unsharp as a real system
    python benchmarks/validate_xray.py --edge-mm 3 --body-level 0.1    # foci near the skin line too
    python benchmarks/validate_xray.py --images lossy                  # the lossy JPEG 2000 twins
    python benchmarks/validate_xray.py --export jpg90                  # 8-bit JPEG exports, read from disk

``--diagnose`` runs the detector with ``report_rejected=True`` and gives every missed focus
the stage at which it was lost (:func:`loss_stage`): never a candidate, displaced (a
candidate covers it but its centre is too far: merged with a neighbour), rejected by a hard
rule (``hard:<reasons>``), or by the second-stage score (``classifier`` / ``classifier
(lung cut)``).  Use it on development seeds only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.data import get_testdata_file  # noqa: E402

import calcdetect  # noqa: E402
from calcdetect.detect.xray import detect_xray, exposed_field  # noqa: E402
from calcdetect.phantoms.xray import insert_foci, random_foci  # noqa: E402
from calcdetect.validation import match_findings  # noqa: E402

IMAGES = {"chest RG1_UNCR": "RG1_UNCR.dcm", "tibia RG3_UNCR": "RG3_UNCR.dcm"}

#: Real radiographs that no detector setting was chosen on (``--images held-out``): the
#: cat thorax of the ``deid-data`` package (MIT; DX, lateral, Agfa, processed for
#: presentation, 2614 x 3072, ImagerPixelSpacing 0.14 mm, a burned-in "R" marker).  It has
#: its own pixel size, which is used instead of ``--pixel-size``.
HELD_OUT_IMAGES = {"cat thorax DX": "animals/cat.dcm"}

#: The lossy JPEG 2000 twins of the development films (``--images lossy``): the same
#: anatomy after lossy compression (``LossyImageCompression`` "01"), which smooths away the
#: pixel noise and fine clutter the detector's scores are measured against.  A user may
#: well hold only such a copy (a PACS export, a teaching file).
LOSSY_IMAGES = {"chest RG1_J2KI (lossy)": "RG1_J2KI.dcm", "tibia RG3_J2KI (lossy)": "RG3_J2KI.dcm"}

IMAGE_SETS = {"dev": tuple(IMAGES), "held-out": tuple(HELD_OUT_IMAGES), "all": tuple(IMAGES) + tuple(HELD_OUT_IMAGES),
              "lossy": tuple(LOSSY_IMAGES)}


def image_path(name: str) -> str:
    """Path of a validation image: pydicom-data for :data:`IMAGES`, deid-data for the others."""
    if name in IMAGES or name in LOSSY_IMAGES:
        return get_testdata_file({**IMAGES, **LOSSY_IMAGES}[name])
    try:
        import deid_data
    except ImportError:
        raise SystemExit(f"{name} comes with the deid-data package: pip install deid-data "
                         "(or pip install -e '.[bench]')") from None
    return str(Path(deid_data.__file__).resolve().parent / "data" / HELD_OUT_IMAGES[name])


def body_and_range(image, spacing, *, edge_mm: float = 10.0, body_level: float = 0.25):
    """Exposed body pixels (not air, not collimation) and the body signal range.

    The body is where the signal exceeds ``body_level`` of the field's p1-p99 range above
    its p1, eroded by ``edge_mm`` (away from the skin line, the field edge and the image
    edge).  The defaults keep foci 10 mm inside; ``--edge-mm 3 --body-level 0.1`` lets
    them reach the thin soft tissue near the skin, where calcinosis cutis lies.
    """
    import cv2

    field, saturated, _ = exposed_field(image.pixels, spacing, valid=image.valid_mask)
    vals = image.pixels[field]
    p1, p99 = np.percentile(vals, [1, 99])
    body = field & (image.pixels > p1 + body_level * (p99 - p1))
    # keep away from the skin line, the field edge and the image edge
    r = max(int(round(edge_mm / spacing[0])), 1)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    body = cv2.erode(body.view(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return body, float(p99 - p1)


#: The lead "R" marker of RG3_UNCR (rows, cols; located by eye on the image: a square of
#: tape with the letter, next to the collimation edge).
MARKER_BOX = {"tibia RG3_UNCR": (1370, 1130, 1475, 1230), "tibia RG3_J2KI (lossy)": (1370, 1130, 1475, 1230),
              "cat thorax DX": (2300, 1080, 2510, 1240)}


def pixel_noise(image, body: np.ndarray) -> float:
    """Robust pixel noise in the body: 1.4826 x MAD of the image minus its Gaussian
    (sigma 2 pixels).  The contrast unit of this benchmark is a fraction of the body
    range, and films differ in how far that range stands above their noise (processing
    compresses the range), so the same %/mm is not equally visible on every film."""
    import cv2

    px = image.pixels.astype(np.float32)
    hp = (px - cv2.GaussianBlur(px, (0, 0), 2.0))[body]
    return float(1.4826 * np.median(np.abs(hp - np.median(hp))))


def away_from_marker(body: np.ndarray, name: str, pix_mm: float, far_mm: float = 15.0) -> np.ndarray:
    """``body`` without the film's marker box (``MARKER_BOX``) grown by ``far_mm``, in place:
    no focus is inserted within 15 mm of a lead marker."""
    box = MARKER_BOX.get(name)
    if box is not None:
        far = int(round(far_mm / pix_mm))
        body[max(box[0] - far, 0):box[2] + far, max(box[1] - far, 0):box[3] + far] = False
    return body


#: ``--export``: how a user might have saved the film (8 bits, windowed to the original's
#: p0.5-p99.9), as format and JPEG quality.
EXPORTS = {"png8": ("png", None), "jpg95": ("jpg", 95), "jpg90": ("jpg", 90), "jpg75": ("jpg", 75)}


def exported(image, window, kind: str, folder: str, tag: str):
    """``image`` as a user's 8-bit export (``EXPORTS``), written to ``folder`` and read back
    with :func:`calcdetect.load` (``modality="XRAY"`` and the image's pixel size), so the
    raster path and the codec are measured too."""
    import cv2

    ext, quality = EXPORTS[kind]
    lo, hi = window
    q = np.clip(np.round((image.pixels.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    path = str(Path(folder) / f"{tag}.{ext}")
    cv2.imwrite(path, q, [] if quality is None else [cv2.IMWRITE_JPEG_QUALITY, quality])
    return calcdetect.load(path, modality="XRAY", pixel_size_mm=tuple(image.spacing_mm))


def in_box(findings, box, margin_px):
    r0, c0, r1, c1 = box
    return [f for f in findings if r0 - margin_px <= f.centroid_px[0] <= r1 + margin_px
            and c0 - margin_px <= f.centroid_px[1] <= c1 + margin_px]


#: Stages at which a missed focus can be lost (:func:`loss_stage`), in report order.
STAGES = ("no candidate", "displaced", "classifier", "classifier (lung cut)", "hard")


def loss_stage(truth: dict, report, spacing_mm, *, taken: bool = False) -> str:
    """Where a missed focus was lost, from a ``report_rejected=True`` report.

    Parameters
    ----------
    truth : dict
        The inserted focus (``centroid_px``, ``diameter_mm``).
    report : Report
        Detector report made with ``report_rejected=True``.
    spacing_mm : (float, float)
        Pixel size used for matching.
    taken : bool
        A reported finding lies within the match radius but was matched to another focus.

    Returns
    -------
    str
        ``"taken"``; ``"classifier"`` or ``"classifier (lung cut)"`` (a candidate within the
        match radius of :func:`calcdetect.validation.match_findings` was rejected only by
        the second-stage score); ``"hard:<reasons>"`` (rejected by a hard rule, e.g.
        ``hard:edge_like``); ``"displaced"`` (no candidate centre within the match radius,
        but one within twice it: the focus was merged into a neighbouring candidate and
        measured there); ``"no candidate"``.
    """
    if taken:
        return "taken"
    sp = np.asarray(spacing_mm, float)
    c = np.asarray(truth["centroid_px"], float)
    radius = max(2.0, 0.75 * float(truth["diameter_mm"]))
    cands = report.extra.get("rejected")
    if cands is None:
        raise ValueError("loss_stage needs a report made with report_rejected=True")
    best = None
    for cand in cands:
        d = float(np.linalg.norm((np.asarray(cand["centroid_px"], float) - c) * sp))
        if best is None or d < best[0]:
            best = (d, cand)
    if best is not None and best[0] <= radius:
        reasons = list(best[1]["reasons"])
        if reasons == ["low_confidence"]:
            return "classifier (lung cut)" if best[1].get("in_lung") else "classifier"
        return "hard:" + "+".join(reasons)
    near = [float(np.linalg.norm((np.asarray(f.centroid_px, float) - c) * sp)) for f in report.findings]
    if (best is not None and best[0] <= 2.0 * radius) or any(d <= 2.0 * radius for d in near):
        return "displaced"
    return "no candidate"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixel-size", type=float, default=0.15,
                    help="stated pixel size (mm) of the images without one (RG1, RG3)")
    ap.add_argument("--images", choices=sorted(IMAGE_SETS), default="dev",
                    help="dev: the chest and tibia the detector was tuned on; held-out: films it "
                         "never saw (deid-data's cat thorax); all: both; lossy: the lossy JPEG 2000 "
                         "twins of the dev films")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--foci", type=int, default=10, help="foci inserted per trial")
    ap.add_argument("--contrast-per-mm", type=float, default=0.02,
                    help="peak contrast per mm of diameter, as a fraction of the body signal range")
    ap.add_argument("--contrast-per-noise", type=float, default=None,
                    help="instead: peak contrast per mm of diameter as a multiple of the film's pixel "
                         "noise (pixel_noise), which means the same visibility on every film")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--edge-mm", type=float, default=10.0,
                    help="keep inserted foci this far inside the body outline and the field edge")
    ap.add_argument("--body-level", type=float, default=0.25,
                    help="body = signal above this fraction of the field range (lower reaches thinner tissue)")
    ap.add_argument("--blur-mm", type=float, default=0.0,
                    help="Gaussian sigma (mm) of the inserted foci (a real system's unsharpness)")
    ap.add_argument("--clip", action="store_true",
                    help="clip the inserted foci at the image's maximum (a detector without headroom)")
    ap.add_argument("--export", choices=sorted(EXPORTS),
                    help="run on each image saved as a user might export it: 8 bits (windowed to the "
                         "original's p0.5-p99.9) as PNG or JPEG of the given quality, read back from disk")
    ap.add_argument("--json", help="also write the raw numbers here")
    ap.add_argument("--diagnose", action="store_true",
                    help="give each missed focus the stage it was lost at (development seeds only)")
    ap.add_argument("--options", default="{}",
                    help='detector options as JSON, e.g. \'{"blob_scales_mm": []}\' (the previous detector)')
    args = ap.parse_args(argv)
    opts = json.loads(args.options)
    if args.diagnose:
        opts["report_rejected"] = True
    stages: dict[str, dict[str, int]] = {}
    rows_out = []
    totals = {"truth": 0, "found": 0, "truth_ge2": 0, "found_ge2": 0, "false": 0, "images": 0,
              "marker_false": 0}
    size_err = []
    unit = (f"{args.contrast_per_noise:g} x pixel noise" if args.contrast_per_noise is not None
            else f"{args.contrast_per_mm:g} x range")
    print(f"pixel size {args.pixel_size} mm stated where a file has none; contrast {unit} per mm; "
          f"{args.trials} trials x {args.foci} foci per image; seed {args.seed}; options {opts}"
          + (f"; every image saved as {args.export} and read back" if args.export else ""))
    names = IMAGE_SETS[args.images]
    for name in names:
        original = calcdetect.load(image_path(name))
        if original.spacing_mm is None:  # RG1 and RG3: no usable pixel size, one is stated
            original = calcdetect.load(image_path(name), pixel_size_mm=args.pixel_size)
        sp = tuple(float(v) for v in original.spacing_mm)
        pix = float(np.sqrt(sp[0] * sp[1]))
        t0 = time.time()
        if args.export:
            import tempfile

            export_dir = tempfile.mkdtemp(prefix="validate_xray_")
            window = tuple(float(v) for v in np.percentile(original.pixels, [0.5, 99.9]))
        rep0 = detect_xray(exported(original, window, args.export, export_dir, "original") if args.export
                           else original, **opts)
        dt0 = time.time() - t0
        body, rng_sig = body_and_range(original, sp, edge_mm=args.edge_mm, body_level=args.body_level)
        import cv2

        from calcdetect.detect.xray import exposed_field as _field, lung_fields

        _f, _, _ = _field(original.pixels, sp)
        lungs = lung_fields(cv2.GaussianBlur(original.pixels, (0, 0), 0.2 / pix), _f, pix)
        box = MARKER_BOX.get(name)
        margin = int(round(3.0 / pix))
        away_from_marker(body, name, pix)
        if box is not None:
            totals["marker_false"] += len(in_box(rep0.findings, box, margin))
        noise = pixel_noise(original, body)
        per_mm = (args.contrast_per_noise * noise if args.contrast_per_noise is not None
                  else args.contrast_per_mm * rng_sig)
        print(f"{name}: original {rep0.count} finding(s) in {dt0:.2f} s"
              + (f", {len(in_box(rep0.findings, box, margin))} on the lead marker" if box else "")
              + f"; pixel {pix:g} mm, pixel noise {100 * noise / rng_sig:.2f} % of the body range "
              f"(the inserted contrast per mm is {per_mm / noise:.1f} x that noise, {100 * per_mm / rng_sig:.1f} % "
              "of the range)")
        totals["false"] += rep0.count
        totals["images"] += 1
        rows_out.append({"image": name, "trial": "original", "findings": rep0.count, "seconds": dt0,
                         "pixel_noise_of_range": noise / rng_sig})
        for trial in range(args.trials):
            seed = args.seed * 1000 + trial
            foci = random_foci(original, args.foci, diameters_mm=(1.0, 6.0),
                               contrast_per_mm=per_mm, allowed=body, seed=seed,
                               min_gap_mm=6.0)
            img, truth = insert_foci(original, foci, clip=args.clip, blur_mm=args.blur_mm)
            if args.export:
                img = exported(img, window, args.export, export_dir, f"trial{trial}")
            t0 = time.time()
            rep = detect_xray(img, **opts)
            dt = time.time() - t0
            m = match_findings(truth, rep.findings, sp)
            if box is not None:
                totals["marker_false"] += len(in_box([rep.findings[j] for j in m.false], box, margin))
            ge2 = [i for i, t in enumerate(truth) if t["diameter_mm"] >= 2.0]
            found_idx = {i for i, _ in m.matched}
            outside_lung = [i for i, t in enumerate(truth)
                            if not lungs[int(round(t["centroid_px"][0])), int(round(t["centroid_px"][1]))]]
            totals["truth"] += len(truth)
            totals["found"] += m.found
            totals["truth_ge2"] += len(ge2)
            totals["found_ge2"] += sum(1 for i in ge2 if i in found_idx)
            totals["false"] += len(m.false)
            totals["images"] += 1
            size_err += m.size_errors_mm
            missed = [round(truth[i]["diameter_mm"], 1) for i in m.missed]
            lost = []
            if args.diagnose:
                for i in m.missed:
                    taken = any(np.linalg.norm((np.asarray(rep.findings[j].centroid_px) - truth[i]["centroid_px"])
                                               * np.asarray(sp)) <= max(2.0, 0.75 * truth[i]["diameter_mm"])
                                for j in range(rep.count))
                    st = loss_stage(truth[i], rep, sp, taken=taken)
                    lost.append(st)
                    key = st.split(":")[0]
                    per = stages.setdefault(name, {})
                    per[key] = per.get(key, 0) + 1
            print(f"  trial {trial}: found {m.found}/{len(truth)}, false {len(m.false)}, "
                  f"missed sizes {missed}, {dt:.2f} s")
            rows_out.append({"image": name, "trial": trial, "truth": len(truth), "found": m.found,
                             "false": len(m.false), "missed_mm": missed, "seconds": dt,
                             "truth_outside_lungs": len(outside_lung),
                             "found_outside_lungs": sum(1 for i in outside_lung if i in found_idx),
                             "truth_ge2": len(ge2), "found_ge2": sum(1 for i in ge2 if i in found_idx),
                             "size_errors_mm": m.size_errors_mm,
                             "lost": [{"diameter_mm": round(truth[i]["diameter_mm"], 2),
                                       "centroid_px": [round(float(v), 1) for v in truth[i]["centroid_px"]],
                                       "stage": st} for i, st in zip(m.missed, lost)]})
    sens = totals["found"] / max(totals["truth"], 1)
    sens2 = totals["found_ge2"] / max(totals["truth_ge2"], 1)
    fp = totals["false"] / max(totals["images"], 1)
    err = np.asarray(size_err)
    print(f"TOTAL found {totals['found']}/{totals['truth']} = {100 * sens:.1f}%  "
          f">=2 mm {totals['found_ge2']}/{totals['truth_ge2']} = {100 * sens2:.1f}%  "
          f"false findings {totals['false']} in {totals['images']} images = {fp:.2f}/image  "
          f"size error median {np.median(err):+.2f} mm, |err| 90th pct {np.percentile(np.abs(err), 90):.2f} mm; "
          f"findings on the lead marker {totals['marker_false']}")
    for name in names:
        sub = [r for r in rows_out if r["image"] == name and r["trial"] != "original"]
        orig = [r for r in rows_out if r["image"] == name and r["trial"] == "original"][0]
        t = sum(r["truth"] for r in sub)
        f = sum(r["found"] for r in sub)
        to = sum(r["truth_outside_lungs"] for r in sub)
        fo = sum(r["found_outside_lungs"] for r in sub)
        t2 = sum(r["truth_ge2"] for r in sub)
        f2 = sum(r["found_ge2"] for r in sub)
        print(f"  {name}: found {f}/{t} = {100 * f / max(t, 1):.1f}% (>=2 mm {f2}/{t2} = "
              f"{100 * f2 / max(t2, 1):.1f}%; outside lung fields {fo}/{to}), "
              f"false per inserted image "
              f"{np.mean([r['false'] for r in sub]):.1f}, original {orig['findings']} finding(s), "
              f"median time {np.median([r['seconds'] for r in sub]):.2f} s")
    for name, per in stages.items():
        print(f"  {name}: missed foci lost at " + ", ".join(f"{k} {v}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])))
    if args.json:
        Path(args.json).write_text(json.dumps({"totals": totals, "rows": rows_out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
