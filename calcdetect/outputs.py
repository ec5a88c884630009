"""Atomic output writing: every file is written to a temporary name in the same folder
and renamed into place, so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import CalcdetectError


def _read_umask() -> int:
    """The process umask (read once: setting it back and forth is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates its file 0600; the renamed output must get the permissions of any other
# file the user creates (0666 minus the umask), or colleagues cannot read the results
_FILE_MODE = 0o666 & ~_read_umask()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``).

    Parameters
    ----------
    path : str or Path
        The file to write; missing parent folders are created.
    data : bytes

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    CalcdetectError
        When the file cannot be written (permissions, full disk, a folder in the way),
        with a one-line message naming it.
    """
    path = Path(path)
    try:
        return _write(path, data)
    except OSError as exc:  # a user's problem (permissions, full disk, a folder there), not a bug
        raise CalcdetectError(
            f"cannot write the output ({exc.strerror or type(exc).__name__})", path=path,
            fix="choose a writable location with free space",
        ) from exc


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX; on Windows the mode is not used
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))
