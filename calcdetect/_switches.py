"""Process-wide settings held for the duration of a block, shared by threads.

Some settings that make calcdetect faster belong to the whole process, such as Python's
cyclic garbage collector (paused during a series load).  A
:class:`ProcessSwitch` holds such a setting while any caller is inside its block: the
first to enter saves the current value and sets the switch's, the last to leave puts
the saved value back, so blocks running at the same time in several threads never
leave the process changed.  Other code of the process that runs meanwhile sees the
held value; for the collector that changes speed only, never results.  (OpenCV's thread
count is deliberately not switched: ``cv2.setNumThreads`` rebuilds OpenCV's pool, and
a process forked afterwards hangs in its first parallel OpenCV call.)
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class ProcessSwitch:
    """A process-wide setting held at ``value`` while any :meth:`held` block runs.

    Parameters
    ----------
    get : callable
        Returns the setting's current value.
    set : callable
        Sets it.
    value : object
        The value held inside the blocks.
    """

    def __init__(self, get: Callable[[], Any], set: Callable[[Any], Any], value: Any) -> None:
        self._get, self._set, self._value = get, set, value
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: Any = None

    @contextmanager
    def held(self) -> Iterator[None]:
        """The block runs with the setting at the switch's value; afterwards the
        setting is as it was before the first of the overlapping blocks began."""
        with self._lock:
            if self._holders == 0:
                self._saved = self._get()
                self._set(self._value)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._set(self._saved)


def _set_gc(enabled: bool) -> None:
    (gc.enable if enabled else gc.disable)()


#: Python's cyclic garbage collector paused.  A series load makes ~20 000 short-lived
#: container objects (headers, their elements, slice records), none in reference
#: cycles; they triggered ~29 collections per 300-slice load, and every few loads a full
#: one that walks every object of the process (45-80 ms in a benchmark process).
GC_PAUSED = ProcessSwitch(gc.isenabled, _set_gc, False)
