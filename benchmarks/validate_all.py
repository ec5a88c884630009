"""Regenerate every validation table and plot of docs/validation.md in one command.

Runs, one after the other, with this checkout's ``calcdetect`` (PYTHONPATH set to the
repository root):

1. ``validate_ct.py --trials 5 --seed 1 --slice-profile 1.0``  (CT, thin profile)
2. ``validate_ct.py --trials 5 --seed 1``                     (CT, native profile)
3. ``validate_xray.py --trials 5``                            (radiographs, 2 %/mm)
4. ``validate_xray.py --trials 3 --contrast-per-mm 0.04``     (radiographs, 4 %/mm)
5. ``validate_xray.py --images lossy --seed 12345 --contrast-per-mm 0.04``   (lossy twins)
6. ``validate_xray.py --export jpg90 --seed 12345 --contrast-per-mm 0.04``    (8-bit JPEG exports)
7. ``validate_ultrasound.py --trials 20``                     (ultrasound)
8. ``froc.py``                                                (docs/froc_*.png, docs/froc_*.json)

Each step's printed table goes to ``<out>/<step>.txt`` (and is echoed), its raw numbers
to ``<out>/<step>.json``; the default ``<out>`` is ``out/validation/`` (git-ignored).
The FROC plots and their numbers are written into ``docs/`` directly (with ``--quick``
into ``<out>`` instead, so a smoke test never overwrites the committed plots).  The tables in
docs/validation.md, docs/xray.md and docs/ultrasound.md are then updated by hand from
these files.  The full run takes roughly 20 minutes on a shared 2-core machine (the
FROC step alone about 9); ``--quick`` (1-2 trials each) a few minutes, for a smoke test
only.

    python benchmarks/validate_all.py [--quick] [--only ct_thin,froc] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
B = "benchmarks"

# name: (full arguments, quick arguments); "{json}" is replaced by the step's JSON path
STEPS = {
    "ct_thin": ([f"{B}/validate_ct.py", "--trials", "5", "--seed", "1", "--slice-profile", "1.0", "--json", "{json}"],
                [f"{B}/validate_ct.py", "--trials", "1", "--seed", "1", "--slice-profile", "1.0", "--json", "{json}"]),
    "ct_native": ([f"{B}/validate_ct.py", "--trials", "5", "--seed", "1", "--json", "{json}"],
                  [f"{B}/validate_ct.py", "--trials", "1", "--seed", "1", "--json", "{json}"]),
    "ct_phantoms": ([f"{B}/validate_ct.py", "--phantoms", "--trials", "10", "--seed", "2", "--json", "{json}"],
                    [f"{B}/validate_ct.py", "--phantoms", "--trials", "2", "--seed", "2", "--json", "{json}"]),
    "xray_2pct": ([f"{B}/validate_xray.py", "--trials", "5", "--json", "{json}"],
                  [f"{B}/validate_xray.py", "--trials", "1", "--json", "{json}"]),
    "xray_4pct": ([f"{B}/validate_xray.py", "--trials", "3", "--contrast-per-mm", "0.04", "--json", "{json}"],
                  [f"{B}/validate_xray.py", "--trials", "1", "--contrast-per-mm", "0.04", "--json", "{json}"]),
    # round 8: the films as users also hold them (lossy twins; 8-bit JPEG exports read back)
    "xray_lossy": ([f"{B}/validate_xray.py", "--images", "lossy", "--trials", "5", "--seed", "12345",
                    "--contrast-per-mm", "0.04", "--json", "{json}"],
                   [f"{B}/validate_xray.py", "--images", "lossy", "--trials", "1", "--contrast-per-mm", "0.04",
                    "--json", "{json}"]),
    "xray_jpg90": ([f"{B}/validate_xray.py", "--export", "jpg90", "--trials", "5", "--seed", "12345",
                    "--contrast-per-mm", "0.04", "--json", "{json}"],
                   [f"{B}/validate_xray.py", "--export", "jpg90", "--trials", "1", "--contrast-per-mm", "0.04",
                    "--json", "{json}"]),
    "ultrasound": ([f"{B}/validate_ultrasound.py", "--trials", "20", "--json", "{json}"],
                   [f"{B}/validate_ultrasound.py", "--trials", "2", "--json", "{json}"]),
    "froc": ([f"{B}/froc.py"], [f"{B}/froc.py", "--trials", "1", "--out", "{dir}"]),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1-2 trials per step (smoke test, not for the docs)")
    ap.add_argument("--only", help=f"comma-separated steps among {','.join(STEPS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "validation", help="where tables and JSON go")
    args = ap.parse_args(argv)
    steps = list(STEPS) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"unknown step(s) {bad}; choose from {list(STEPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    failed = []
    t_all = time.time()
    for name in steps:
        full, quick = STEPS[name]
        cmd = [sys.executable] + [a.replace("{json}", str(args.out / f"{name}.json")).replace("{dir}", str(args.out)) for a in (quick if args.quick else full)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        with open(args.out / f"{name}.txt", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
        print(f"=== {name}: exit {rc}, {time.time() - t0:.0f} s, table in {args.out / (name + '.txt')}", flush=True)
        if rc:
            failed.append(name)
    print(f"\nall done in {time.time() - t_all:.0f} s; outputs in {args.out} and docs/froc_*.png/json"
          + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
