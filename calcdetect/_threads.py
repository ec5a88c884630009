"""Calling a function for every index on a few threads (slices of a volume, files of
a folder): the one thread helper the loaders and the detectors share."""

from __future__ import annotations

import threading
from typing import Callable


def parallel_each(fn: Callable[[int], None], n: int, workers: int) -> None:
    """``fn(0)``, ..., ``fn(n - 1)`` in ``workers`` threads (the calling one included),
    each taking the next index as it finishes one.

    Raises what ``list(ThreadPoolExecutor(workers).map(fn, range(n)))`` raises: the
    exception of the lowest index that raised.  Indices are handed out in increasing
    order; after one raised, later indices are no longer started, and every earlier one
    still runs.  A ``KeyboardInterrupt`` or ``SystemExit`` takes precedence (and stops
    the threads as soon as their current index is done, except for earlier indices).

    One task per thread instead of one future per index: on a 300-slice series the
    futures' locks and wake-ups cost more than the work they handed out."""
    order = iter(range(n))  # shared: next() on it is atomic under the GIL
    errors: dict[int, BaseException] = {}
    failed = [n]  # an index that raised (any one: only later indices are skipped)

    def work() -> None:
        for i in order:
            if i > failed[0]:
                return  # cannot change which exception is raised
            try:
                fn(i)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in index order
                errors[i] = exc
                if i < failed[0]:
                    failed[0] = i

    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(workers, n) - 1)]
    for t in threads:
        t.start()
    try:
        work()
    finally:
        for t in threads:
            t.join()
    if errors:
        fatal = [e for e in errors.values() if not isinstance(e, Exception)]
        raise fatal[0] if fatal else errors[min(errors)]
