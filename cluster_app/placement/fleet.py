"""What the dispatcher knows about the workers: one numpy array per signal, one row per worker.

The scheduler plugin copies Dask's ``WorkerState`` into a :class:`Fleet` (on membership
changes, on every periodic refresh, and incrementally on every assignment and completion),
so that a placement decision is a handful of vectorised operations over plain arrays instead
of a Python loop over ``WorkerState`` objects. Durations are kept per *kind* of task (its key
prefix), because a worker's speed only makes sense relative to the same kind of work.

Pure Python + numpy: no Dask, no JAX. Not thread-safe; the plugin only touches it from the
scheduler's event loop.
"""

from __future__ import annotations

import math

import numpy as np

from cluster_app.placement.scoring import Signals

__all__ = ["Fleet"]

_FLOAT_FIELDS = ("busy", "other", "cpu", "accel", "rtt", "next_free", "dur_any")
_INT_FIELDS = ("nthreads", "tiebreak", "assigned")


class Fleet:
    """Per-worker arrays with add/remove by address.

    Parameters
    ----------
    duration_alpha : float
        Weight of the newest duration in each exponentially weighted average (0, 1].
    max_prefetch : int
        Extra tasks a worker may hold beyond its threads to hide its round trip (>= 0).
    """

    def __init__(self, duration_alpha: float = 0.3, max_prefetch: int = 0) -> None:
        if not 0 < duration_alpha <= 1:
            raise ValueError(f"duration_alpha={duration_alpha!r} must be in (0, 1]")
        if max_prefetch < 0:
            raise ValueError(f"max_prefetch={max_prefetch!r} must be >= 0")
        self.duration_alpha = float(duration_alpha)
        self.max_prefetch = int(max_prefetch)
        self.addrs: list[str] = []
        self.index: dict[str, int] = {}
        self.eligible = np.zeros(0, bool)
        for name in _FLOAT_FIELDS:
            setattr(self, name, np.zeros(0, np.float64))
        for name in _INT_FIELDS:
            setattr(self, name, np.zeros(0, np.int64))
        # expected finish times (monotonic seconds) of the tasks each worker holds
        self.finishes: list[list[float]] = []
        self.dur: dict[str, np.ndarray] = {}
        # derived arrays, valid until a signal, a duration or the membership changes
        self._cache: dict[object, object] = {}

    # ------------------------------------------------------------------ membership
    def __len__(self) -> int:
        return len(self.addrs)

    def __contains__(self, addr: str) -> bool:
        return addr in self.index

    def add(self, addr: str, nthreads: int = 1) -> int:
        """Add a worker (idle, eligible, signals unknown) and return its row."""
        if addr in self.index:
            return self.index[addr]
        if nthreads < 1:
            raise ValueError(f"worker {addr} has nthreads={nthreads!r}; expected >= 1")
        self.addrs.append(addr)
        self.eligible = np.append(self.eligible, True)
        for name in _FLOAT_FIELDS:
            setattr(self, name, np.append(getattr(self, name), 0.0))
        for name in _INT_FIELDS:
            setattr(self, name, np.append(getattr(self, name), 0))
        self.nthreads[-1] = nthreads
        self.rtt[-1] = np.nan  # unknown until its first heartbeat
        self.dur_any[-1] = np.nan
        self.finishes.append([])
        for kind in self.dur:
            self.dur[kind] = np.append(self.dur[kind], np.nan)
        self._reindex()
        return self.index[addr]

    def remove(self, addr: str) -> None:
        """Forget a worker (no-op if unknown)."""
        i = self.index.get(addr)
        if i is None:
            return
        del self.addrs[i]
        del self.finishes[i]
        self.eligible = np.delete(self.eligible, i)
        for name in (*_FLOAT_FIELDS, *_INT_FIELDS):
            setattr(self, name, np.delete(getattr(self, name), i))
        for kind in self.dur:
            self.dur[kind] = np.delete(self.dur[kind], i)
        self._reindex()

    def _reindex(self) -> None:
        self.index = {a: i for i, a in enumerate(self.addrs)}
        # deterministic tie-break: rank in sorted address order, stable across runs
        self.tiebreak = np.argsort(np.argsort(np.array(self.addrs, dtype=object))).astype(np.int64)
        self._cache.clear()

    def refresh(
        self,
        *,
        cpu: np.ndarray,
        accel: np.ndarray,
        rtt: np.ndarray,
        other: np.ndarray,
        eligible: np.ndarray,
    ) -> None:
        """Replace the measured signals of every worker (arrays in row order).

        ``rtt`` may hold nan for workers that have not reported one yet; ``other`` counts
        tasks on the worker that the dispatcher did not place.
        """
        n = len(self.addrs)
        for name, arr in (("cpu", cpu), ("accel", accel), ("rtt", rtt), ("other", other)):
            arr = np.asarray(arr, np.float64)
            if arr.shape != (n,):
                raise ValueError(f"{name} has shape {arr.shape}; expected ({n},)")
            setattr(self, name, arr)
        self.eligible = np.asarray(eligible, bool)
        for i in range(n):
            if self.finishes[i] or self.other[i]:
                self._update_next_free(i)
        self._cache.clear()

    # ------------------------------------------------------------------ in-flight work
    def assign(self, i: int, expected_finish: float) -> None:
        """Count one more task on worker ``i``, expected to finish at ``expected_finish``."""
        self.busy[i] += 1
        self.assigned[i] += 1
        self.finishes[i].append(expected_finish)
        self._update_next_free(i)

    def release(self, i: int, expected_finish: float) -> None:
        """A task counted by :meth:`assign` left worker ``i``."""
        self.busy[i] = max(0.0, self.busy[i] - 1)
        fin = self.finishes[i]
        if expected_finish in fin:
            fin.remove(expected_finish)
        self._update_next_free(i)

    def _update_next_free(self, i: int) -> None:
        # a new task on a full worker starts when the (busy - nthreads + 1)-th task ends
        fin = self.finishes[i]
        k = int(self.busy[i] + self.other[i]) - int(self.nthreads[i])
        if k < 0 or not fin:
            self.next_free[i] = 0.0
        else:
            self.next_free[i] = sorted(fin)[min(k, len(fin) - 1)]

    # ------------------------------------------------------------------ durations
    def record_duration(self, i: int, kind: str, seconds: float) -> None:
        """Fold one measured compute duration of ``kind`` on worker ``i`` into its averages."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        a = self.duration_alpha
        d = self.dur.get(kind)
        if d is None:
            d = self.dur[kind] = np.full(len(self.addrs), np.nan)
        d[i] = seconds if np.isnan(d[i]) else a * seconds + (1 - a) * d[i]
        old = self.dur_any[i]
        self.dur_any[i] = seconds if np.isnan(old) else a * seconds + (1 - a) * old
        self._cache.clear()

    def _cached(self, key: object, compute):
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = compute()
        return value

    def median_duration(self, kind: str) -> float:
        """The fleet's median duration for ``kind`` (nan if never measured)."""

        def compute() -> float:
            d = self.dur.get(kind)
            if d is None or np.isnan(d).all():
                return math.nan
            return float(np.nanmedian(d))

        return self._cached(("median", kind), compute)

    def slowness(self, kind: str) -> np.ndarray:
        """Each worker's duration for ``kind`` over the fleet median (1 where unknown)."""

        def compute() -> np.ndarray:
            d = self.dur.get(kind)
            med = self.median_duration(kind)
            if d is None or not med > 0:
                return np.ones(len(self.addrs))
            return np.nan_to_num(d / med, nan=1.0)

        return self._cached(("slowness", kind), compute)

    def run_time(self, kind: str) -> np.ndarray | None:
        """Expected seconds from dispatch to result on each worker, or None if ``kind`` is new.

        Its own measured duration (the median where it has none) plus its round trip.
        """
        med = self.median_duration(kind)
        if math.isnan(med):
            return None

        def compute() -> np.ndarray:
            d = self.dur[kind]
            return np.where(np.isnan(d), med, d) + self.rtt_filled()

        return self._cached(("run", kind), compute)

    # ------------------------------------------------------------------ signals
    def rtt_filled(self) -> np.ndarray:
        """Round trips with unknown values replaced by the fleet median (0 if none known)."""

        def compute() -> np.ndarray:
            rtt = self.rtt
            known = ~np.isnan(rtt)
            if known.all():
                return rtt
            fill = float(np.median(rtt[known])) if known.any() else 0.0
            return np.where(known, rtt, fill)

        return self._cached("rtt", compute)

    def capacity(self) -> np.ndarray:
        """Tasks each worker may hold: its threads plus a prefetch that hides its round trip.

        The prefetch is ``round(rtt / duration)`` capped at ``max_prefetch`` (the
        bandwidth-delay product in tasks): zero for long agent rounds on a LAN, so a free
        worker really is free, and up to ``max_prefetch`` for tiny tasks or distant workers.
        """

        def compute() -> np.ndarray:
            cap = self.nthreads.astype(np.float64)
            if self.max_prefetch and len(cap):
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = self.rtt_filled() / self.dur_any
                extra = np.clip(np.nan_to_num(np.round(ratio), nan=0.0), 0, self.max_prefetch)
                cap = cap + extra
            return cap

        return self._cached("capacity", compute)

    def free(self) -> np.ndarray:
        """Workers that may take a task now (eligible and below capacity)."""
        return self.eligible & (self.busy + self.other < self.capacity())

    def signals(self, kind: str) -> Signals:
        """The scoring signals for a task of ``kind`` (busy counts every task on the worker)."""
        return Signals(
            cpu=self.cpu,
            accel=self.accel,
            busy=self.busy + self.other,
            slots=self.capacity(),
            slowness=self.slowness(kind),
            rtt=self.rtt_filled(),
            tiebreak=self.tiebreak,
        )
