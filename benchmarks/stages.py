#!/usr/bin/env python
"""Where the time of ``calcdetect.detect`` goes on a synthetic CT, stage by stage.

Usage (from the repository root)::

    python benchmarks/stages.py [--slices 300] [--repeats 2] [--half-res] [--clutter 20]

Wraps the stages of :func:`calcdetect.detect.ct.detect_ct` with timers (anatomy, at the
reduced working pixel unless ``--full-anatomy``,
the candidate mask, labelling (with the scan for the labelled voxels), measurements,
noise estimate, rim statistics, the full-resolution deep core near foci and the rim's
second look at it, midline test, relabelling, scores, half-max sizing, findings,
distribution) and prints the seconds of each.  ``--half-res`` also times
``ct_anatomy`` at full resolution on the volume subsampled 2x in-plane (the
estimate that led to :func:`calcdetect.detect.anatomy.ct_anatomy_reduced`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if (HERE.parent / "calcdetect" / "__init__.py").exists():
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import synthetic  # noqa: E402
from run import CT_CLUTTER  # noqa: E402

STAGES = ("ct_anatomy_reduced", "_candidate_mask", "_label_candidates", "regionprops_table", "noise_sigma",
          "_rim_stats", "_refine_deep", "_rim_in_deep", "_midline_bone", "filter_labels", "calcium_scores",
          "_half_max_labels", "_findings", "describe_distribution")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--half-res", action="store_true")
    ap.add_argument("--clutter", type=float, default=CT_CLUTTER,
                    help="dense specks per slice (default: run.py's CT_CLUTTER, the benchmark's input)")
    ap.add_argument("--full-anatomy", action="store_true",
                    help="detect with anatomy_pixel_mm=None (the anatomy at full resolution)")
    args = ap.parse_args(argv)
    options = {"anatomy_pixel_mm": None} if args.full_anatomy else {}

    import calcdetect

    ct = importlib.import_module("calcdetect.detect.ct")
    ph = synthetic.synthetic_ct(args.slices, clutter=args.clutter)
    image = calcdetect.Image(ph.hu.astype(np.float32), ph.spacing_mm, "CT")
    acc: dict[str, float] = {}

    def wrap(name: str) -> None:
        func = getattr(ct, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return func(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t

        setattr(ct, name, timed)

    for name in STAGES:
        wrap(name)
    calcdetect.detect(image, **options)  # warm-up
    print(f"detect on {image.shape}, load average {os.getloadavg()}")
    for _ in range(args.repeats):
        acc.clear()
        t = time.perf_counter()
        cpu = time.process_time()
        count = calcdetect.detect(image, **options).count
        cpu = time.process_time() - cpu
        total = time.perf_counter() - t
        print(f"total {total:.3f} s, cpu {cpu:.3f} s ({count} findings)")
        for name in STAGES:
            print(f"  {name:22s} {acc.get(name, 0.0):8.3f} s  {100 * acc.get(name, 0.0) / total:5.1f}%")
        print(f"  {'(rest)':22s} {total - sum(acc.values()):8.3f} s")
    if args.half_res:
        from calcdetect.detect.anatomy import ct_anatomy

        full_t = time.perf_counter()
        ct_anatomy(image.pixels, ph.spacing_mm[1:])
        full_t = time.perf_counter() - full_t
        half = np.ascontiguousarray(image.pixels[:, ::2, ::2])
        half_t = time.perf_counter()
        ct_anatomy(half, tuple(2 * s for s in ph.spacing_mm[1:]))
        half_t = time.perf_counter() - half_t
        print(f"ct_anatomy full resolution {full_t:.3f} s, half resolution {half_t:.3f} s (estimate only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
