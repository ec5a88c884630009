"""FROC-style curves: sensitivity vs false findings per image, one detector setting swept.

The cases are those of the validation scripts (``validate_ct.py``, ``validate_xray.py``,
``validate_ultrasound.py``): their own functions generate and insert the calcifications
and call the detector; this script only wraps the detector call (to run it at other
operating points) and the scoring call (to record truth and findings), then rescores
every operating point with :func:`calcdetect.validation.match_findings` (found when a
finding's centroid lies within max(2 mm, 0.75 x diameter) of the truth; one-to-one).

Swept parameter (the detector's own confidence):

* CT: the minimum peak HU of a finding.  Detection runs once at the default 130 HU
  threshold; findings whose peak is below t are dropped, t = 130 ... 1000 HU.  The
  default point is t = 130 (every finding).
* Radiograph: ``detect_xray(min_confidence=...)``, the second-stage classifier logit a
  candidate must reach (default 0.5), rerun at each value.
* Ultrasound: ``detect_ultrasound(min_shadow_contrast=...)`` (default 0.4), rerun at every
  value (the persistence test scales with it, so filtering would not be the same).
  Reported decoys (bright foci without shadow) are counted separately; the plot shows
  false findings per image both without and with them.

    python benchmarks/froc.py                       # all three, default trial counts
    python benchmarks/froc.py ct --trials 1         # one modality

Outputs: ``docs/froc_<ct|xray|us>.png`` and ``docs/froc_<ct|xray|us>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from calcdetect.validation import match_findings  # noqa: E402

DOCS = ROOT / "docs"


def _sweep(cases, score, thresholds, decoys=False):
    """Rescore every case keeping findings with ``score(f) >= t``.

    ``cases``: list of dicts with ``truth``, ``findings``, ``spacing`` (and ``decoys``).
    Returns one row per threshold.
    """
    rows = []
    n_truth = sum(len(c["truth"]) for c in cases)
    n_dec = sum(len(c.get("decoys", [])) for c in cases)
    for t in thresholds:
        found = false = dec_rep = 0
        found_ge2 = n_ge2 = 0
        for c in cases:
            kept = [f for f in c["findings"] if score(f) >= t]
            m = match_findings(c["truth"], kept, c["spacing"])
            used = {j for _, j in m.matched}
            if decoys and c.get("decoys"):
                md = match_findings(c["decoys"], kept, c["spacing"])
                dec_rep += md.found
                used |= {j for _, j in md.matched}
            found += m.found
            false += sum(1 for j in range(len(kept)) if j not in used)
            got = {i for i, _ in m.matched}
            for i, tr in enumerate(c["truth"]):
                if tr["diameter_mm"] >= 2.0:
                    n_ge2 += 1
                    found_ge2 += i in got
        row = {"threshold": float(t), "found": found, "truth": n_truth, "sensitivity": found / max(n_truth, 1),
               "sensitivity_ge2mm": found_ge2 / max(n_ge2, 1), "false": false, "images": len(cases),
               "false_per_image": false / max(len(cases), 1)}
        if decoys:
            row.update({"decoys": n_dec, "decoys_reported": dec_rep,
                        "false_incl_decoys_per_image": (false + dec_rep) / max(len(cases), 1)})
        rows.append(row)
    return rows


def _plot(ax, rows, label, default, color, xkey="false_per_image", style="-o", annotate=True, fmt="{:g}"):
    x = [r[xkey] for r in rows]
    y = [100 * r["sensitivity"] for r in rows]
    ax.plot(x, y, style, color=color, label=label, ms=4, lw=1.5)
    if annotate:  # one label per distinct point: thresholds giving the same point share it
        groups: dict = {}
        for r, xi, yi in zip(rows, x, y):
            groups.setdefault((round(xi, 6), round(yi, 6)), []).append(fmt.format(r["threshold"]))
        for (xi, yi), labels in groups.items():
            text = labels[0] if len(labels) == 1 else f"{labels[0]}-{labels[-1]}"
            ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(4, -11), fontsize=7, color=color)
    if default is not None:
        ax.plot([default[xkey]], [100 * default["sensitivity"]], "*", color=color, ms=16, mec="k", zorder=5)


def _finish(ax, title, xlabel):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("sensitivity (% of inserted calcifications found)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 102)
    right = max(ax.get_xlim()[1], 0.1)
    ax.set_xlim(-0.03 * right, 1.08 * right)
    ax.grid(alpha=0.3)
    ax.plot([], [], "*", color="grey", ms=12, mec="k", label="default operating point")
    ax.legend(fontsize=8, loc="lower right")


# --------------------------------------------------------------------------- CT
def froc_ct(trials: int, seed: int) -> dict:
    import validate_ct

    thresholds = [130, 150, 175, 200, 250, 300, 350, 400, 500, 600, 800, 1000]
    out = {"modality": "CT", "parameter": "minimum peak HU of a finding (detection at threshold_hu=130)",
           "default": 130, "trials": trials, "seed": seed, "curves": {}}
    real_score = validate_ct._score
    t0 = time.time()
    for profile, thickness in (("thin 1 mm", 1.0), ("native", None)):
        recorded = {"2d": [], "3d": []}

        def spy(bucket, truth, rep, spacing, image, name, _rec=recorded):
            kind = "3d" if name == "series" else "2d"
            _rec[kind].append({"truth": truth, "findings": list(rep.findings), "spacing": tuple(spacing)})
            return real_score(bucket, truth, rep, spacing, image, name)

        validate_ct._score = spy
        try:
            validate_ct.run(trials, seed, thickness=thickness)
        finally:
            validate_ct._score = real_score
        for kind, cases in recorded.items():
            if not cases:
                continue
            rows = _sweep(cases, lambda f: f.peak, thresholds)
            key = f"{'single slices' if kind == '2d' else 'series'}, {profile} profile"
            out["curves"][key] = {"cases": len(cases), "inserted": rows[0]["truth"], "rows": rows,
                                  "default_point": rows[0]}
            print(f"CT {key}: {len(cases)} images, {rows[0]['truth']} inserted; default (130 HU) "
                  f"{rows[0]['found']}/{rows[0]['truth']} = {100 * rows[0]['sensitivity']:.1f} %, "
                  f"{rows[0]['false_per_image']:.2f} false/image", flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    colors = {"thin 1 mm": "tab:blue", "native": "tab:orange"}
    for ax, kind, unit in ((axes[0], "single slices", "slice"), (axes[1], "series", "series")):
        for key, c in out["curves"].items():
            if not key.startswith(kind):
                continue
            prof = key.split(", ")[1].replace(" profile", "")
            _plot(ax, c["rows"], f"{prof} slice profile ({c['cases']} {'slices' if unit == 'slice' else 'series'}, {c['inserted']} inserted)",
                  c["default_point"], colors[prof], annotate=(prof == "thin 1 mm"))
        _finish(ax, f"CT {kind}: minimum peak HU of a finding swept 130-1000\n"
                    f"(labels: HU; star: default, every finding >= 130 HU)", f"false findings per {unit}")
    fig.suptitle("calcdetect CT FROC: calcifications (1.5-13 mm, 300-1000 HU) inserted in real CT fat", fontsize=11)
    fig.tight_layout()
    fig.savefig(DOCS / "froc_ct.png", dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- radiograph
#: Inserted contrast per mm of diameter, as a multiple of each film's pixel noise
#: (``validate_xray.py --contrast-per-noise``): the same visibility on every film.
CONTRAST_PER_NOISE = 5.0


def froc_xray(trials: int, seed: int) -> dict:
    import validate_xray
    from calcdetect.detect.xray import detect_xray as real_detect

    default = 0.5
    thresholds = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
    runs = {}      # id(default findings) -> (image name, {t: report})
    matched = {}   # id(default findings) -> (truth, spacing)

    def spy_detect(img, **kw):
        by_t = {t: real_detect(img, min_confidence=t, **kw) for t in thresholds}
        src = str(img.source)
        name = "chest RG1" if "RG1" in src else "tibia RG3" if "RG3" in src else "cat DX (unseen)"
        runs[id(by_t[default].findings)] = (name, by_t)
        return by_t[default]

    real_match = validate_xray.match_findings

    def spy_match(truth, findings, sp, **kw):
        matched[id(findings)] = (truth, tuple(sp))
        return real_match(truth, findings, sp, **kw)

    validate_xray.detect_xray, validate_xray.match_findings = spy_detect, spy_match
    t0 = time.time()
    try:
        validate_xray.main(["--trials", str(trials), "--seed", str(seed), "--images", "all",
                            "--contrast-per-noise", str(CONTRAST_PER_NOISE)])
    finally:
        validate_xray.detect_xray, validate_xray.match_findings = real_detect, real_match
    out = {"modality": "radiograph", "parameter": "detect_xray min_confidence (second-stage classifier logit), rerun at each value",
           "default": default, "trials": trials, "seed": seed, "contrast_per_noise": CONTRAST_PER_NOISE,
           "curves": {},
           "originals": [{"image": name, "findings_at_threshold": {str(t): by_t[t].count for t in thresholds}}
                         for k, (name, by_t) in runs.items() if k not in matched]}
    for which in ("all", "tibia RG3", "chest RG1", "cat DX (unseen)"):
        keys = [k for k, (name, _) in runs.items() if k in matched and which in ("all", name)]
        rows = []
        for t in thresholds:
            cases = [{"truth": matched[k][0], "spacing": matched[k][1], "findings": list(runs[k][1][t].findings)}
                     for k in keys]
            r = _sweep(cases, lambda f: 1.0, [1.0])[0]
            r["threshold"] = t
            rows.append(r)
        d = next(r for r in rows if r["threshold"] == default)
        out["curves"][which] = {"cases": len(keys), "inserted": d["truth"], "rows": rows, "default_point": d}
        print(f"X-ray {which}: {len(keys)} images, {d['truth']} inserted; default (confidence 0.5) "
              f"{d['found']}/{d['truth']} = {100 * d['sensitivity']:.1f} %, {d['false_per_image']:.2f} false/image",
              flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    fig, ax = plt.subplots(figsize=(8, 5.8))
    colors = {"all": "k", "tibia RG3": "tab:green", "chest RG1": "tab:red", "cat DX (unseen)": "tab:blue"}
    for name, c in out["curves"].items():
        _plot(ax, c["rows"], f"{name} ({c['cases']} images, {c['inserted']} foci)", c["default_point"],
              colors[name], annotate=(name != "all"))
    ax.set_xscale("symlog", linthresh=1.0)
    _finish(ax, f"Radiograph FROC: min_confidence of detect_xray swept {thresholds[0]:g} to {thresholds[-1]:g} "
                "(labels: logit; star: default 0.5)\n"
                f"foci 1-6 mm, contrast per mm {CONTRAST_PER_NOISE:g} x each film's pixel noise, in pydicom-data "
                "RG1/RG3\nand deid-data's cat DX (never tuned on)",
            "false findings per radiograph (symlog scale)")
    ax.set_xlim(-0.05, None)
    ticks = [t for t in (0, 0.5, 1, 2, 5, 10, 20, 50) if t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    fig.tight_layout()
    fig.savefig(DOCS / "froc_xray.png", dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- ultrasound
def froc_us(trials: int, seed: int) -> dict:
    import validate_ultrasound
    from calcdetect.detect.ultrasound import detect_ultrasound as real_detect

    default = 0.4
    thresholds = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    runs = {}      # id(default findings) -> {t: findings}
    calls = []     # (truth, findings, spacing) in call order

    def spy_detect(img, **kw):
        by_t = {t: real_detect(img, min_shadow_contrast=t, **kw) for t in thresholds}
        runs[id(by_t[default].findings)] = by_t
        return by_t[default]

    real_match = validate_ultrasound.match_findings

    def spy_match(truth, findings, sp, **kw):
        calls.append((truth, findings, tuple(sp)))
        return real_match(truth, findings, sp, **kw)

    validate_ultrasound.detect_ultrasound, validate_ultrasound.match_findings = spy_detect, spy_match
    t0 = time.time()
    try:
        res = validate_ultrasound.run_trials(trials, seed)
    finally:
        validate_ultrasound.detect_ultrasound, validate_ultrasound.match_findings = real_detect, real_match
    # run_trials matches the foci, then the decoys, against the same findings
    assert len(calls) % 2 == 0
    pairs = [(calls[i], calls[i + 1]) for i in range(0, len(calls), 2)]
    inserted_ids = {id(a[1]) for a, _ in pairs}
    rows = []
    for t in thresholds:
        cases = []
        for (foci, fnd, sp), (dec, _, _) in pairs:
            cases.append({"truth": foci, "decoys": dec, "findings": list(runs[id(fnd)][t].findings), "spacing": sp})
        r = _sweep(cases, lambda f: 1.0, [1.0], decoys=True)[0]
        r["threshold"] = t
        rows.append(r)
    orig = [by_t for k, by_t in runs.items() if k not in inserted_ids]
    originals = {str(t): sum(b[t].count for b in orig) for t in thresholds}
    d = next(r for r in rows if r["threshold"] == default)
    out = {"modality": "ultrasound", "parameter": "detect_ultrasound min_shadow_contrast (rerun at each value)",
           "default": default, "trials": trials, "seed": seed, "cases": len(pairs), "inserted": d["truth"],
           "rows": rows, "default_point": d, "validate_ultrasound_summary": res["inserted"],
           "originals": {"images": len(orig), "findings_at_threshold": originals},
           "seconds": round(time.time() - t0, 1)}
    print(f"US: {len(pairs)} images, {d['truth']} foci, {d['decoys']} decoys; default (0.4) "
          f"{d['found']}/{d['truth']} = {100 * d['sensitivity']:.1f} %, {d['false_per_image']:.2f} false/image, "
          f"{d['decoys_reported']}/{d['decoys']} decoys; originals {len(orig)} images: {originals}", flush=True)
    fig, ax = plt.subplots(figsize=(8, 5.8))
    _plot(ax, rows, f"false findings only ({len(pairs)} images, {d['truth']} shadowing foci)", d, "tab:blue")
    _plot(ax, rows, f"false findings + reported decoys ({d['decoys']} shadowless decoys)", d, "tab:purple",
          xkey="false_incl_decoys_per_image", style="--s", annotate=False)
    _finish(ax, "Ultrasound FROC: min_shadow_contrast swept 0-0.8 (labels; star: default 0.4)\n"
                "shadowing foci 2-10 mm inserted in real pydicom-data B-mode images",
            "false findings per image")
    fig.tight_layout()
    fig.savefig(DOCS / "froc_us.png", dpi=110)
    plt.close(fig)
    return out


#: trials and seed per modality: CT and radiograph as in their validation tables (so the
#: default points reproduce them); ultrasound as its table (20 trials, seed 0)
RUNNERS = {"ct": (froc_ct, 5, 1), "xray": (froc_xray, 5, 12345), "us": (froc_us, 20, 0)}


def main(argv=None) -> int:
    global DOCS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modality", nargs="*", default=[], help="ct, xray, us (default: all three)")
    ap.add_argument("--trials", type=int, help="trials per image (default: ct 5, xray 5, us 20)")
    ap.add_argument("--seed", type=int, help="seed (default: that of each validation table)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNG and JSON go (default: docs/)")
    args = ap.parse_args(argv)
    DOCS = args.out
    DOCS.mkdir(parents=True, exist_ok=True)
    bad = [m for m in args.modality if m not in RUNNERS]
    if bad:
        ap.error(f"unknown modality {bad}: choose from {list(RUNNERS)}")
    for mod in args.modality or list(RUNNERS):
        fn, trials, seed = RUNNERS[mod]
        t0 = time.time()
        out = fn(args.trials or trials, seed if args.seed is None else args.seed)
        (DOCS / f"froc_{mod}.json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"{mod}: wrote {DOCS / f'froc_{mod}.png'} and .json in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
