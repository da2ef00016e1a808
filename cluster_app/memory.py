"""Peak resident memory of this process and all its descendants (cluster workers included)."""

from __future__ import annotations

import contextlib
import threading

import psutil

__all__ = ["PeakMemory", "tree_rss"]


def tree_rss(root: psutil.Process | None = None) -> int:
    """Sum of RSS over ``root`` and its descendants, in bytes (shared pages count per process,
    so this is an upper bound on what the tree really holds)."""
    root = root or psutil.Process()
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):  # exited meanwhile
            total += p.memory_info().rss
    return total


class PeakMemory:
    """Context manager sampling :func:`tree_rss` in a background thread; ``.peak`` in bytes."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(proc))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss())
