"""Congestion control for store writes: an AIMD concurrency window (TCP-style, pure Python).

The window is how many chunk writes may be in flight. It grows additively (+1 per window's
worth of completions, i.e. one per "round trip") while write latency stays within
``tolerance`` times the best latency recently seen, and halves when latency rises beyond it
(at most once per window's worth of completions, so one burst does not collapse it). A slow or
overloaded store therefore gets fewer concurrent writes; a fast one gets more.
:class:`WindowedExecutor` runs jobs under such a window and feeds it their latencies.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from cluster_app.errors import SpecError

__all__ = ["AIMDWindow", "WindowedExecutor"]


class AIMDWindow:
    """Additive-increase / multiplicative-decrease window driven by observed latencies."""

    def __init__(
        self,
        initial: int = 4,
        minimum: int = 1,
        maximum: int = 32,
        decrease: float = 0.5,
        tolerance: float = 2.0,
        history: int = 64,
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise SpecError(
                f"need 1 <= minimum <= initial <= maximum, got {minimum}, {initial}, {maximum}"
            )
        self.window = float(initial)
        self.minimum, self.maximum = minimum, maximum
        self.decrease, self.tolerance = decrease, tolerance
        self._recent: deque[float] = deque(maxlen=history)
        self._since_change = 0
        self.trace: list[tuple[float, int]] = []  # (latency, window after update)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self.window)

    @property
    def base_latency(self) -> float | None:
        return min(self._recent) if self._recent else None

    def update(self, latency: float) -> int:
        """Record one completed write's latency; return the new window size."""
        with self._lock:
            base = self.base_latency
            self._recent.append(latency)
            self._since_change += 1
            if base is not None and latency > self.tolerance * base:
                if self._since_change >= self.window:  # at most one decrease per round trip
                    self.window = max(self.minimum, self.window * self.decrease)
                    self._since_change = 0
            else:
                self.window = min(self.maximum, self.window + 1.0 / self.window)
            self.trace.append((latency, self.size))
            return self.size


class WindowedExecutor:
    """Runs callables with at most ``window.size`` in flight, timing each into the window."""

    def __init__(self, window: AIMDWindow | None = None) -> None:
        self.window = window or AIMDWindow()
        self._pool = ThreadPoolExecutor(self.window.maximum, thread_name_prefix="store-write")
        self._cv = threading.Condition()
        self._in_flight = 0

    def _run_one(self, job: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            job()
        finally:
            self.window.update(time.perf_counter() - t0)
            with self._cv:
                self._in_flight -= 1
                self._cv.notify_all()

    def run(self, jobs: Iterable[Callable[[], object]]) -> None:
        """Run every job; re-raise the first failure after all submitted ones finished."""
        futures = []
        for job in jobs:
            with self._cv:
                self._cv.wait_for(lambda: self._in_flight < self.window.size)
                self._in_flight += 1
            futures.append(self._pool.submit(self._run_one, job))
        for f in futures:
            f.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
