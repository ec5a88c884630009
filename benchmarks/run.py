#!/usr/bin/env python
"""calcdetect benchmarks: the segmentation core and the CT detector against the libraries
a user would otherwise pick, timed side by side in one run.

Usage (from the repository root)::

    python benchmarks/run.py                       # full run (about 5-10 minutes)
    python benchmarks/run.py --quick               # tiny inputs, a smoke run (seconds)
    python benchmarks/run.py --save                # also write benchmarks/results/<date>_<commit>.json
    python benchmarks/run.py --compare benchmarks/results/OLD.json   # change per benchmark
    python benchmarks/run.py --only ct-detect load # some groups only
    python benchmarks/run.py --ct-clutter 0        # the clean CT phantom of older result files

Groups: ``ct-loop`` (threshold -> label -> per-component measures on CT volumes of 100,
300 and 600 slices), ``ct-detect`` (the full :func:`calcdetect.detect` against the naive
scikit-image script and cc3d's bare label + statistics), ``xray-loop`` (radiographs 2000^2
and 3000^2), ``us-loop`` (640 x 480 ultrasound frames, frames per second) and ``load`` (a
300-slice DICOM series: :func:`calcdetect.load` against SimpleITK's ImageSeriesReader).
The synthetic CT carries ``--ct-clutter`` dense specks per slice and a cancellous-bone
texture (:data:`CT_CLUTTER`, 20: about 20 components per slice at 130 HU, calibrated so
the naive script takes about 4.5x cc3d, as in the issue's reference timings; the real
abdominal series has 58 per slice).

Each tool is timed ``--repeats`` times after one warm-up call; the tools of a benchmark are
interleaved (the order rotates every repeat) so that load from other processes hits all of
them alike.  Reported: the median, the relative spread (median absolute deviation /
median), the ratio calcdetect / peer (below 1 = calcdetect faster), and the extra peak
memory of one call, measured in a fresh subprocess from the kernel's high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``), so C and C++ allocations count too.
Timings are never asserted in tests; this script is where they live.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# benchmark this checkout's calcdetect, not whichever copy is installed
if (ROOT / "calcdetect" / "__init__.py").exists():
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import peers  # noqa: E402
import synthetic  # noqa: E402

SCHEMA = 1
THRESHOLD_HU = 130.0


@dataclass
class Bench:
    """One benchmark: an input builder and the tools timed on it."""

    id: str
    group: str
    describe: dict[str, Any]
    build: Callable[[], dict[str, Any]]
    tools: dict[str, Callable[[dict[str, Any]], Any]]
    frames: int = 0  # > 0: also report frames per second
    teardown: Callable[[dict[str, Any]], None] | None = None
    memory: bool = True
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- inputs
#: Dense specks per slice in the synthetic CT (see ``synthetic.synthetic_ct``), chosen so
#: that the naive scikit-image script takes about 4.5x bare cc3d as the issue's reference
#: timings say (2.5 s and 0.55 s): 20 gives about 20 components per slice at 130 HU, a
#: third of the 58 of the real abdominal series.  ``--ct-clutter 0`` is the clean phantom
#: of the earlier result files.
CT_CLUTTER = 20.0


def _ct_input(n_slices: int, size: int, clutter: float = CT_CLUTTER) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        import calcdetect

        ph = synthetic.synthetic_ct(n_slices, size, clutter=clutter)
        image = calcdetect.Image(ph.hu.astype(np.float32), ph.spacing_mm, "CT")
        return {"int16": ph.hu, "image": image, "hu": image.pixels, "spacing": ph.spacing_mm,
                "planted": len(ph.calcifications)}

    return build


def _loop_tools(names: tuple[str, ...], key: str = "hu", thr: float = THRESHOLD_HU) -> dict[str, Callable]:
    return {name: (lambda inp, f=peers.LOOPS[name]: f(inp[key], thr, inp["spacing"])) for name in names}


def _frames_tools(names: tuple[str, ...], thr: float) -> dict[str, Callable]:
    def make(f):
        return lambda inp: sum(f(frame, thr, inp["spacing"]) for frame in inp["frames"])

    return {name: make(peers.LOOPS[name]) for name in names}


def _skimage_script(inp: dict[str, Any]) -> int:
    """The naive scikit-image script a user writes for 'find the bright blobs'."""
    return peers.loop_skimage(inp["hu"], THRESHOLD_HU, inp["spacing"])


def _detect(inp: dict[str, Any]) -> int:
    import calcdetect

    return calcdetect.detect(inp["image"]).count


def _write_series(n_slices: int, size: int) -> Callable[[], dict[str, Any]]:
    """Write a synthetic CT series (uncompressed, one file per slice) to a temp folder."""

    def build() -> dict[str, Any]:
        from pydicom.uid import CTImageStorage, generate_uid

        from calcdetect.phantoms._dicom import new_dataset, set_grey_pixels, write

        ph = synthetic.synthetic_ct(n_slices, size)
        folder = Path(tempfile.mkdtemp(prefix="calcdetect-bench-series-"))
        series, study, frame = generate_uid(), generate_uid(), generate_uid()
        dz, dy, dx = ph.spacing_mm
        for k in range(n_slices):
            ds = new_dataset(CTImageStorage, "CT", "Bench^Phantom", study_uid=study, series_uid=series)
            ds.FrameOfReferenceUID = frame
            ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
            ds.ImagePositionPatient = [-200.0, -200.0, float(k * dz)]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [dy, dx]
            ds.SliceThickness = dz
            ds.RescaleIntercept, ds.RescaleSlope = 0, 1
            set_grey_pixels(ds, np.ascontiguousarray(ph.hu[k], dtype=np.int16))
            # file order differs from slice order, as on a real disk
            write(ds, folder / f"IM{(k * 7919) % n_slices:05d}.dcm")
        return {"folder": folder, "n_slices": n_slices}

    return build


def _load_calcdetect(inp: dict[str, Any]) -> tuple:
    import calcdetect

    return calcdetect.load(inp["folder"]).shape


def _load_sitk(inp: dict[str, Any]) -> tuple:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(inp["folder"])))
    image = reader.Execute()
    return sitk.GetArrayViewFromImage(image).shape


def _xray_detect_hook(inp: dict[str, Any]) -> int:
    import calcdetect

    image = calcdetect.Image(inp["hu"], inp["spacing"], "XRAY")
    return calcdetect.detect(image).count


def _us_detect_hook(inp: dict[str, Any]) -> int:
    import calcdetect

    total = 0
    for frame in inp["frames"]:
        total += calcdetect.detect(calcdetect.Image(frame.astype(np.float32), inp["spacing"], "US")).count
    return total


LOOP_3D = ("calcdetect", "skimage", "scipy", "cc3d", "sitk")
LOOP_2D = LOOP_3D + ("opencv",)


def benches(quick: bool, ct_clutter: float = CT_CLUTTER) -> list[Bench]:
    """The benchmark list (``quick``: tiny inputs with the same structure; ``ct_clutter``:
    dense specks per slice of the synthetic CT)."""
    size = 128 if quick else 512
    ct_sizes = (8, 16, 32) if quick else (100, 300, 600)
    detect_slices = 24 if quick else 300
    rg_sizes = (256, 384) if quick else (2000, 3000)
    us_frames, us_shape = (3, (120, 160)) if quick else (30, (480, 640))
    load_slices = 12 if quick else 300
    out: list[Bench] = []
    for n in ct_sizes:
        out.append(Bench(
            id=f"ct-loop-{n}x{size}x{size}", group="ct-loop",
            describe={"kind": "synthetic CT", "shape": [n, size, size], "dtype": "float32 HU (from int16)",
                      "threshold_hu": THRESHOLD_HU, "clutter_specks_per_slice": ct_clutter},
            build=_ct_input(n, size, ct_clutter), tools=_loop_tools(LOOP_3D),
            memory=(n == ct_sizes[1]),
        ))
    out.append(Bench(
        id=f"ct-detect-{detect_slices}x{size}x{size}", group="ct-detect",
        describe={"kind": "synthetic CT", "shape": [detect_slices, size, size], "clutter_specks_per_slice": ct_clutter,
                  "calcdetect": "calcdetect.detect(image) - body, bone, depth, labels, measures, distribution",
                  "skimage": "label + regionprops loop (naive script)",
                  "cc3d": "connected_components + statistics (bare)"},
        build=_ct_input(detect_slices, size, ct_clutter),
        tools={"calcdetect": _detect, "skimage": _skimage_script,
               "cc3d": lambda inp: peers.loop_cc3d(inp["hu"], THRESHOLD_HU, inp["spacing"])},
    ))
    for n in rg_sizes:
        b = Bench(
            id=f"xray-loop-{n}x{n}", group="xray-loop",
            describe={"kind": "synthetic radiograph", "shape": [n, n], "threshold": synthetic.RADIOGRAPH_THRESHOLD},
            build=lambda n=n: {"hu": synthetic.synthetic_radiograph(n), "spacing": (0.14, 0.14)},
            tools=_loop_tools(LOOP_2D, thr=synthetic.RADIOGRAPH_THRESHOLD), memory=False,
        )
        b.tools["calcdetect-detect"] = _xray_detect_hook
        out.append(b)
    b = Bench(
        id=f"us-loop-{us_frames}x{us_shape[0]}x{us_shape[1]}", group="us-loop",
        describe={"kind": "synthetic ultrasound frames", "frames": us_frames, "shape": list(us_shape),
                  "threshold": synthetic.US_THRESHOLD},
        build=lambda: {"frames": list(synthetic.synthetic_us_frames(us_frames, shape=us_shape)),
                       "spacing": (0.1, 0.1)},
        tools=_frames_tools(LOOP_2D, synthetic.US_THRESHOLD), frames=us_frames, memory=False,
    )
    b.tools["calcdetect-detect"] = _us_detect_hook
    out.append(b)
    out.append(Bench(
        id=f"load-series-{load_slices}x{size}x{size}", group="load",
        describe={"kind": "DICOM CT series, one uncompressed file per slice, warm page cache",
                  "slices": load_slices, "shape": [load_slices, size, size],
                  "sitk": "ImageSeriesReader + GetGDCMSeriesFileNames, array view (no copy)"},
        build=_write_series(load_slices, size),
        tools={"calcdetect": _load_calcdetect, "sitk": _load_sitk},
        teardown=lambda inp: shutil.rmtree(inp["folder"], ignore_errors=True),
    ))
    return out


# ----------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and library versions of this run."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    info["cores_logical"] = os.cpu_count()
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    versions = {}
    for mod, name in (("numpy", "numpy"), ("scipy", "scipy"), ("skimage", "scikit-image"), ("cv2", "opencv"),
                      ("cc3d", "connected-components-3d"), ("SimpleITK", "SimpleITK"), ("pydicom", "pydicom")):
        try:
            from importlib.metadata import version

            dist = {"skimage": "scikit-image", "cv2": "opencv-python-headless",
                    "cc3d": "connected-components-3d"}.get(mod, mod)
            versions[name] = version(dist)
        except Exception:  # noqa: BLE001
            versions[name] = None
    info["versions"] = versions
    return info


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None}


# ----------------------------------------------------------------------------- timing
def _rel_spread(times: list[float]) -> float:
    med = statistics.median(times)
    mad = statistics.median(abs(t - med) for t in times)
    return mad / med if med > 0 else 0.0


def time_bench(bench: Bench, inp: dict[str, Any], repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Warm up and time every tool of ``bench``, interleaved."""
    tools = {}
    runnable = []
    for name in bench.tools:
        base = name.split("-")[0]
        if not peers.available(base):
            tools[name] = {"skipped": f"{base} is not installed (pip install 'calcdetect[bench]')"}
            continue
        try:
            result = bench.tools[name](inp)  # warm-up (imports, caches)
        except Exception as exc:  # noqa: BLE001
            tools[name] = {"skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
            continue
        tools[name] = {"times": [], "cpu_times": [], "result": _jsonable(result)}
        runnable.append(name)
    for r in range(repeats):
        order = runnable[r % len(runnable):] + runnable[:r % len(runnable)] if runnable else []
        for name in order:
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            bench.tools[name](inp)
            tools[name]["times"].append(time.perf_counter() - t0)
            # CPU time of all threads: less sensitive than wall time to other processes
            # on a shared machine, but counts every thread of multithreaded tools
            tools[name]["cpu_times"].append(time.process_time() - c0)
    for name in runnable:
        t = tools[name]["times"]
        tools[name]["median_s"] = statistics.median(t)
        tools[name]["spread"] = _rel_spread(t)
        tools[name]["median_cpu_s"] = statistics.median(tools[name]["cpu_times"])
        if bench.frames:
            tools[name]["fps"] = bench.frames / tools[name]["median_s"]
        log(f"  {name:18s} {tools[name]['median_s']:9.4f} s  (+-{100 * tools[name]['spread']:.0f}%, "
            f"cpu {tools[name]['median_cpu_s']:.4f} s)  "
            f"result {tools[name]['result']}")
    return tools


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, tuple):
        return list(v)
    return v


def _hwm_kb() -> tuple[int, int] | None:
    try:
        vals = {}
        for line in open("/proc/self/status"):
            if line.startswith(("VmHWM", "VmRSS")):
                key, value = line.split(":")
                vals[key] = int(value.split()[0])
        return vals["VmHWM"], vals["VmRSS"]
    except (OSError, KeyError):
        return None


def child_memory(bench_id: str, tool: str, quick: bool, ct_clutter: float = CT_CLUTTER) -> dict[str, Any]:
    """In a fresh process: build the input, warm up, reset the high-water mark, run the
    tool once and report the extra peak resident memory (bytes)."""
    bench = next(b for b in benches(quick, ct_clutter) if b.id == bench_id)
    inp = bench.build()
    try:
        bench.tools[tool](inp)
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            before = _hwm_kb()
        except OSError:
            before = None
        if before is not None:
            bench.tools[tool](inp)
            after = _hwm_kb()
            return {"extra_bytes": (after[0] - before[1]) * 1024, "method": "VmHWM after - VmRSS before"}
        import tracemalloc

        tracemalloc.start()
        bench.tools[tool](inp)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"extra_bytes": peak, "method": "tracemalloc (NumPy/Python allocations only)"}
    finally:
        if bench.teardown:
            bench.teardown(inp)


def measure_memory(bench: Bench, tools: list[str], quick: bool, log: Callable[[str], None],
                   ct_clutter: float = CT_CLUTTER) -> dict[str, Any]:
    out = {}
    for tool in tools:
        cmd = ([sys.executable, str(HERE / "run.py"), "--child-memory", bench.id, tool, "--ct-clutter", str(ct_clutter)]
               + (["--quick"] if quick else []))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            out[tool] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
            continue
        out[tool] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  memory {tool:11s} {out[tool]['extra_bytes'] / 2**20:9.1f} MB extra peak")
    return out


# ----------------------------------------------------------------------------- run
def run(*, quick: bool = False, repeats: int | None = None, only: list[str] | None = None,
        memory: bool = True, log: Callable[[str], None] = print, ct_clutter: float = CT_CLUTTER) -> dict[str, Any]:
    """Run the benchmarks and return the results dict (see the module docstring).

    Parameters
    ----------
    quick : bool
        Tiny inputs (a smoke run).
    repeats : int, optional
        Timed repeats per tool (default 5, quick 3).
    only : list of str, optional
        Groups to run (default all).
    memory : bool
        Also measure the extra peak memory in subprocesses.
    log : callable
        Progress printer.
    ct_clutter : float
        Dense specks per slice of the synthetic CT (:data:`CT_CLUTTER`; 0: the clean
        phantom of the earlier result files).
    """
    import calcdetect

    repeats = repeats or (3 if quick else 5)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "calcdetect_version": getattr(calcdetect, "__version__", None),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": machine(),
        "settings": {"quick": quick, "repeats": repeats, "only": only, "memory": memory,
                     "command": " ".join(["python benchmarks/run.py"] + sys.argv[1:])},
        "benchmarks": {},
    }
    for bench in benches(quick, ct_clutter):
        if only and bench.group not in only:
            continue
        log(f"{bench.id}: building input")
        inp = bench.build()
        try:
            log(f"{bench.id}: timing {', '.join(bench.tools)} x {repeats}")
            tools = time_bench(bench, inp, repeats, log)
        finally:
            if bench.teardown:
                bench.teardown(inp)
        entry: dict[str, Any] = {"group": bench.group, "input": bench.describe, "tools": tools, "notes": bench.notes}
        if "planted" in inp:
            entry["input"] = dict(bench.describe, planted_calcifications=inp["planted"])
        ref = tools.get("calcdetect", {}).get("median_s")
        if ref:
            entry["ratios"] = {name: ref / t["median_s"] for name, t in tools.items()
                               if name != "calcdetect" and "median_s" in t}
        results_list = {t.get("result") for n, t in tools.items() if "result" in t and not n.endswith("detect")
                        and bench.group.endswith("loop")}
        if len(results_list) > 1:
            entry["notes"].append(f"tools disagree on the number of components: {sorted(map(str, results_list))}")
        del inp
        gc.collect()
        if memory and bench.memory:
            mem_tools = [n for n, t in tools.items() if "median_s" in t]
            entry["memory"] = measure_memory(bench, mem_tools, quick, log, ct_clutter)
            if bench.group.startswith("ct"):
                int16 = int(np.prod(bench.describe["shape"])) * 2
                entry["memory_vs_int16_volume"] = {
                    n: m["extra_bytes"] / int16 for n, m in entry["memory"].items() if "extra_bytes" in m}
        results["benchmarks"][bench.id] = entry
    try:
        results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    results["growth"] = growth(results)
    results["targets"] = targets(results)
    return results


def growth(results: dict[str, Any]) -> dict[str, Any]:
    """How the CT loop time grows with the number of slices: ms per slice and the
    log-log slope (1 = linear)."""
    loops = [(b["input"]["shape"][0], b) for b in results["benchmarks"].values() if b["group"] == "ct-loop"]
    if len(loops) < 2:
        return {}
    loops.sort(key=lambda x: x[0])
    out = {}
    tools = set.intersection(*[{n for n, t in b["tools"].items() if "median_s" in t} for _, b in loops])
    for tool in sorted(tools):
        n = np.array([s for s, _ in loops], float)
        t = np.array([b["tools"][tool]["median_s"] for _, b in loops])
        slope = float(np.polyfit(np.log(n), np.log(t), 1)[0])
        out[tool] = {"slices": n.astype(int).tolist(), "ms_per_slice": (1000 * t / n).round(3).tolist(),
                     "loglog_slope": round(slope, 3)}
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The performance targets of issue 6 as measured in this run."""
    out: dict[str, Any] = {}
    for b in results["benchmarks"].values():
        if b["group"] == "ct-detect" and "ratios" in b:
            if "skimage" in b["ratios"]:
                out["detect_vs_skimage_script"] = {"ratio": b["ratios"]["skimage"], "target": 0.5}
            if "cc3d" in b["ratios"]:
                out["detect_vs_cc3d_bare"] = {"ratio": b["ratios"]["cc3d"], "target": 1.5}
            mem = b.get("memory_vs_int16_volume", {}).get("calcdetect")
            if mem is not None:
                out["detect_extra_memory_vs_int16"] = {"ratio": mem, "target": 8.0}
        if b["group"] == "load" and "ratios" in b and "sitk" in b["ratios"]:
            out["load_vs_sitk"] = {"ratio": b["ratios"]["sitk"], "target": 1.0}
    for v in out.values():
        v["met"] = bool(v["ratio"] <= v["target"])
    return out


# ----------------------------------------------------------------------------- output
def table(results: dict[str, Any]) -> str:
    """Markdown tables of a results dict."""
    m = results["machine"]
    lines = [
        f"calcdetect {results.get('calcdetect_version')} @ {str(results['git'].get('commit'))[:10]}"
        f"{' (dirty)' if results['git'].get('dirty') else ''}, {results['created_utc']}",
        f"machine: {m.get('cpu')}, {m.get('cores_usable', m.get('cores_logical'))} usable cores, "
        f"{m.get('memory_gb')} GB, Python {m.get('python')}, NumPy {m['versions'].get('numpy')}, "
        f"load average at start {m.get('load_average_at_start')}, at end {m.get('load_average_at_end')}",
        f"settings: {results['settings']['command']} (median of {results['settings']['repeats']} repeats)",
        "",
        "| benchmark | tool | median (s) | spread | cpu (s) | calcdetect / tool | extra peak memory | result |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for bid, b in results["benchmarks"].items():
        for name, t in b["tools"].items():
            if "median_s" not in t:
                lines.append(f"| {bid} | {name} | - | - | - | - | - | {t.get('skipped', '')} |")
                continue
            ratio = "1 (reference)" if name == "calcdetect" else (
                f"{b['ratios'][name]:.2f}" if name in b.get("ratios", {}) else "-")
            mem = b.get("memory", {}).get(name, {}).get("extra_bytes")
            mem_s = "-" if mem is None else f"{mem / 2**20:.0f} MB"
            if mem is not None and name in b.get("memory_vs_int16_volume", {}):
                mem_s += f" ({b['memory_vs_int16_volume'][name]:.1f}x int16)"
            fps = f", {t['fps']:.0f} fps" if "fps" in t else ""
            cpu = f"{t['median_cpu_s']:.4f}" if "median_cpu_s" in t else "-"
            lines.append(f"| {bid} | {name} | {t['median_s']:.4f}{fps} | {100 * t['spread']:.0f}% | {cpu} | {ratio} | "
                         f"{mem_s} | {t.get('result')} |")
        for note in b.get("notes", []):
            lines.append(f"| {bid} | *note* | | | | | | {note} |")
    if results.get("growth"):
        lines += ["", "| CT loop growth | " + " | ".join(
            f"ms/slice @ {n}" for n in next(iter(results["growth"].values()))["slices"]) + " | log-log slope |",
                  "|---|" + "---:|" * (len(next(iter(results["growth"].values()))["slices"]) + 1)]
        for tool, g in results["growth"].items():
            lines.append(f"| {tool} | " + " | ".join(f"{v:.2f}" for v in g["ms_per_slice"]) +
                         f" | {g['loglog_slope']:.2f} |")
    if results.get("targets"):
        lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
        for name, v in results["targets"].items():
            lines.append(f"| {name} | {v['ratio']:.2f} | <= {v['target']} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines)


def _input_key(describe: dict[str, Any] | None) -> dict[str, Any]:
    """What makes two benchmark inputs the same: their description, without the words
    about the tools, and with the clean CT of files written before the clutter option."""
    d = dict(describe or {})
    for k in ("calcdetect", "skimage", "cc3d", "sitk"):
        d.pop(k, None)
    if d.get("kind") == "synthetic CT":
        d.setdefault("clutter_specks_per_slice", 0.0)
    return d


def compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, int]:
    """Change of every (benchmark, tool) median between two result files.

    A change is beyond the noise when it exceeds ``max(10%, 3 x the larger relative
    spread of the two runs)``.  A calcdetect row is a REGRESSION only when both its time
    and its time relative to the peers of the same run (the median over peers of the
    change of calcdetect / peer) moved beyond the noise: a machine that is busier in one
    run slows the peers too, and the ratio cancels that.  Returns the text and the
    number of regressions.
    """
    lines = ["| benchmark | tool | old (s) | new (s) | change | vs peers | noise | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    regressions = 0
    for bid, nb in new["benchmarks"].items():
        ob = old.get("benchmarks", {}).get(bid)
        if ob is None:
            lines.append(f"| {bid} | | | | | | | new benchmark |")
            continue
        if _input_key(ob.get("input")) != _input_key(nb.get("input")):
            lines.append(f"| {bid} | | | | | | | input differs (e.g. --ct-clutter): not compared |")
            continue
        both = [t for t in nb["tools"] if "median_s" in nb["tools"][t] and "median_s" in ob["tools"].get(t, {})]
        for tool in both:
            nt, ot = nb["tools"][tool], ob["tools"][tool]
            change = nt["median_s"] / ot["median_s"] - 1.0
            noise = max(0.10, 3.0 * max(nt.get("spread", 0.0), ot.get("spread", 0.0)))
            rel = None
            if tool.startswith("calcdetect"):
                peers_ = [p for p in both if not p.startswith("calcdetect")]
                if peers_:
                    rel = float(np.median([change_ratio(nb, ob, tool, p) for p in peers_])) - 1.0
            if change > noise:
                if not tool.startswith("calcdetect"):
                    verdict = "slower (peer: machine?)"
                elif rel is not None and rel <= noise:
                    verdict = "slower, as were the peers (machine)"
                else:
                    verdict = "REGRESSION"
                    regressions += 1
            elif change < -noise:
                verdict = "faster"
            else:
                verdict = "same (within noise)"
            rel_s = "" if rel is None else f"{100 * rel:+.1f}%"
            lines.append(f"| {bid} | {tool} | {ot['median_s']:.4f} | {nt['median_s']:.4f} | "
                         f"{100 * change:+.1f}% | {rel_s} | {100 * noise:.0f}% | {verdict} |")
    if old.get("git", {}).get("commit") or new.get("git", {}).get("commit"):
        lines.append("")
        lines.append(f"old: {str(old.get('git', {}).get('commit'))[:10]} on {old.get('machine', {}).get('cpu')}; "
                     f"new: {str(new.get('git', {}).get('commit'))[:10]} on {new.get('machine', {}).get('cpu')}")
        if old.get("machine", {}).get("cpu") != new.get("machine", {}).get("cpu"):
            lines.append("WARNING: different CPUs - compare the ratios to the peers, not the seconds")
    return "\n".join(lines), regressions


def change_ratio(nb: dict[str, Any], ob: dict[str, Any], tool: str, peer: str) -> float:
    """(tool / peer in the new run) / (tool / peer in the old run)."""
    new_r = nb["tools"][tool]["median_s"] / nb["tools"][peer]["median_s"]
    old_r = ob["tools"][tool]["median_s"] / ob["tools"][peer]["median_s"]
    return new_r / old_r


def default_result_path(results: dict[str, Any]) -> Path:
    stamp = results["created_utc"].replace(":", "").replace("-", "").replace("+0000", "Z")
    commit = (results["git"].get("commit") or "nogit")[:8]
    quick = "-quick" if results["settings"]["quick"] else ""
    return HERE / "results" / f"{stamp}_{commit}{quick}.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny inputs (a smoke run)")
    ap.add_argument("--repeats", type=int, help="timed repeats per tool (default 5, --quick 3)")
    ap.add_argument("--only", nargs="+", metavar="GROUP",
                    choices=["ct-loop", "ct-detect", "xray-loop", "us-loop", "load"], help="groups to run")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--save", nargs="?", const="", metavar="FILE",
                    help="write the results JSON (default benchmarks/results/<date>_<commit>.json)")
    ap.add_argument("--compare", metavar="OLD.json", help="print the change against an earlier result file")
    ap.add_argument("--against", metavar="NEW.json", help="with --compare: compare two files, run nothing")
    ap.add_argument("--strict", action="store_true", help="exit 1 when --compare flags a calcdetect regression")
    ap.add_argument("--ct-clutter", type=float, default=CT_CLUTTER, metavar="N",
                    help=f"dense specks per slice of the synthetic CT (default {CT_CLUTTER:g}; 0: the clean "
                         "phantom of result files written before this option)")
    ap.add_argument("--child-memory", nargs=2, metavar=("BENCH", "TOOL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child_memory:
        print(json.dumps(child_memory(args.child_memory[0], args.child_memory[1], args.quick, args.ct_clutter)))
        return 0
    if args.compare and args.against:
        text, bad = compare(json.loads(Path(args.compare).read_text()), json.loads(Path(args.against).read_text()))
        print(text)
        return 1 if (bad and args.strict) else 0
    results = run(quick=args.quick, repeats=args.repeats, only=args.only, memory=not args.no_memory,
                  ct_clutter=args.ct_clutter)
    print()
    print(table(results))
    if args.save is not None:
        path = Path(args.save) if args.save else default_result_path(results)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=_jsonable) + "\n")
        print(f"\nsaved {path}")
    if args.compare:
        text, bad = compare(json.loads(Path(args.compare).read_text()), results)
        print("\n" + text)
        if bad and args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
