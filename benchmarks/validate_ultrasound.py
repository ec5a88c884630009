"""Validate the ultrasound detector on real B-mode images with inserted foci.

Real images (pydicom-data / pydicom test files, nothing downloaded):

* ``JPGLosslessP14SV1_1s_1f_8b.dcm``  sector (phased array), calipers, 0.255 mm
* ``color3d_jpeg_baseline.dcm``       sector, 120-frame cine: frames 0, 30, 60, 90, 0.51 mm
* ``gdcm-US-ALOKA-16.dcm``            dual view (two B-mode regions), convex probe, 0.383 mm
* ``US1_UNCR.dcm``                    linear probe with colour Doppler; it has no regions,
                                     so a pixel size of 0.13 mm is *assumed* (its 3 cm
                                     field shown over ~230 rows) -- only to place foci of a
                                     known size; reported sizes are checked against it.
                                     Doppler leaves little tissue with room for a shadow,
                                     so few foci fit.
* "linear (beam space)": the sector frames above resampled into beam space (rows =
  depth along the beam, columns = beam lines, as a linear probe shows them): real
  speckle and tissue in a linear geometry (the pydicom data hold no other linear
  B-mode image with a pixel size).

Each trial inserts 3 shadowing foci (2-10 mm, shadow factor 0.15-0.4) and 2 bright
decoys without shadow (2-10 mm) at random tissue positions with room behind them
(:func:`calcdetect.phantoms.ultrasound.insert_shadowing_focus`), runs
:func:`calcdetect.detect.ultrasound.detect_ultrasound` and scores with
:func:`calcdetect.validation.match_findings`.  Untouched originals (calipers, text,
Doppler, dark fields: also ``OBXXXX1A.dcm`` and ``examples_palette.dcm``) count their
false findings.  A second set inserts large calcifications seen as bright arcs (only
the transducer-facing surface echoes; 5-12 mm) with shadow, and arcs without shadow.
Also the synthetic phantoms (linear and sector) and the time of one 640 x 480 frame.

Run::

    python benchmarks/validate_ultrasound.py [--trials N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calcdetect.detect.ultrasound import _beam_coords, _regions, beam_geometry, detect_ultrasound  # noqa: E402
from calcdetect.io import load  # noqa: E402
from calcdetect.phantoms.ultrasound import insert_shadowing_focus, ultrasound_phantom  # noqa: E402
from calcdetect.validation import match_findings  # noqa: E402

CASES = [
    ("sector", "JPGLosslessP14SV1_1s_1f_8b.dcm", {}),
    ("sector", "color3d_jpeg_baseline.dcm", {"frame": 0}),
    ("sector", "color3d_jpeg_baseline.dcm", {"frame": 30}),
    ("sector", "color3d_jpeg_baseline.dcm", {"frame": 60}),
    ("sector", "color3d_jpeg_baseline.dcm", {"frame": 90}),
    ("dual-view", "gdcm-US-ALOKA-16.dcm", {}),
    ("linear", "US1_UNCR.dcm", {"pixel_size_mm": 0.13}),
    ("linear (beam space)", "JPGLosslessP14SV1_1s_1f_8b.dcm", {}),
    ("linear (beam space)", "color3d_jpeg_baseline.dcm", {"frame": 45}),
]
ORIGINALS_ONLY = ["OBXXXX1A.dcm", "examples_palette.dcm", "OBXXXX1A_2frame.dcm"]


def _path(name: str) -> str:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name)
    if p is None:
        raise SystemExit(f"{name}: not found (install pydicom-data)")
    return str(p)


def _place(image, rng, n_foci: int, n_decoys: int, tries: int = 400):
    """Random, mutually clear positions with tissue around and behind each object."""
    valid = image.valid_mask
    fan_all = image.geometry.get("fan", valid)
    regs = _regions(image, image.shape)
    placed: list[dict] = []
    kinds = ["focus"] * n_foci + ["decoy"] * n_decoys
    for kind in kinds:
        for _ in range(tries):
            reg = regs[rng.integers(len(regs))]
            x0, y0, x1, y1 = reg["box"]
            sp = tuple(reg["spacing_mm"] or image.spacing_mm)
            fan = np.zeros(image.shape, bool)
            fan[y0:y1 + 1, x0:x1 + 1] = fan_all[y0:y1 + 1, x0:x1 + 1]
            geom = beam_geometry(fan, sp)
            d = float(rng.uniform(2.0, 10.0))
            ys, xs = np.nonzero(valid[y0:y1 + 1, x0:x1 + 1])
            k = rng.integers(ys.size)
            cy, cx = float(ys[k] + y0), float(xs[k] + x0)
            rad = 0.5 * d / sp[1]
            # the whole disk, a margin, and 12 mm behind it must be tissue
            t, s = _beam_coords(np.array([cy]), np.array([cx]), geom, sp)
            ok = True
            for dt in np.arange(-d / 2 - 3.0, d / 2 + 12.0, 1.0):
                for dl in (-d / 2 - 4.0, 0.0, d / 2 + 4.0):
                    if geom["probe"] == "sector":
                        ay, ax = geom["apex_mm"]
                        th = s[0] + dl / t[0]
                        py, px = (ay + (t[0] + dt) * np.cos(th)) / sp[0], (ax + (t[0] + dt) * np.sin(th)) / sp[1]
                    else:
                        py, px = cy + dt / sp[0], cx + dl / sp[1]
                    iy, ix = int(round(py)), int(round(px))
                    if not (y0 <= iy <= y1 and x0 <= ix <= x1 and valid[iy, ix]):
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                continue
            # clear of the others: no overlap of shadows / beside bands (lateral) unless far apart in depth
            lat = s[0] * t[0] if geom["probe"] == "sector" else s[0]
            clash = False
            for o in placed:
                if o["region"] != reg["number"]:
                    continue
                dl = abs(lat - o["lat"]) if geom["probe"] == "linear" else abs(s[0] - o["s"]) * max(t[0], o["t"])
                if dl < (d + o["diameter_mm"]) / 2 + 8.0:
                    clash = True
                    break
            if clash:
                continue
            placed.append({"kind": kind, "centroid_px": (cy, cx), "diameter_mm": d, "region": reg["number"],
                           "lat": lat, "s": s[0], "t": t[0], "radius_px": rad})
            break
    return placed


def beam_space(image):
    """A sector image resampled into beam space: rows = depth, columns = beam lines."""
    import cv2

    from calcdetect.phantoms.ultrasound import _as_image

    sp = tuple(image.spacing_mm)
    geom = beam_geometry(image.geometry["fan"], sp)
    if geom["probe"] != "sector":
        raise SystemExit(f"{image.source}: not a sector image")
    yy, xx = np.nonzero(image.geometry["fan"])
    r, th = _beam_coords(yy.astype(float), xx.astype(float), geom, sp)
    step = min(sp)
    r0, r1 = float(np.percentile(r, 1)), float(r.max())
    t0, t1 = float(th.min()), float(th.max())
    r_ref = float(np.median(r))
    nr = int((r1 - r0) / step)
    nt = int((t1 - t0) * r_ref / step)
    R = (r0 + np.arange(nr) * step)[:, None] * np.ones((1, nt))
    T = np.ones((nr, 1)) * (t0 + np.arange(nt) * step / r_ref)[None, :]
    ay, ax = geom["apex_mm"]
    mapy = ((ay + R * np.cos(T)) / sp[0]).astype(np.float32)
    mapx = ((ax + R * np.sin(T)) / sp[1]).astype(np.float32)
    grey = cv2.remap(image.pixels, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    inside = cv2.remap(image.geometry["fan"].astype(np.uint8), mapx, mapy, cv2.INTER_NEAREST) > 0
    grey[~inside] = 0
    # the original's masks (overlays included), carried over pixel for pixel
    valid = cv2.remap(image.valid_mask.astype(np.uint8), mapx, mapy, cv2.INTER_NEAREST) > 0
    out = _as_image(grey, step, "linear", source=f"{image.source} (beam space)")
    out.valid_mask = valid & inside
    out.geometry["fan"] = inside
    return out


def score(foci, decoys, findings, spacing):
    """Match ``findings`` to the inserted foci and, separately, to the decoys (bright spots
    without shadow).  Returns the two :class:`~calcdetect.validation.MatchResult` and the
    number of false findings (matched to neither)."""
    mf = match_findings(foci, findings, spacing)
    md = match_findings(decoys, findings, spacing)
    used = {j for _, j in mf.matched} | {j for _, j in md.matched}
    return mf, md, sum(1 for j in range(len(findings)) if j not in used)


def run_trials(trials: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    per_case = []
    all_found = all_foci = all_dec = all_dec_rep = all_false = all_imgs = 0
    errors: list[float] = []
    for kind, name, opts in CASES:
        base = load(_path(name), **opts)
        if kind.startswith("linear (beam"):
            base = beam_space(base)
        c = {"case": f"{name}{'' if not opts else ' ' + json.dumps(opts)}", "kind": kind, "foci": 0, "found": 0,
             "decoys": 0, "decoys_reported": 0, "false": 0, "images": 0, "size_errors_mm": []}
        for trial in range(trials):
            spots = _place(base, rng, 3, 2)
            img = base
            for j, sp in enumerate(spots):
                img, _ = insert_shadowing_focus(
                    img, sp["centroid_px"], sp["diameter_mm"], shadow=sp["kind"] == "focus",
                    shadow_factor=float(rng.uniform(0.15, 0.4)), brightness=float(rng.uniform(215, 250)),
                    seed=int(rng.integers(1 << 30)))
            rep = detect_ultrasound(img)
            foci = [s for s in spots if s["kind"] == "focus"]
            dec = [s for s in spots if s["kind"] == "decoy"]
            mf, md, n_false = score(foci, dec, rep.findings, img.spacing_mm)
            c["foci"] += len(foci)
            c["found"] += mf.found
            c["decoys"] += len(dec)
            c["decoys_reported"] += md.found
            c["false"] += n_false
            c["images"] += 1
            c["size_errors_mm"] += mf.size_errors_mm
        per_case.append(c)
        all_found += c["found"]
        all_foci += c["foci"]
        all_dec += c["decoys"]
        all_dec_rep += c["decoys_reported"]
        all_false += c["false"]
        all_imgs += c["images"]
        errors += c["size_errors_mm"]
    originals = []
    for kind, name, opts in CASES + [("original", n, {}) for n in ORIGINALS_ONLY]:
        beam = kind.startswith("linear (beam")
        if beam:
            name_shown = name + " (beam space)"
        else:
            name_shown = name
        key = (name_shown, json.dumps(opts))
        if any(o["key"] == key for o in originals):
            continue
        img = load(_path(name), **opts)
        if beam:
            img = beam_space(img)
        name = name_shown
        rep = detect_ultrasound(img)
        originals.append({"key": key, "case": name, "opts": opts, "false": rep.count})
    n_orig_false = sum(o["false"] for o in originals)
    abs_err = np.abs(errors) if errors else np.array([np.nan])
    return {
        "trials_per_case": trials,
        "cases": [{k: (v if k != "size_errors_mm" else [round(x, 2) for x in v]) for k, v in c.items()}
                  for c in per_case],
        "inserted": {
            "foci": all_foci, "found": all_found, "sensitivity": all_found / max(all_foci, 1),
            "decoys": all_dec, "decoys_reported": all_dec_rep, "decoy_rate": all_dec_rep / max(all_dec, 1),
            "false_per_image": all_false / max(all_imgs, 1), "images": all_imgs,
            "median_abs_size_error_mm": float(np.median(abs_err)),
            "median_signed_size_error_mm": float(np.median(errors)) if errors else None,
            "p90_abs_size_error_mm": float(np.percentile(abs_err, 90)),
        },
        "originals": {"images": len(originals), "false": n_orig_false,
                      "false_per_image": n_orig_false / max(len(originals), 1),
                      "per_image": [{"case": o["case"], "opts": o["opts"], "false": o["false"]} for o in originals]},
    }


ARC_CASES = [
    ("sector", "JPGLosslessP14SV1_1s_1f_8b.dcm", {}),
    ("sector", "color3d_jpeg_baseline.dcm", {"frame": 30}),
    ("dual-view", "gdcm-US-ALOKA-16.dcm", {}),
    ("linear (beam space)", "JPGLosslessP14SV1_1s_1f_8b.dcm", {}),
]


def run_arcs(trials: int, seed: int = 1) -> dict:
    """Large calcifications seen as bright arcs (only the transducer-facing surface
    echoes): 2 arcs of 5-12 mm with shadow + 1 arc without shadow per image."""
    rng = np.random.default_rng(seed)
    found = foci = dec = dec_rep = false = imgs = 0
    w_err, s_err = [], []
    for kind, name, opts in ARC_CASES:
        base = load(_path(name), **opts)
        if kind.startswith("linear (beam"):
            base = beam_space(base)
        for _ in range(trials):
            spots = _place(base, rng, 2, 1)
            img = base
            truths = []
            for sp in spots:
                # placed for 2-10 mm with >= 4 mm margins: arcs of 5-12 mm still fit
                d = max(5.0, sp["diameter_mm"] + 2.0)
                img, t = insert_shadowing_focus(
                    img, sp["centroid_px"], d, shadow=sp["kind"] == "focus",
                    shadow_factor=float(rng.uniform(0.15, 0.4)), brightness=float(rng.uniform(215, 250)),
                    seed=int(rng.integers(1 << 30)), shape="arc")
                truths.append(t)
            rep = detect_ultrasound(img)
            f = [t for t in truths if t["shadow"]]
            d_ = [t for t in truths if not t["shadow"]]
            mf, md, n_false = score(f, d_, rep.findings, img.spacing_mm)
            found += mf.found
            foci += len(f)
            dec += len(d_)
            dec_rep += md.found
            false += n_false
            imgs += 1
            for i, j in mf.matched:
                fx = rep.findings[j].extra
                w_err.append(fx["focus_width_mm"] - f[i]["diameter_mm"])
                if fx["shadow_width_mm"] is not None:
                    s_err.append(fx["shadow_width_mm"] - f[i]["diameter_mm"])
    return {"images": imgs, "foci": foci, "found": found, "sensitivity": found / max(foci, 1),
            "decoys": dec, "decoys_reported": dec_rep, "false_per_image": false / max(imgs, 1),
            "median_abs_focus_width_error_mm": float(np.median(np.abs(w_err))) if w_err else None,
            "median_abs_shadow_width_error_mm": float(np.median(np.abs(s_err))) if s_err else None}


def run_phantoms(seeds: int = 5) -> dict:
    out = {}
    for geom in ("linear", "sector"):
        found = foci = dec = dec_rep = false = 0
        errs = []
        for seed in range(seeds):
            img, truth = ultrasound_phantom(geometry=geom, seed=seed)
            rep = detect_ultrasound(img)
            f = [t for t in truth if t["shadow"]]
            d = [t for t in truth if not t["shadow"]]
            mf, md, n_false = score(f, d, rep.findings, img.spacing_mm)
            found += mf.found
            foci += len(f)
            dec += len(d)
            dec_rep += md.found
            false += n_false
            errs += mf.size_errors_mm
        out[geom] = {"images": seeds, "foci": foci, "found": found, "decoys": dec, "decoys_reported": dec_rep,
                     "false": false, "median_abs_size_error_mm": float(np.median(np.abs(errs))) if errs else None}
    return out


def time_frame(repeats: int = 10) -> dict:
    img = load(_path("color3d_jpeg_baseline.dcm"))  # 640 x 480, sector
    detect_ultrasound(img)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detect_ultrasound(img)
        t.append(time.perf_counter() - t0)
    t_load = []
    for _ in range(3):
        t0 = time.perf_counter()
        load(_path("gdcm-US-ALOKA-16.dcm"))
        t_load.append(time.perf_counter() - t0)
    img2 = load(_path("gdcm-US-ALOKA-16.dcm"))
    t2 = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detect_ultrasound(img2)
        t2.append(time.perf_counter() - t0)
    return {"detect_640x480_sector_s_median": float(np.median(t)),
            "detect_640x480_dual_view_s_median": float(np.median(t2)),
            "load_640x480_palette16_s_median": float(np.median(t_load))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="insertion trials per real image (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    res = {"real": run_trials(args.trials, args.seed), "arcs": run_arcs(max(args.trials // 2, 1), args.seed + 1),
           "phantoms": run_phantoms(), "timing": time_frame()}
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
