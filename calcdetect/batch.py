"""Folder runs: ``calcdetect annotate FOLDER -o OUT``.

:func:`find_inputs` walks a folder and turns it into jobs (one per CT series, per other
DICOM file, per PNG/JPEG/TIFF file); :func:`annotate` runs them over a
:class:`concurrent.futures.Executor` -- a local process pool by default, or any other
executor such as a Dask cluster's (``client.get_executor()``) -- and writes, in OUT:

- per input: ``<name>.json`` (the report) and ``<name>.png`` (the overlay picture),
  where ``<name>`` mirrors the input's path relative to FOLDER;
- per run: ``findings.csv``, ``summary.csv``, ``errors.csv`` and ``index.html``.

Each task returns plain data (the report dict and an error record) to the calling
process, which writes the tables; workers write the per-input files, so with a cluster
the output folder must be shared.  Every file is written atomically; inputs are only
ever opened for reading.  See docs/annotate.md and docs/cluster.md.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import sys
import time
import traceback
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ._threads import parallel_each
from .errors import CalcdetectError, InvalidParameterError
from .image import MODALITIES, USER_SPACING
from .io.raster import RASTER_SUFFIXES
from .outputs import write_text_atomic

if TYPE_CHECKING:  # annotations only
    from .report import Report

__all__ = [
    "Job",
    "InputError",
    "AnnotateResult",
    "find_inputs",
    "annotate",
    "run_job",
    "report_from_dict",
    "add_annotate_parser",
    "read_sidecar",
]

#: Files that are documentation or metadata, never images: skipped without an error.
IGNORED_SUFFIXES = (".json", ".md", ".rst", ".html", ".htm", ".csv", ".part")
IGNORED_NAMES = ("DICOMDIR", "README", "LICENSE", "LICENCE", "NOTICE", "Thumbs.db")
#: Marker file written into every output folder; folders holding it are never walked.
OUTPUT_MARKER = ".calcdetect-output"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


# ============================================================================ data
@dataclass(frozen=True)
class Job:
    """One unit of work: a CT series, a DICOM file or a raster file.

    Attributes
    ----------
    name : str
        Output name relative to OUT, ``/``-separated, without suffix (``<name>.json``,
        ``<name>.png``).
    input : str
        The input as shown in tables: its path relative to FOLDER (a series: its folder,
        plus the series number when a folder holds several).
    kind : {"series", "dicom", "raster"}
    paths : tuple of str
        Absolute paths of the files read (every slice of a series).
    modality : str or None
        From the DICOM header or the raster sidecar; ``None`` when unknown.
    series_uid : str or None
    sidecar : str or None
        The raster's sidecar JSON, when there is one.
    series_tag : str or None
        A series' short name (``series-<SeriesNumber>``), used when a folder holds
        several series.
    """

    name: str
    input: str
    kind: str
    paths: tuple[str, ...]
    modality: str | None = None
    series_uid: str | None = None
    sidecar: str | None = None
    series_tag: str | None = None


@dataclass
class InputError:
    """A failed input: what it was, the error type and a one-line reason."""

    input: str
    error_type: str
    reason: str
    name: str | None = None


@dataclass
class AnnotateResult:
    """What :func:`annotate` did.

    Attributes
    ----------
    out : Path
        The output folder.
    reports : dict
        Job name -> report dict, for every input that has a report (processed now or
        skipped because it was up to date).
    errors : list of InputError
    processed, skipped : list of str
        Job names processed in this run / skipped as up to date.
    """

    out: Path
    reports: dict[str, dict] = field(default_factory=dict)
    errors: list[InputError] = field(default_factory=list)
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    n_inputs: int = 0

    @property
    def exit_code(self) -> int:
        """0 when every input succeeded, 1 when some failed."""
        return 1 if self.errors else 0


# ============================================================================ walking
def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _ignored(path: Path) -> bool:
    if path.suffix.lower() in IGNORED_SUFFIXES:
        return True
    stem = path.name.split(".")[0]
    return path.name in IGNORED_NAMES or stem.upper() in IGNORED_NAMES


def _walk(folder: Path, exclude: Iterable[Path]) -> list[Path]:
    """Files below ``folder``: not hidden, not in an output folder, not in ``exclude``."""
    exclude = [Path(e).resolve() for e in exclude]
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        root_p = Path(root)
        keep = []
        for d in sorted(dirs):
            full = root_p / d
            if d.startswith(".") or (full / OUTPUT_MARKER).exists():
                continue
            if any(full.resolve() == e for e in exclude):
                continue
            keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if f.startswith("."):
                continue
            p = root_p / f
            if p.is_file():
                out.append(p)
    return out


def read_sidecar(image_path: str | Path) -> tuple[dict[str, Any], Path] | None:
    """Read the metadata sidecar of a raster image, if there is one.

    The sidecar is ``NAME.json`` next to ``NAME.png`` (``.jpg``, ``.tif``, ...) and holds
    ``{"modality": "US", "pixel_size_mm": 0.1}``; ``pixel_size_mm`` may also be
    ``[row, col]``, and a radiograph that stores dense tissue as dark says
    ``"invert": true``.  All keys are optional.

    Returns
    -------
    (dict, Path) or None
        ``{"modality": ..., "pixel_size_mm": ..., "invert": ...}`` (validated, only the keys
        given) and the sidecar path.

    Raises
    ------
    InvalidParameterError
        The sidecar is not valid JSON or its values are wrong.
    """
    image_path = Path(image_path)
    side = image_path.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError) as exc:
        raise InvalidParameterError(f"sidecar is not valid JSON ({type(exc).__name__}: {exc})",
                                    path=side, fix='write e.g. {"modality": "US", "pixel_size_mm": 0.1}') from None
    if not isinstance(data, dict):
        raise InvalidParameterError("sidecar must hold a JSON object", path=side,
                                    fix='write e.g. {"modality": "US", "pixel_size_mm": 0.1}')
    out: dict[str, Any] = {}
    if data.get("modality") is not None:
        mod = str(data["modality"]).upper()
        if mod in ("XR", "CR", "DX", "RX", "MG"):
            mod = "XRAY"
        if mod not in ("XRAY", "US"):
            raise InvalidParameterError(f"sidecar modality {data['modality']!r} is not XRAY or US",
                                        path=side, fix="raster images must be XRAY or US; CT must be DICOM")
        out["modality"] = mod
    ps = data.get("pixel_size_mm")
    if ps is not None:
        values = ps if isinstance(ps, (list, tuple)) else [ps]
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            values = []
        if len(values) not in (1, 2) or not all(v > 0 and v < 1e3 for v in values):
            raise InvalidParameterError(f"sidecar pixel_size_mm {ps!r} must be a positive number or [row, col]",
                                        path=side, fix='e.g. "pixel_size_mm": 0.1')
        out["pixel_size_mm"] = values[0] if len(values) == 1 else (values[0], values[1])
    if data.get("invert") is not None:
        if not isinstance(data["invert"], bool):
            raise InvalidParameterError(f"sidecar invert {data['invert']!r} must be true or false", path=side,
                                        fix='e.g. "invert": true for a radiograph stored dense = dark')
        out["invert"] = data["invert"]
    return out, side


def _header(path: Path):
    from .io.dicom import read_header

    try:
        return path, read_header(path, stop_before_pixels=True), None
    except CalcdetectError as exc:
        return path, None, exc


def find_inputs(folder: str | Path, *, exclude: Iterable[str | Path] = ()) -> tuple[list[Job], list[InputError]]:
    """Walk ``folder`` recursively and group its files into jobs.

    Rules
    -----
    - Hidden files and folders, folders written by ``annotate`` (they hold a
      ``.calcdetect-output`` marker) and ``exclude`` are skipped.
    - JSON (raster sidecars, reports), Markdown/HTML/CSV files and ``DICOMDIR``,
      ``README*``, ``LICENSE*`` are documentation or metadata: skipped silently.
    - PNG/JPEG/TIFF files are one job each; their modality and pixel size come from a
      sidecar ``NAME.json`` (see :func:`read_sidecar`) or the run's options.
    - DICOM files (recognised by content) are grouped by SeriesInstanceUID (see
      :func:`calcdetect.io.ct.series_key`).  A CT series of several files is one job;
      every other DICOM file is a job of its own.  When a series' files repeat a
      SOPInstanceUID (a copied series), it is split by folder.
    - Any other file is an error ("not DICOM, PNG, JPEG, TIFF or BMP"), as is a DICOM file
      whose header cannot be read.

    Parameters
    ----------
    folder : path
    exclude : paths, optional
        Folders not to walk (the output folder when it lies inside ``folder``).

    Returns
    -------
    jobs : list of Job
        Sorted by name; names are unique.
    errors : list of InputError
        Files that cannot be inputs, with the reason.
    """
    from .io.ct import series_key

    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidParameterError("is not a folder", path=folder, fix="give the folder to annotate")
    files = _walk(folder, exclude)
    jobs: list[Job] = []
    errors: list[InputError] = []

    def rel(p: Path) -> str:
        return p.relative_to(folder).as_posix()

    others: list[Path] = []
    for p in files:
        if p.suffix.lower() in RASTER_SUFFIXES:
            sidecar = p.with_suffix(".json")
            jobs.append(Job(name=rel(p), input=rel(p), kind="raster", paths=(str(p.resolve()),),
                            sidecar=str(sidecar.resolve()) if sidecar.is_file() else None))
        elif not _ignored(p):
            others.append(p)
    # DICOM headers, read in threads (I/O bound), kept in file order
    groups: dict[str, list[tuple[Path, Any]]] = {}
    headers: list[Any] = [None] * len(others)

    def read(i: int) -> None:
        headers[i] = _header(others[i])

    parallel_each(read, len(others), max(1, min(8, (os.cpu_count() or 1) * 2)))
    for p, ds, err in headers:
        if err is not None:
            if "not a DICOM file" in err.reason:  # the error load() gives for it
                errors.append(InputError(rel(p), "UnreadableFileError",
                                         "not a DICOM, PNG, JPEG, TIFF or BMP file"))
            else:
                errors.append(InputError(rel(p), type(err).__name__, _reason(err)))
            continue
        if _is_dicomdir(ds):
            continue
        groups.setdefault(series_key(ds), []).append((p, ds))
    for key, items in groups.items():
        modality = str(items[0][1].get("Modality", "") or "").upper()
        is_ct = modality == "CT" and all(
            "Rows" in ds and int(ds.get("NumberOfFrames", 1) or 1) == 1 for _, ds in items)
        subgroups = [items]
        sops = [str(ds.get("SOPInstanceUID", "")) for _, ds in items]
        if is_ct and len(set(sops)) < len(sops):
            parts: dict[Path, list] = {}
            for p, ds in items:
                parts.setdefault(p.parent, []).append((p, ds))
            subgroups = list(parts.values())
        for sub in subgroups:
            if is_ct and len(sub) > 1:
                jobs.append(_series_job(folder, key, sub))
                continue
            for p, ds in sub:
                m = str(ds.get("Modality", "") or "").upper() or None
                jobs.append(Job(name=rel(p), input=rel(p), kind="dicom", paths=(str(p.resolve()),),
                                modality=_norm_modality(m),
                                series_uid=str(ds.get("SeriesInstanceUID", "") or "") or None))
    # series names: the common folder; numbered when a folder holds several series
    jobs = _unique_names(jobs)
    jobs.sort(key=lambda j: j.name)
    errors.sort(key=lambda e: e.input)
    return jobs, errors


def _is_dicomdir(ds: Any) -> bool:
    meta = getattr(ds, "file_meta", None)
    media = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
    return MEDIA_STORAGE_DIRECTORY in (media, str(ds.get("SOPClassUID", "") or ""))


def _norm_modality(m: str | None) -> str | None:
    if m is None:
        return None
    from .io.dicom import RADIOGRAPH_MODALITIES

    if m in RADIOGRAPH_MODALITIES:
        return "XRAY"
    return m if m in MODALITIES else m


def _series_job(folder: Path, key: str, items: list[tuple[Path, Any]]) -> Job:
    paths = sorted(p for p, _ in items)
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    rel = common.relative_to(folder).as_posix()
    ds = items[0][1]
    number = ds.get("SeriesNumber")
    tag = f"series-{number}" if number not in (None, "") else f"series-{_short(key)}"
    uid = str(ds.get("SeriesInstanceUID", "") or "") or None
    return Job(name=rel if rel != "." else tag, input=rel if rel != "." else f". [{tag}]",
               kind="series", paths=tuple(str(p.resolve()) for p in paths), modality="CT",
               series_uid=uid, series_tag=tag)


def _short(key: str) -> str:
    import hashlib

    return hashlib.sha1(key.encode()).hexdigest()[:8]


def _unique_names(jobs: list[Job]) -> list[Job]:
    """Make names unique: folders holding several series name each by its number."""
    from collections import Counter
    from dataclasses import replace

    counts = Counter(j.name for j in jobs)
    out = []
    for j in jobs:
        if j.kind == "series" and counts[j.name] > 1 and j.name != j.series_tag:
            j = replace(j, name=f"{j.name}/{j.series_tag}", input=f"{j.input} [{j.series_tag}]")
        out.append(j)
    counts = Counter(j.name for j in out)
    seen: Counter = Counter()
    final = []
    for j in out:
        if counts[j.name] > 1:
            seen[j.name] += 1
            if seen[j.name] > 1:
                j = replace(j, name=f"{j.name}-{seen[j.name]}")
        final.append(j)
    return final


# ============================================================================ one job
def _reason(exc: BaseException, job: Job | None = None) -> str:
    """One line: the reason and fix of a calcdetect error, else type and first line.

    The input column already names the job's input; the reason names any other file
    the error concerns: one slice of a series job (the input is the series folder, which
    does not say which slice is damaged), or an output that cannot be written."""
    if isinstance(exc, CalcdetectError):
        text = exc.reason + (f" -- {exc.fix}" if exc.fix else "")
        if job is not None and exc.path and job.paths:
            where = os.path.abspath(exc.path)
            inputs = {os.path.abspath(p) for p in job.paths}
            root = os.path.commonpath([os.path.dirname(p) for p in inputs])
            if where in inputs and len(inputs) > 1:
                text = f"{os.path.relpath(where, root)}: {text}"
            elif where not in inputs and where != root:
                text = f"{exc.path}: {text}"
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        text += " (internal error; rerun with --debug and report it)"
    return " ".join(text.split())[:500]


def _split_options(detect_options: Mapping[str, Any] | None, modality: str) -> dict[str, Any]:
    if not detect_options:
        return {}
    if all(k in MODALITIES for k in detect_options):
        return dict(detect_options.get(modality) or {})
    return dict(detect_options)


def _job_load_options(job: Job, load_options: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The load options that apply to ``job``, and the ``spacing_source`` of its pixel
    size.  Raster files take modality, inversion and pixel size from their sidecar, else
    from the options; DICOM inputs ignore ``invert`` (MONOCHROME1 says it) and, when they
    name their modality, ``modality``."""
    opts = {k: v for k, v in dict(load_options or {}).items() if v is not None and k != "series_uid"}
    note = USER_SPACING
    if job.kind == "raster":
        opts.pop("frame", None)
        side = read_sidecar(job.paths[0])
        if side is not None:
            meta, side_path = side
            opts.update({k: v for k, v in meta.items() if k in ("modality", "invert", "pixel_size_mm")})
            if "pixel_size_mm" in meta:
                note = f"sidecar {side_path.name}"
    else:
        opts.pop("invert", None)
        if job.modality in MODALITIES:
            opts.pop("modality", None)  # the file says it itself
    return opts, note


def _load(job: Job, load_options: Mapping[str, Any]):
    """Load a job's image with the options that apply to it (:func:`_job_load_options`);
    DICOM inputs keep their own spacing, and a pixel size only fills in one that a
    file lacks (a radiograph with none)."""
    from .io import _apply_pixel_size, load

    opts, note = _job_load_options(job, load_options)
    pixel_size = opts.pop("pixel_size_mm", None)
    if job.kind == "raster":
        image = load(job.paths[0], pixel_size_mm=pixel_size, **opts)
        if pixel_size is not None:
            image.spacing_source = note
        return image
    if job.kind == "series":
        from .io.ct import load_ct_series
        from .io.dicom import read_header

        files = [(Path(p), read_header(p, stop_before_pixels=True)) for p in job.paths]
        folder = Path(os.path.commonpath([str(Path(p).parent) for p in job.paths]))
        image = load_ct_series(folder, files=files, budget=opts.get("max_pixels"))
    else:
        image = load(job.paths[0], **opts)
    if pixel_size is not None and image.spacing_mm is None:
        image = _apply_pixel_size(image, pixel_size)
    return image


def _applied_load_options(job: Job, load_options: Mapping[str, Any] | None,
                          spacing_from_file: bool) -> dict[str, Any]:
    """The load options that decide ``job``'s result, as plain JSON data.

    Recorded in each report as ``"load_options"`` and compared on resuming, so that a
    changed ``--pixel-size``, ``--modality`` or ``--invert`` redoes exactly the inputs it
    changes: those of :func:`_job_load_options`, less a pixel size that a DICOM input
    did not use (``spacing_from_file``: it has a spacing of its own) and ``invert=False``.
    """
    opts, _ = _job_load_options(job, load_options)
    if job.kind != "raster" and spacing_from_file:
        opts.pop("pixel_size_mm", None)
    if not opts.get("invert"):
        opts.pop("invert", None)
    return _plain(opts)


def _plain(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as the JSON report holds them (tuples become lists), for comparing."""
    return json.loads(json.dumps(dict(options)))


def run_job(
    job: Job,
    out: str,
    load_options: Mapping[str, Any] | None = None,
    detect_options: Mapping[str, Any] | None = None,
    write_outputs: bool = True,
    dicom_outputs: Sequence[str] = (),
) -> dict[str, Any]:
    """Process one job: load, detect, write ``<name>.json`` and ``<name>.png``.

    Runs in a worker process (or a Dask worker); takes and returns plain data only.

    Parameters
    ----------
    job : Job
    out : str
        Output folder (must be visible to the worker).
    load_options : dict, optional
        Keyword arguments of :func:`calcdetect.load` (``pixel_size_mm``, ``modality``,
        ``frame``, ``max_pixels``).
    detect_options : dict, optional
        Keyword arguments of :func:`calcdetect.detect`, either flat or per modality
        (``{"CT": {...}, "XRAY": {...}, "US": {...}}``).
    write_outputs : bool
        Write the JSON and PNG (the picture is written first, so an existing JSON means
        both are complete).
    dicom_outputs : sequence of {"sr", "seg"}
        Also write a DICOM SR measurement report and/or SEG beside the JSON
        (``<name>.sr.dcm``, ``<name>.seg.dcm``; DICOM inputs only, needs
        ``calcdetect[dicom-out]``).  A failure is a warning in the report, listed in
        its ``dicom_outputs_error``; the JSON and picture are still written.

    Returns
    -------
    dict
        ``{"name", "input", "report" (dict or None), "error" (dict or None), "seconds"}``.
    """
    from .detect import detect

    t0 = time.perf_counter()
    result: dict[str, Any] = {"name": job.name, "input": job.input, "report": None, "error": None}
    try:
        image = _load(job, load_options or {})
        report = detect(image, **_split_options(detect_options, image.modality))
        data = report.to_dict()
        data["input"] = job.input
        own_spacing = image.spacing_mm is not None and image.spacing_source != USER_SPACING
        data["load_options"] = _applied_load_options(job, load_options, own_spacing)
        data["detect_options"] = _plain(_split_options(detect_options, image.modality))
        if write_outputs:
            from .render import save_overlay

            base = Path(out) / job.name
            if dicom_outputs:
                _write_dicom(job, image, report, base, dicom_outputs, data)
            save_overlay(image, report, base.parent / (base.name + ".png"))
            write_text_atomic(base.parent / (base.name + ".json"), json.dumps(data, indent=2, allow_nan=False) + "\n")
        result["report"] = data
    except MemoryError:
        result["error"] = {"error_type": "MemoryError",
                           "reason": "out of memory -- run fewer jobs at once (--jobs) or use a larger machine"}
    except Exception as exc:  # isolate every failure to its input
        result["error"] = {"error_type": type(exc).__name__, "reason": _reason(exc, job)}
        if os.environ.get("CALCDETECT_DEBUG"):
            result["error"]["traceback"] = traceback.format_exc()
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _write_dicom(job: Job, image, report, base: Path, kinds: Sequence[str], data: dict[str, Any]) -> None:
    """Write the requested DICOM SR/SEG for one input; record the files or the reason."""
    data["dicom_outputs_requested"] = sorted(kinds)
    data["dicom_outputs"] = []
    if job.kind == "raster":
        data["warnings"].append("DICOM SR/SEG not written: the input is not DICOM")
        return
    try:
        from .dicom_out import write_dicom_outputs

        written = write_dicom_outputs(image, report, base.parent, base.name, sr="sr" in kinds, seg="seg" in kinds)
    except Exception as exc:  # the JSON and picture still stand; say why DICOM did not
        data["dicom_outputs_error"] = _reason(exc)
        data["warnings"].append(f"DICOM SR/SEG not written: {_reason(exc)}")
        return
    data["dicom_outputs"] = [p.name for p in written]
    if "seg" in kinds and not any(p.name.endswith(".seg.dcm") for p in written):
        data["warnings"].append("DICOM SEG not written: there is no finding to segment")


# ============================================================================ resuming
def report_from_dict(data: Mapping[str, Any]) -> Report:
    """Rebuild a :class:`~calcdetect.report.Report` (without its label image) from its
    JSON dict, so tables can be made from reports written by an earlier run."""
    import dataclasses

    from .report import Finding, Report

    fnames = {f.name for f in dataclasses.fields(Finding)} - {"extra"}
    findings = []
    for fd in data.get("findings") or []:
        kw = {k: fd.get(k) for k in fnames}
        kw["extra"] = {k: v for k, v in fd.items() if k not in fnames}
        findings.append(Finding(**kw))
    known = {"source", "modality", "shape", "spacing_mm", "spacing_source", "count", "warnings",
             "findings", "distribution", "scores", "parameters", "calcdetect_version", "input"}
    return Report(
        source=data.get("source", ""),
        modality=data.get("modality", ""),
        shape=list(data.get("shape") or []),
        spacing_mm=data.get("spacing_mm"),
        findings=findings,
        warnings=list(data.get("warnings") or []),
        distribution=dict(data.get("distribution") or {}),
        scores=data.get("scores"),
        parameters=dict(data.get("parameters") or {}),
        spacing_source=data.get("spacing_source"),
        extra={k: v for k, v in data.items() if k not in known},
    )


def _up_to_date(job: Job, out: Path, detect_options: Mapping[str, Any] | None,
                dicom_outputs: Sequence[str] = (),
                load_options: Mapping[str, Any] | None = None) -> dict | None:
    """The earlier report of ``job`` when its JSON and PNG exist, are newer than every
    input file (and sidecar) and were made with the same detector and load options."""
    base = out / job.name
    js, png = base.parent / (base.name + ".json"), base.parent / (base.name + ".png")
    try:
        t_json = js.stat().st_mtime
        if not png.exists():
            return None
        sources = list(job.paths) + ([job.sidecar] if job.sidecar else [])
        if any(os.stat(p).st_mtime >= t_json for p in sources):
            return None
        data = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    asked = _split_options(detect_options, data.get("modality", ""))
    if "detect_options" in data:  # the options the report was made with, as given
        if _plain(asked) != data["detect_options"]:
            return None
    else:  # a report from before they were recorded: compare what its parameters show
        params = data.get("parameters") or {}
        if any(key in params and params[key] != value for key, value in asked.items()):
            return None
    own_spacing = data.get("spacing_mm") is not None and data.get("spacing_source") != USER_SPACING
    if _applied_load_options(job, load_options, own_spacing) != (data.get("load_options") or {}):
        return None
    if dicom_outputs:
        if sorted(data.get("dicom_outputs_requested") or []) != sorted(dicom_outputs):
            return None
        if not all((base.parent / name).exists() for name in data.get("dicom_outputs") or []):
            return None
    return data


# ============================================================================ tables
def _csv_text(rows: list[dict[str, Any]], first: list[str]) -> str:
    cols: list[str] = list(first)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _write_tables(out: Path, jobs_by_name: dict[str, Job], reports: dict[str, dict],
                  errors: list[InputError], started: float) -> None:
    finding_rows: list[dict] = []
    summary_rows: list[dict] = []
    for name in sorted(reports):
        data = reports[name]
        rep = report_from_dict(data)
        inp = jobs_by_name[name].input if name in jobs_by_name else data.get("input", name)
        for r in rep.to_rows():
            finding_rows.append({"input": inp, **r})
        row = rep.summary_row()
        summary_rows.append({"input": inp, "report_json": f"{name}.json", "overlay_png": f"{name}.png", **row})
    write_text_atomic(out / "findings.csv", _csv_text(finding_rows, ["input", "source", "modality", "id"]))
    write_text_atomic(out / "summary.csv", _csv_text(summary_rows, ["input", "report_json", "overlay_png"]))
    err_rows = [{"input": e.input, "error_type": e.error_type, "reason": e.reason} for e in errors]
    write_text_atomic(out / "errors.csv", _csv_text(err_rows, ["input", "error_type", "reason"]))
    write_text_atomic(out / "index.html", _index_html(jobs_by_name, reports, errors, started))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;background:#f4f4f4;color:#222}
h1{font-size:1.4em;margin:0 0 4px} h2{font-size:1.1em} .meta{color:#555;margin-bottom:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
.card img{width:100%;height:auto;background:#000;border-radius:3px}
.card.wide{grid-column:1/-1} .card.wide img{max-width:1600px}
.card h2{font-size:1em;margin:0 0 6px;word-break:break-all}
.count{font-weight:600} .none{color:#2a7a2a} .some{color:#a15c00}
.warn{color:#8a5a00;font-size:.85em} .files a{margin-right:10px;font-size:.85em}
table{border-collapse:collapse;background:#fff;margin:8px 0 20px} td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eee} .err{color:#a00}
"""


def _index_html(jobs_by_name: dict[str, Job], reports: dict[str, dict], errors: list[InputError],
                started: float) -> str:
    from . import __version__

    esc = html.escape
    n_find = sum(int(r.get("count") or 0) for r in reports.values())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>calcdetect annotate</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>Soft-tissue calcifications</h1>",
        f"<div class='meta'>{len(reports)} image(s)/series analysed, {n_find} finding(s) in total, "
        f"{len(errors)} input(s) failed. Tables: <a href='summary.csv'>summary.csv</a>, "
        f"<a href='findings.csv'>findings.csv</a>, <a href='errors.csv'>errors.csv</a>. "
        f"calcdetect {esc(__version__)}, {esc(time.strftime('%Y-%m-%d %H:%M', time.localtime(started)))}. "
        "Research software: every finding needs a clinician's review.</div>",
    ]
    if reports:
        parts.append("<h2>Summary</h2><table><tr><th>input</th><th>modality</th><th>findings</th>"
                     "<th>size (mm)</th><th>side</th><th>depth</th><th>pattern</th><th>Agatston</th></tr>")
        for name in sorted(reports):
            data = reports[name]
            inp = jobs_by_name[name].input if name in jobs_by_name else data.get("input", name)
            dist = data.get("distribution") or {}
            size = dist.get("size_mm") or {}
            count = int(data.get("count") or 0)
            size_txt = ("" if not count else "no pixel size" if size.get("min") is None else
                        f"{size['min']:.1f}" if count == 1 else f"{size['min']:.1f}-{size['max']:.1f}")
            sides = ", ".join(f"{k} {v}" for k, v in (dist.get("by_side") or {}).items() if k != "unknown")
            regions = ", ".join(f"{k} {v}" for k, v in (dist.get("by_region") or {}).items() if k != "unknown")
            ag = (data.get("scores") or {}).get("agatston")
            parts.append(
                f"<tr><td><a href='#{esc(_anchor(name))}'>{esc(inp)}</a></td><td>{esc(str(data.get('modality', '')))}</td>"
                f"<td>{count}</td><td>{esc(size_txt)}</td><td>{esc(sides)}</td><td>{esc(regions)}</td>"
                f"<td>{esc(str(dist.get('pattern') or ''))}</td><td>{'' if ag is None else f'{ag:.1f}'}</td></tr>")
        parts.append("</table>")
    if errors:
        parts.append(f"<h2 class='err'>Inputs that could not be analysed ({len(errors)})</h2>")
        parts.append("<table><tr><th>input</th><th>error</th><th>reason</th></tr>")
        for e in errors:
            parts.append(f"<tr><td>{esc(e.input)}</td><td>{esc(e.error_type)}</td><td>{esc(e.reason)}</td></tr>")
        parts.append("</table>")
    parts.append("<div class='grid'>")
    for name in sorted(reports):
        data = reports[name]
        inp = jobs_by_name[name].input if name in jobs_by_name else data.get("input", name)
        dist = data.get("distribution") or {}
        count = int(data.get("count") or 0)
        summary = dist.get("summary") or ("no calcification found" if count == 0 else "")
        href_png = esc(_url(f"{name}.png"))
        href_json = esc(_url(f"{name}.json"))
        wide = " wide" if len(data.get("shape") or []) == 3 else ""  # a series montage: full width
        parts.append(f"<div class='card{wide}' id='{esc(_anchor(name))}'>")
        parts.append(f"<h2>{esc(inp)} <small>({esc(str(data.get('modality', '')))})</small></h2>")
        parts.append(f"<a href='{href_png}'><img loading='lazy' src='{href_png}' alt='{esc(inp)} overlay'></a>")
        cls = "none" if count == 0 else "some"
        parts.append(f"<p class='count {cls}'>{esc(summary)}</p>")
        scores = data.get("scores") or {}
        if scores.get("agatston") is not None:
            parts.append(f"<p>Agatston {scores['agatston']:.1f}"
                         + (f", volume {scores['volume_mm3']:.1f} mm&sup3;" if scores.get("volume_mm3") is not None else "")
                         + "</p>")
        if not data.get("spacing_mm"):
            parts.append("<p class='warn'>No pixel size: sizes are not reported in mm.</p>")
        for w in (data.get("warnings") or [])[:3]:
            parts.append(f"<p class='warn'>{esc(w)}</p>")
        parts.append(f"<p class='files'><a href='{href_json}'>JSON report</a><a href='{href_png}'>picture</a></p>")
        parts.append("</div>")
    parts.append("</div></body></html>\n")
    return "\n".join(parts)


def _anchor(name: str) -> str:
    return "r-" + "".join(c if c.isalnum() else "-" for c in name)


def _url(rel: str) -> str:
    from urllib.parse import quote

    return quote(rel)


# ============================================================================ the run
def _default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _progress(total: int, quiet: bool):
    if quiet or total == 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="input", file=sys.stderr, dynamic_ncols=True)


def _say(bar, text: str) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def annotate(
    folder: str | Path,
    out: str | Path,
    *,
    executor: Executor | None = None,
    jobs: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    load_options: Mapping[str, Any] | None = None,
    detect_options: Mapping[str, Any] | None = None,
    dicom_outputs: Sequence[str] = (),
) -> AnnotateResult:
    """Annotate every image and series below ``folder`` into ``out``.

    Parameters
    ----------
    folder : path
        Searched recursively (see :func:`find_inputs`).  Never written to.
    out : path
        Output folder (created); must not be ``folder`` itself.  May lie inside
        ``folder`` (it is then not walked).
    executor : concurrent.futures.Executor, optional
        Where tasks run, e.g. a Dask ``client.get_executor()``.  Default: a
        :class:`~concurrent.futures.ProcessPoolExecutor` of ``jobs`` processes, or the
        calling process when ``jobs == 1``.  A given executor is not shut down.
    jobs : int, optional
        Worker processes of the default pool (default: the CPUs available).
    overwrite : bool
        Redo inputs whose outputs are up to date (default: skip them, and read their
        JSON back for the tables).
    quiet : bool
        No progress bar and no final summary line (failures are still printed on
        stderr, one line each).
    load_options : dict, optional
        For :func:`calcdetect.load`: ``pixel_size_mm`` and ``modality`` for raster files
        without a sidecar, ``frame`` for ultrasound cine, ``max_pixels``.
    detect_options : dict, optional
        For :func:`calcdetect.detect`: flat, or per modality ``{"CT": {...}, ...}``.
    dicom_outputs : sequence of {"sr", "seg"}
        Also write DICOM SR (TID 1500) and/or SEG per DICOM input (see :func:`run_job`).

    Returns
    -------
    AnnotateResult
        ``exit_code`` is 0 when every input succeeded, 1 when some failed.
    """
    started = time.time()
    folder = Path(folder)
    out = Path(out)
    if not folder.is_dir():
        raise InvalidParameterError("is not a folder", path=folder, fix="give the folder to annotate")
    if out.exists() and not out.is_dir():
        raise InvalidParameterError("output exists and is not a folder", path=out, fix="choose another -o OUTDIR")
    if out.resolve() == folder.resolve():
        raise InvalidParameterError("the output folder cannot be the input folder", path=out,
                                    fix="choose another -o OUTDIR (a subfolder is fine)")
    if jobs is not None and int(jobs) < 1:
        raise InvalidParameterError(f"--jobs {jobs} must be at least 1")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CalcdetectError(f"cannot create the output folder ({exc.strerror or type(exc).__name__})",
                              path=out, fix="choose a writable -o OUTDIR") from exc
    marker = out / OUTPUT_MARKER
    if not marker.exists():
        write_text_atomic(marker, "written by calcdetect annotate; this folder is never read as input\n")

    job_list, errors = find_inputs(folder, exclude=[out])
    series_filter = (load_options or {}).get("series_uid")
    if series_filter:
        job_list = [j for j in job_list if j.kind == "raster" or j.series_uid == series_filter]
    jobs_by_name = {j.name: j for j in job_list}
    result = AnnotateResult(out=out, n_inputs=len(job_list) + len(errors))
    for e in errors:
        _say(None, f"calcdetect: {e.input}: {e.reason}")
    result.errors.extend(errors)

    todo: list[Job] = []
    for j in job_list:
        data = None if overwrite else _up_to_date(j, out, detect_options, dicom_outputs, load_options)
        if data is not None:
            result.reports[j.name] = data
            result.skipped.append(j.name)
        else:
            todo.append(j)

    bar = _progress(len(todo), quiet)
    out_s = str(out.resolve())
    load_opts = dict(load_options or {})
    det_opts = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in dict(detect_options or {}).items()}
    dicom_kinds = tuple(sorted(dicom_outputs))
    if any(k not in ("sr", "seg") for k in dicom_kinds):
        raise InvalidParameterError(f"dicom_outputs must name 'sr' and/or 'seg', got {dicom_kinds}")
    if dicom_kinds:
        from .dicom_out import require_highdicom

        require_highdicom()  # fail once, up front, with the extra to install

    def collect(job: Job, res: dict[str, Any] | None, exc: BaseException | None) -> None:
        if exc is not None:
            err = InputError(job.input, type(exc).__name__, _reason(exc, job), job.name)
        elif res.get("error"):
            err = InputError(job.input, res["error"]["error_type"], res["error"]["reason"], job.name)
            if res["error"].get("traceback"):
                _say(bar, res["error"]["traceback"])
        else:
            result.reports[job.name] = res["report"]
            result.processed.append(job.name)
            err = None
        if err is not None:
            result.errors.append(err)
            _say(bar, f"calcdetect: {err.input}: {err.reason}")
        if bar is not None:
            bar.update(1)

    try:
        n_workers = int(jobs) if jobs is not None else _default_jobs()
        if executor is None and (n_workers == 1 or len(todo) <= 1):
            for j in todo:
                collect(j, run_job(j, out_s, load_opts, det_opts, True, dicom_kinds), None)
        else:
            own = executor is None
            ex = executor if executor is not None else ProcessPoolExecutor(max_workers=min(n_workers, len(todo)))
            try:
                futures: dict[Future, Job] = {ex.submit(run_job, j, out_s, load_opts, det_opts, True, dicom_kinds): j
                                              for j in todo}
                for fut in as_completed(futures):
                    j = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # the worker died (BrokenProcessPool, KilledWorker...)
                        collect(j, None, exc)
                    else:
                        collect(j, res, None)
            finally:
                if own:
                    ex.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()
        result.errors.sort(key=lambda e: e.input)
        _write_tables(out, jobs_by_name, result.reports, result.errors, started)
    if not quiet:
        _say(None, f"calcdetect: {result.n_inputs} input(s): {len(result.processed)} analysed, "
                   f"{len(result.skipped)} up to date (skipped), {len(result.errors)} failed; "
                   f"see {out / 'index.html'}")
    return result


# ============================================================================ CLI
def _dask_executor(address: str, timeout: float):
    """Connect to a Dask scheduler; returns ``(client, executor)``."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise InvalidParameterError(
            "--dask-scheduler needs Dask, which is not installed",
            fix="pip install 'calcdetect[dask]'",
        ) from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CalcdetectError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({type(exc).__name__}: {first})",
            fix="start it with `dask scheduler` and check the address, or drop --dask-scheduler to run locally",
        ) from None
    return client, client.get_executor()


def _cmd_annotate(args: argparse.Namespace) -> int:
    from .cli import detector_options, load_options

    if args.jobs is not None and args.dask_scheduler:
        raise InvalidParameterError("--jobs and --dask-scheduler exclude each other",
                                    fix="the cluster's workers set the parallelism")
    lopts = load_options(args)
    dopts = {m: detector_options(args, m) for m in MODALITIES}
    client = None
    executor = None
    if args.dask_scheduler:
        client, executor = _dask_executor(args.dask_scheduler, args.dask_timeout)
        if not args.quiet:
            n = len(client.scheduler_info().get("workers", {}))
            sys.stderr.write(f"calcdetect: using the Dask cluster at {args.dask_scheduler} ({n} worker(s))\n")
    if args.debug:
        os.environ["CALCDETECT_DEBUG"] = "1"
    try:
        kinds = [k for k, on in (("sr", args.dicom_sr), ("seg", args.dicom_seg)) if on]
        result = annotate(args.folder, args.output, executor=executor, jobs=args.jobs,
                          overwrite=args.overwrite, quiet=args.quiet,
                          load_options=lopts, detect_options=dopts, dicom_outputs=kinds)
    finally:
        if client is not None:
            client.close()
    return result.exit_code


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def _positive_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v < 1e6):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return v


def add_annotate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``calcdetect annotate`` on the CLI's subparsers."""
    from .cli import add_detector_options

    p = subparsers.add_parser(
        "annotate",
        help="annotate every image and series in a folder (JSON, pictures, tables, index.html)",
        description=(
            "Walk FOLDER recursively and write, for every CT series, DICOM file and PNG/JPEG/TIFF "
            "file, a JSON report and an overlay picture into OUTDIR (mirroring the folder layout), "
            "plus findings.csv, summary.csv, errors.csv and index.html. Raster files take their "
            "modality and pixel size from a sidecar NAME.json "
            '({"modality": "US", "pixel_size_mm": 0.1}) or from --modality/--pixel-size. '
            "Exit status: 0 all inputs analysed, 1 some failed (see errors.csv), 2 bad usage."
        ),
    )
    p.add_argument("folder", help="folder of DICOM, PNG, JPEG, TIFF or BMP files (searched recursively)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    p.add_argument("--jobs", "-j", type=_positive_int, default=None, metavar="N",
                   help="worker processes (default: one per CPU; 1 = no subprocesses)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo inputs whose outputs are already up to date")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar or summary line (failures are still reported)")
    p.add_argument("--dask-scheduler", metavar="tcp://HOST:PORT", default=None,
                   help="run the tasks on this Dask cluster (needs calcdetect[dask]; the workers "
                        "must see FOLDER and OUTDIR at the same paths)")
    p.add_argument("--dask-timeout", type=_positive_seconds, default=10.0, metavar="SECONDS",
                   help="how long to try to reach the Dask scheduler (default 10)")
    p.add_argument("--dicom-sr", action="store_true",
                   help="also write a DICOM SR measurement report (TID 1500) per DICOM input "
                        "(needs calcdetect[dicom-out])")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM Segmentation of the findings per DICOM input")
    add_detector_options(p)
    p.set_defaults(func=_cmd_annotate)
    return p
