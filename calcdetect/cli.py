"""The ``calcdetect`` command.

``calcdetect detect PATH`` prints the JSON report of one image or series.
``calcdetect annotate FOLDER -o OUTDIR`` processes a folder (see :mod:`calcdetect.batch`).

Errors are one line on stderr (file, reason, fix) with a non-zero exit: 1 when an input
could not be processed, 2 on bad usage.  ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from . import __version__
from .errors import CalcdetectError, InvalidParameterError, UnsupportedImageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def add_detector_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``detect`` and ``annotate``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The subcommand's parser.
    """
    # errors say "rerun with --debug": accept it after the subcommand too (SUPPRESS keeps
    # a --debug given before the subcommand from being reset to False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks on errors")
    p.add_argument("--pixel-size", type=_positive_float, metavar="MM",
                   help="pixel size in mm for files without one (raster files, zero-spacing radiographs)")
    p.add_argument("--modality", choices=["CT", "XRAY", "US"], type=str.upper,
                   help="modality of PNG/JPEG/TIFF inputs (DICOM files say it themselves)")
    p.add_argument("--invert", action="store_true", default=None,
                   help="PNG/JPEG/TIFF radiographs that store dense tissue as dark (raw MONOCHROME1 values): "
                        "reflect them so that dense is bright (DICOM files say it themselves)")
    p.add_argument("--region", choices=["skin", "soft-tissue", "all"], default=None,
                   help="CT: where to look (default: skin = dermis and subcutaneous tissue)")
    p.add_argument("--threshold", type=float, metavar="HU", default=None,
                   help="CT: calcium threshold in HU (default 130)")
    p.add_argument("--mass-calibration", type=_positive_float, metavar="MG_PER_MM3_HU", default=None,
                   help="CT: calcium mass calibration factor (mg per mm^3 per HU)")
    p.add_argument("--contrast", choices=["yes", "no"], default=None,
                   type=lambda t: {"true": "yes", "false": "no"}.get(t.lower(), t.lower()),
                   help="CT: the scan is (not) contrast-enhanced (default: from ContrastBolusAgent/Route, "
                        "else from an enhanced blood pool in the image)")
    p.add_argument("--series", metavar="UID", default=None,
                   help="which series to load when a folder holds several")
    p.add_argument("--frames", default=None, metavar="N|all",
                   help="ultrasound cine: frame index to analyse (default: middle), or 'all'")


#: The CT detector's command-line options: (flag, argparse dest, detect_ct keyword).
_CT_OPTIONS = (("--region", "region", "region"), ("--threshold", "threshold", "threshold_hu"),
               ("--mass-calibration", "mass_calibration", "mass_calibration"), ("--contrast", "contrast", "contrast"))


def detector_options(args: argparse.Namespace, modality: str) -> dict:
    """Translate CLI options into ``detect()`` keyword arguments for a modality.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``detect``/``annotate`` options.
    modality : {"CT", "XRAY", "US"}
        The loaded image's modality: only CT takes ``--region``, ``--threshold``,
        ``--mass-calibration`` and ``--contrast``.

    Returns
    -------
    dict
    """
    if modality != "CT":
        return {}
    opts = {key: getattr(args, dest) for _, dest, key in _CT_OPTIONS if getattr(args, dest) is not None}
    if "contrast" in opts:
        opts["contrast"] = opts["contrast"] == "yes"
    return opts


def ignored_options(args: argparse.Namespace, modality: str) -> list[str]:
    """The options given on the command line that do not apply to a modality.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``detect`` options.
    modality : {"CT", "XRAY", "US"}
        The loaded image's modality.

    Returns
    -------
    list of str
        The flags (``--region``, ``--threshold``, ``--mass-calibration`` on a non-CT
        image; ``--frames`` on a non-ultrasound image), in that order.
    """
    given = []
    if modality != "CT":
        given += [flag for flag, dest, _ in _CT_OPTIONS if getattr(args, dest) is not None]
    if modality != "US" and args.frames is not None:
        given.append("--frames")
    return given


def load_options(args: argparse.Namespace) -> dict:
    """Translate CLI options into ``load()`` keyword arguments.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``detect``/``annotate`` options.

    Returns
    -------
    dict
        ``pixel_size_mm``, ``modality``, ``series_uid``, ``frame`` and ``invert``.

    Raises
    ------
    InvalidParameterError
        When ``--frames`` is neither an integer nor ``all``.
    """
    frame = args.frames
    if frame is not None and frame != "all":
        try:
            frame = int(frame)
        except ValueError:
            raise InvalidParameterError(f"--frames {frame!r} must be a frame index or 'all'") from None
    return {"pixel_size_mm": args.pixel_size, "modality": args.modality,
            "series_uid": args.series, "frame": frame, "invert": getattr(args, "invert", None)}


def _cmd_detect(args: argparse.Namespace) -> int:
    from .detect import detect
    from .io import load

    image = load(args.path, **load_options(args))
    if args.dicom_seg or args.dicom_sr:  # refuse before the analysis and before any output
        from .dicom_out import require_dicom_source

        require_dicom_source(image)
    report = detect(image, **detector_options(args, image.modality))
    ignored = ignored_options(args, image.modality)
    if ignored:  # said in the report's warnings, never silent
        report.warnings.append(f"{', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply to "
                               f"a {image.modality} image and {'was' if len(ignored) == 1 else 'were'} ignored")
    text = report.to_json(indent=None if args.compact else 2)
    if args.output:
        from .outputs import write_text_atomic

        write_text_atomic(args.output, text + "\n")
    else:
        sys.stdout.write(text + "\n")
    if args.dicom_seg or args.dicom_sr:
        _write_dicom(args, image, report)
    return EXIT_OK


def _write_dicom(args: argparse.Namespace, image, report) -> None:
    """``--dicom-seg`` / ``--dicom-sr``: write the SEG first so the SR references it."""
    from .dicom_out import build_seg, source_datasets, write_dataset, write_sr

    notes: list[str] = []
    datasets = source_datasets(image, notes=notes)
    for note in notes:  # printed here: a loader's threads can leave warnings filtered
        sys.stderr.write(f"calcdetect: warning: {note}\n")
    seg = None
    if args.dicom_seg:
        try:
            seg = build_seg(report, image, datasets)
        except UnsupportedImageError as exc:
            if not args.dicom_sr:
                raise
            sys.stderr.write(f"calcdetect: warning: {exc.message}; writing the SR only\n")
            seg = None
        if seg is None and report.count == 0:
            sys.stderr.write(f"calcdetect: no calcifications found, so no DICOM SEG was written to "
                             f"{args.dicom_seg} (the SR records the count 0)\n")
        elif seg is not None:
            write_dataset(seg, args.dicom_seg)
    if args.dicom_sr:
        write_sr(report, image, datasets, args.dicom_sr, seg=seg)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``calcdetect`` command."""
    parser = argparse.ArgumentParser(
        prog="calcdetect",
        description="Find and measure soft-tissue calcifications on CT, radiographs and ultrasound.",
    )
    parser.add_argument("--version", action="version", version=f"calcdetect {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("detect", help="print the JSON report of one image file or series folder")
    p.add_argument("path", help="DICOM file, series folder, or PNG/JPEG/TIFF file")
    add_detector_options(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write the JSON here instead of stdout")
    p.add_argument("--compact", action="store_true", help="one-line JSON")
    p.add_argument("--dicom-sr", metavar="FILE",
                   help="also write a DICOM SR measurement report (TID 1500) of the findings "
                        "(DICOM inputs; needs calcdetect[dicom-out])")
    p.add_argument("--dicom-seg", metavar="FILE",
                   help="also write a DICOM Segmentation of the findings (DICOM inputs; needs "
                        "calcdetect[dicom-out]; skipped when nothing is found)")
    p.set_defaults(func=_cmd_detect)

    try:
        from .batch import add_annotate_parser
    except ImportError:  # pragma: no cover - batch is part of the package
        add_annotate_parser = None
    if add_annotate_parser is not None:
        add_annotate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the command, turn calcdetect errors into one-line messages."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        # pydicom's parser warnings (odd VRs, lenient values) are noise on a terminal;
        # what users must know is in each report's "warnings".  --debug shows them.
        import warnings

        warnings.simplefilter("ignore")
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if not args.debug:
        # what a user must know goes into the report's warnings or the one-line error;
        # library warnings (pydicom, numpy, OpenCV) on stderr would break that contract
        warnings.simplefilter("ignore")
    try:
        return int(args.func(args) or 0)
    except CalcdetectError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"calcdetect: error: {exc.message}\n")
        return EXIT_USAGE if isinstance(exc, InvalidParameterError) else EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("calcdetect: interrupted\n")
        return 130
    except MemoryError:
        if args.debug:
            raise
        sys.stderr.write(f"calcdetect: error: {getattr(args, 'path', '')}: out of memory -- "
                         "lower CALCDETECT_MAX_PIXELS or use a larger machine\n")
        return EXIT_FAILED
    except Exception as exc:  # a bug, not a user error: still one line unless --debug
        if args.debug:
            raise
        detail = " ".join(str(exc).split())[:300]  # one line, whatever the exception says
        sys.stderr.write(
            f"calcdetect: internal error on {getattr(args, 'path', getattr(args, 'folder', ''))}: "
            f"{type(exc).__name__}: {detail} (rerun with --debug and report it)\n"
        )
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
