"""Robustness benchmark (issue 10): damaged DICOMs of all three modalities through the CLI.

Generates ``--count`` (default 120) randomly damaged DICOMs from real CT, radiograph and
ultrasound files (see ``tests/corpus.py``), plus, with ``--full``, the fixed corpus of
hand-made nasty cases, then runs ``calcdetect detect FILE`` on each in its own
subprocess with a 60 s timeout and counts the outcomes:

- ``report``     exit 0 and a valid JSON report on stdout (strict JSON: no NaN/inf)
- ``refused``    non-zero exit with exactly one line on stderr and no traceback
- ``traceback``  a Python traceback or an "internal error" line on stderr
- ``hang``       still running after the timeout (killed)
- ``signal``     killed by a signal (segmentation fault, abort, out-of-memory killer)
- ``other``      anything else (e.g. exit 0 without valid JSON, several stderr lines)

With ``--layer decode`` each file goes instead through the shared DICOM layer alone
(``read_dataset`` + ``decode_pixels``, which the CT, radiograph and ultrasound loaders
all use), so radiograph and ultrasound bytes reach the pixel decoders even where their
loaders are not available.  For that layer ``report`` means "decoded to an array".

Run from the repository root::

    python benchmarks/robustness.py --count 120 --jobs 2
    python benchmarks/robustness.py --count 120 --jobs 2 --layer decode
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import corpus  # noqa: E402

check_report = corpus.check_report


def run_case(case: "corpus.Case", *, timeout: float = 60.0) -> dict:
    """Run the CLI on one case in a subprocess and classify the outcome."""
    return corpus.run_cli(case.path, args=case.extra.get("args", ()), null_mm=case.null_mm,
                          timeout=timeout) | {"case": case.name}


def decode_worker(path: str) -> int:
    """The shared DICOM layer alone: read_dataset + decode_pixels, as every loader
    (CT, radiograph, ultrasound) uses it.  Exit 0 printing the shape, or 1 with one line."""
    from calcdetect.errors import CalcdetectError
    from calcdetect.io.dicom import decode_pixels, read_dataset

    import warnings

    warnings.simplefilter("ignore")  # as the CLI does: library warnings are not the user's

    try:
        ds = read_dataset(path)
        arr = decode_pixels(ds, path)
    except CalcdetectError as exc:
        sys.stderr.write(f"calcdetect: error: {exc.message}\n")
        return 1
    print(json.dumps({"shape": list(arr.shape), "dtype": str(arr.dtype)}))
    return 0


def run_decode(case: "corpus.Case", *, timeout: float = 60.0) -> dict:
    """Run :func:`decode_worker` on one case in a subprocess and classify the outcome."""
    import os
    import subprocess

    if Path(case.path).is_dir() or case.path.suffix.lower() == ".png":
        return {"case": case.name, "outcome": "skipped", "seconds": 0.0, "detail": ""}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--decode-worker", str(case.path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"case": case.name, "outcome": "hang", "seconds": timeout, "detail": ""}
    err = proc.stderr.strip()
    lines = err.splitlines()
    if proc.returncode < 0:
        outcome, detail = "signal", f"signal {-proc.returncode}"
    elif "Traceback" in err:
        outcome, detail = "traceback", lines[-1]
    elif proc.returncode == 0 and proc.stdout.startswith("{") and not err:
        outcome, detail = "report", proc.stdout.strip()
    elif proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("calcdetect: error: "):
        outcome, detail = "refused", lines[0]
    else:
        outcome, detail = "other", f"exit {proc.returncode}: {err[:300]}"
    return {"case": case.name, "outcome": outcome, "seconds": round(time.perf_counter() - t0, 2),
            "detail": detail}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=120, help="random damaged DICOMs to generate")
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2, help="subprocesses run at once")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--full", action="store_true", help="also run the fixed corpus of nasty cases")
    ap.add_argument("--keep", metavar="DIR", help="write the corpus here and keep it")
    ap.add_argument("--json", metavar="FILE", help="write every outcome to this JSON file")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every non-report outcome")
    ap.add_argument("--layer", choices=["cli", "decode"], default="cli",
                    help="cli: `calcdetect detect` (load + detect + JSON); decode: only the shared "
                         "DICOM layer (read_dataset + decode_pixels) that every modality's loader uses")
    ap.add_argument("--decode-worker", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.decode_worker:
        return decode_worker(args.decode_worker)
    runner = run_case if args.layer == "cli" else run_decode

    tmp = None
    if args.keep:
        out = Path(args.keep)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="calcdetect-robust-")
        out = Path(tmp.name)
    cases = corpus.build_random_corpus(out / "random", args.count, seed=args.seed)
    if args.full:
        cases += corpus.build_corpus(out / "fixed", seed=args.seed)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda c: runner(c, timeout=args.timeout), cases))
    wall = time.perf_counter() - t0
    for case, res in zip(cases, results):
        res["modality"] = case.modality
        res["kind"] = case.kind
    n_random = args.count
    for i, res in enumerate(results):
        res["group"] = "random" if i < n_random else "fixed"
    print(f"layer {args.layer}: {wall:.0f} s wall with {args.jobs} jobs, "
          f"slowest case {max(r['seconds'] for r in results):.1f} s")
    groups = [("random", [r for r in results if r["group"] == "random"])]
    if args.full:
        groups += [("fixed", [r for r in results if r["group"] == "fixed"]), ("all", results)]
    for label, rows in groups:
        counts = Counter(r["outcome"] for r in rows)
        by_mod = Counter((r["modality"], r["outcome"]) for r in rows)
        mods_all = Counter(r["modality"] for r in rows)
        print(f"{label}: {len(rows)} damaged inputs ("
              + ", ".join(f"{m} {k}" for m, k in sorted(mods_all.items())) + ")")
        for key in ("report", "refused", "traceback", "hang", "signal", "other", "skipped"):
            if key == "skipped" and not counts[key]:
                continue
            mods = ", ".join(f"{m} {by_mod[(m, key)]}" for m in sorted(mods_all) if by_mod[(m, key)])
            print(f"  {key:10s} {counts[key]:4d}   {mods}")
    counts = Counter(r["outcome"] for r in results)
    if args.verbose:
        for r in results:
            if r["outcome"] not in ("report", "skipped"):
                print(f"  [{r['outcome']}] {r['case']}: {r['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if tmp is not None:
        tmp.cleanup()
    bad = counts["traceback"] + counts["hang"] + counts["signal"] + counts["other"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
