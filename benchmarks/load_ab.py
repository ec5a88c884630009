#!/usr/bin/env python
"""Time ``calcdetect.load`` of one series folder from several source trees, and
SimpleITK's ImageSeriesReader, taking turns in one run.

Usage::

    git archive OLD | tar -x -C /tmp/old
    python benchmarks/load_ab.py FOLDER --trees /tmp/old . --rounds 5 --per 3

Every round runs each tree (and ``sitk``) in a fresh process: one warm-up load, then
``--per`` timed loads; the order of the trees reverses every round so that load from
other processes hits them alike.  Prints the median and best wall time and the median
CPU time (all threads) of every tree, and the load average.  A series folder to time
is written by ``benchmarks/load_identity.py build`` (``bench-series``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, sys, time
tree, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if tree == "sitk":
    import SimpleITK as sitk

    def go():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
        return sitk.GetArrayViewFromImage(reader.Execute()).shape
else:
    sys.path.insert(0, tree)
    import calcdetect

    def go():
        return calcdetect.load(folder).shape
go()
out = []
for _ in range(n):
    t, c = time.perf_counter(), time.process_time()
    go()
    out.append((time.perf_counter() - t, time.process_time() - c))
print(json.dumps(out))
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a DICOM series folder")
    ap.add_argument("--trees", nargs="+", default=["."], help="source trees holding calcdetect/")
    ap.add_argument("--no-sitk", action="store_true", help="leave SimpleITK out")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per", type=int, default=3, help="timed loads per process")
    args = ap.parse_args(argv)
    tools = [str(Path(t).resolve()) for t in args.trees] + ([] if args.no_sitk else ["sitk"])
    times: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
    print(f"load average at start {[round(v, 2) for v in os.getloadavg()]}")
    for r in range(args.rounds):
        for tool in tools if r % 2 == 0 else tools[::-1]:
            env = dict(os.environ, PYTHONPATH=tool if tool != "sitk" else os.environ.get("PYTHONPATH", ""))
            proc = subprocess.run([sys.executable, "-c", CHILD, tool, str(args.folder), str(args.per)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed", file=sys.stderr)
                return 1
            times[tool] += json.loads(proc.stdout.strip().splitlines()[-1])
    for tool, rows in times.items():
        wall = sorted(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        print(f"{tool:40s} n={len(wall)} wall median {statistics.median(wall) * 1e3:.0f} ms "
              f"(best {wall[0] * 1e3:.0f}) cpu median {cpu * 1e3:.0f} ms")
    print(f"load average at end {[round(v, 2) for v in os.getloadavg()]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
