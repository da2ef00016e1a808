"""What the dispatcher knows about the workers: one numpy array per signal, one row per worker.

The scheduler plugin copies Dask's ``WorkerState`` into a :class:`Fleet` (on membership
changes, on every periodic refresh, and incrementally on every assignment and completion),
so that a placement decision is a handful of vectorised operations over plain arrays instead
of a Python loop over ``WorkerState`` objects.

Besides the measured signals (CPU, accelerator, round trip) it learns, from the tasks it
places, two things per worker:

* the **duration** of each *kind* of task (key prefix), because a worker's speed only makes
  sense relative to the same kind of work;
* the **hand-over overhead**: the time from a dispatch decision to the result reaching the
  scheduler, minus the compute time, measured on tasks that found a thread free. It covers
  the network round trip *and* Dask's message batching (a few ms each way), and it is what a
  worker loses per task if it is only ever sent one task at a time.

A worker may hold ``threads + prefetch`` tasks, where the prefetch hides that overhead
(see :meth:`Fleet.capacity`), and a task of strictly higher priority than everything a worker
holds may take one more ("express": Dask workers run their ready tasks by priority, so it
only waits for the task that is running).

Pure Python + numpy: no Dask, no JAX. Not thread-safe; the plugin only touches it from the
scheduler's event loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from cluster_app.errors import SpecError
from cluster_app.placement.scoring import Signals

__all__ = ["Fleet"]

_FLOAT_FIELDS = (
    "busy",
    "other",
    "cpu",
    "accel",
    "rtt",
    "next_free",
    "first_free",
    "dur_any",
    "overhead",
)
_INT_FIELDS = ("nthreads", "tiebreak", "assigned")
_NAN_FIELDS = ("rtt", "dur_any", "overhead")  # unknown until measured

_T = TypeVar("_T")


class Fleet:
    """Per-worker arrays with add/remove by address.

    Parameters
    ----------
    duration_alpha : float
        Weight of the newest sample in each exponentially weighted average, (0, 1].
    max_prefetch : int
        Most tasks a worker may hold beyond its threads to hide its hand-over overhead.
    prefetch_threshold : float
        Prefetch only where the overhead exceeds this fraction of the task duration (the
        share of its time a worker would otherwise sit idle between tasks).
    learn_interval : float
        Seconds for which what the fleet learns from finished tasks (durations, overheads)
        may wait before the estimates derived from it are recomputed (:meth:`settle`). 0:
        at once. Every finished task teaches something, so with many short tasks this keeps
        the scheduler from recomputing medians and capacities for every single one.
    """

    # one row per worker; created in ``__init__`` from _FLOAT_FIELDS and _INT_FIELDS
    busy: np.ndarray
    other: np.ndarray
    cpu: np.ndarray
    accel: np.ndarray
    rtt: np.ndarray
    next_free: np.ndarray
    first_free: np.ndarray
    dur_any: np.ndarray
    overhead: np.ndarray
    nthreads: np.ndarray
    tiebreak: np.ndarray
    assigned: np.ndarray

    def __init__(
        self,
        duration_alpha: float = 0.3,
        max_prefetch: int = 0,
        prefetch_threshold: float = 0.1,
        learn_interval: float = 0.0,
    ) -> None:
        if not 0 < duration_alpha <= 1:
            raise SpecError(f"duration_alpha={duration_alpha!r} must be in (0, 1]")
        if max_prefetch < 0 or prefetch_threshold < 0:
            raise SpecError(
                f"max_prefetch={max_prefetch!r} and prefetch_threshold={prefetch_threshold!r} "
                "must be >= 0"
            )
        if not learn_interval >= 0:
            raise SpecError(f"learn_interval={learn_interval!r} must be >= 0 seconds")
        self.learn_interval = float(learn_interval)
        self._unsettled = False  # learned something the derived estimates do not show yet
        self._settled_at = -math.inf
        self.duration_alpha = float(duration_alpha)
        self.max_prefetch = int(max_prefetch)
        self.prefetch_threshold = float(prefetch_threshold)
        self.addrs: list[str] = []
        self.index: dict[str, int] = {}
        self.eligible = np.zeros(0, bool)
        self.maxprio = np.zeros(0, np.float64)  # highest priority held (-inf: none)
        for name in _FLOAT_FIELDS:
            setattr(self, name, np.zeros(0, np.float64))
        for name in _INT_FIELDS:
            setattr(self, name, np.zeros(0, np.int64))
        # [predicted end of compute, priority, duration] of the tasks each worker holds
        self.held: list[list[list[float]]] = []
        self.dur: dict[str, np.ndarray] = {}
        # derived arrays, valid until a signal, a duration or the membership changes
        self._cache: dict[object, Any] = {}
        # bumped on every change, so callers can cache per-decision work between changes
        self.version = 0

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
            raise SpecError(f"worker {addr} has nthreads={nthreads!r}; expected >= 1")
        self.addrs.append(addr)
        self.eligible = np.append(self.eligible, True)
        self.maxprio = np.append(self.maxprio, -np.inf)
        for name in _FLOAT_FIELDS:
            setattr(self, name, np.append(getattr(self, name), 0.0))
        for name in _INT_FIELDS:
            setattr(self, name, np.append(getattr(self, name), 0))
        for name in _NAN_FIELDS:
            getattr(self, name)[-1] = np.nan
        self.next_free[-1] = self.first_free[-1] = -np.inf
        self.nthreads[-1] = nthreads
        self.held.append([])
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
        del self.held[i]
        self.eligible = np.delete(self.eligible, i)
        self.maxprio = np.delete(self.maxprio, i)
        for name in (*_FLOAT_FIELDS, *_INT_FIELDS):
            setattr(self, name, np.delete(getattr(self, name), i))
        for kind in self.dur:
            self.dur[kind] = np.delete(self.dur[kind], i)
        self._reindex()

    def _changed(self) -> None:
        self._cache.clear()
        self.version += 1
        self._unsettled = False

    def _learned(self) -> None:
        if self.learn_interval > 0:
            self._unsettled = True  # shown from the next settle() due
        else:
            self._changed()

    def settle(self, now: float) -> None:
        """Show what was learned since the last call, if ``learn_interval`` has passed
        (monotonic ``now``; the dispatcher calls it at the start of every pass)."""
        if self._unsettled and now - self._settled_at >= self.learn_interval:
            self._settled_at = now
            self._changed()

    def set_eligible(self, i: int, eligible: bool) -> None:
        """Mark worker ``i`` (in)eligible until the next :meth:`refresh`."""
        self.eligible[i] = eligible
        self.version += 1

    def _reindex(self) -> None:
        self.index = {a: i for i, a in enumerate(self.addrs)}
        # deterministic tie-break: rank in sorted address order, stable across runs
        self.tiebreak = np.argsort(np.argsort(np.array(self.addrs, dtype=object))).astype(np.int64)
        self._changed()

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
                raise SpecError(f"{name} has shape {arr.shape}; expected ({n},)")
            setattr(self, name, arr)
        self.eligible = np.asarray(eligible, bool)
        for i in range(n):
            if self.held[i] or self.other[i]:
                self._update_held(i)
        self._changed()

    # ------------------------------------------------------------------ in-flight work
    # Each task a worker holds is an entry [predicted end of its compute, priority, duration]
    # in the scheduler's clock. Predictions chain (a task starts when a thread frees) and correct
    # themselves: when a task's result arrives, the tasks still on that worker shift by the
    # error of its prediction, so estimates never drift further than one task.

    def forget_work(self) -> None:
        """Drop every in-flight task (the scheduler forgot them); keep what was learned."""
        for i in range(len(self.addrs)):
            self.held[i].clear()
            self.busy[i] = 0
            self._update_held(i)
        self.version += 1

    def thread_free(self, i: int) -> bool:
        """Whether worker ``i`` has a thread with nothing to run."""
        return self.busy[i] + self.other[i] < self.nthreads[i]

    def assign(self, i: int, kind: str, priority: float, now: float) -> list[float]:
        """Count a task of ``kind`` placed on worker ``i`` at ``now``; return its entry."""
        start = float(self.start_time(priority, now)[i])
        d = float(self.duration_for(kind)[i])
        held = self.held[i]
        for e in held:  # it runs before the lower-priority tasks still waiting there
            if e[1] < priority and e[0] - e[2] >= start:
                e[0] += d
        entry = [start + d, priority, d]
        held.append(entry)
        self.busy[i] += 1
        self.assigned[i] += 1
        self._update_held(i)
        self.version += 1
        return entry

    def release(self, i: int, entry: list[float], now: float | None = None) -> None:
        """The task of ``entry`` left worker ``i``; ``now`` if its result just arrived."""
        self.busy[i] = max(0.0, self.busy[i] - 1)
        held = self.held[i]
        for k, e in enumerate(held):
            if e is entry:
                del held[k]
                break
        if now is not None and held:
            # its compute ended about half an overhead ago: shift the rest by the error
            error = (now - 0.5 * float(self.overhead_filled()[i])) - entry[0]
            for e in held:
                e[0] += error
        self._update_held(i)
        self.version += 1

    def _update_held(self, i: int) -> None:
        held = self.held[i]
        self.maxprio[i] = max(e[1] for e in held) if held else -np.inf
        # a new task on a full worker starts when the (busy - nthreads + 1)-th task ends,
        # or, if it outranks everything there, when the first running task ends
        k = int(self.busy[i] + self.other[i]) - int(self.nthreads[i])
        if k < 0 or not held:
            self.next_free[i] = self.first_free[i] = -np.inf
        else:
            ends = sorted(e[0] for e in held)
            self.next_free[i] = ends[min(k, len(held) - 1)]
            self.first_free[i] = ends[0]

    def start_time(self, priority: float, now: float) -> np.ndarray:
        """When a task of ``priority`` placed now would start computing on each worker.

        Not before half a hand-over overhead from now (the message must get there). Dask
        workers run ready tasks by priority, so a task that outranks everything a worker
        holds waits only for a running task; any other waits behind the queue.
        """
        at = np.where(priority > self.maxprio, self.first_free, self.next_free)
        return np.maximum(at, now + 0.5 * self.overhead_filled())

    def expected_result(self, kind: str, priority: float, now: float) -> np.ndarray | None:
        """When a task placed now would have its result back at the scheduler, per worker.

        None if ``kind`` was never measured (nothing to predict with).
        """
        if math.isnan(self.median_duration(kind)):
            return None
        return (
            self.start_time(priority, now) + self.duration_for(kind) + 0.5 * self.overhead_filled()
        )

    def throughput(self, kind: str) -> np.ndarray:
        """Tasks of ``kind`` per second each worker completes when kept busy.

        A worker that may hold prefetched work hides its hand-over overhead; one that may
        not pays it on every task.
        """
        d = np.maximum(self.duration_for(kind), 1e-9)
        pipelined = self.capacity(kind) > self.nthreads
        return self.nthreads / np.where(pipelined, d, d + self.overhead_filled())

    # ------------------------------------------------------------------ learning
    def _ewma(self, old: float, new: float) -> float:
        a = self.duration_alpha
        return new if math.isnan(old) else a * new + (1 - a) * old

    def record_duration(self, i: int, kind: str, seconds: float) -> None:
        """Fold one measured compute duration of ``kind`` on worker ``i`` into its averages."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        d = self.dur.get(kind)
        first = d is None or math.isnan(d[i])
        if d is None:
            d = self.dur[kind] = np.full(len(self.addrs), np.nan)
        d[i] = self._ewma(d[i], seconds)
        self.dur_any[i] = self._ewma(self.dur_any[i], seconds)
        if first:  # a kind's first measurement is shown at once
            self._changed()
        else:
            self._learned()

    def record_overhead(self, i: int, seconds: float) -> None:
        """Fold one hand-over overhead (turnaround minus compute) of worker ``i``."""
        if seconds >= 0 and math.isfinite(seconds):
            self.overhead[i] = self._ewma(self.overhead[i], seconds)
            self._learned()

    def _cached(self, key: object, compute: Callable[[], _T]) -> _T:
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

    def duration_for(self, kind: str) -> np.ndarray:
        """Each worker's expected compute time for ``kind``: its own average, else the fleet
        median, else its average over all kinds, else 0."""

        def compute() -> np.ndarray:
            d = self.dur.get(kind)
            med = self.median_duration(kind)
            if d is None or math.isnan(med):
                return np.nan_to_num(self.dur_any, nan=0.0)
            return np.where(np.isnan(d), med, d)

        return self._cached(("duration", kind), compute)

    # ------------------------------------------------------------------ signals
    def rtt_filled(self) -> np.ndarray:
        """Round trips with unknown values replaced by the fleet median (0 if none known)."""
        return self._cached("rtt", lambda: _fill(self.rtt, 0.0))

    def overhead_filled(self) -> np.ndarray:
        """Hand-over overheads; the round trip where none was measured yet."""
        return self._cached(
            "overhead", lambda: np.where(np.isnan(self.overhead), self.rtt_filled(), self.overhead)
        )

    def capacity(self, kind: str) -> np.ndarray:
        """Tasks of ``kind`` each worker may hold: its threads plus a prefetch that hides its
        hand-over overhead.

        The prefetch is ``ceil(overhead / duration)`` (the bandwidth-delay product, in tasks),
        capped at ``max_prefetch``, and zero where the overhead is below
        ``prefetch_threshold`` of the duration or the kind was never measured: long agent
        rounds get none, so a free worker really is free and new high-priority work is not
        stuck behind prefetched work.
        """

        def compute() -> np.ndarray:
            cap = self.nthreads.astype(np.float64)
            if self.max_prefetch and len(cap) and not math.isnan(self.median_duration(kind)):
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = self.overhead_filled() / self.duration_for(kind)
                ratio = np.nan_to_num(ratio, nan=0.0, posinf=float(self.max_prefetch))
                extra = np.where(ratio > self.prefetch_threshold, np.ceil(ratio), 0.0)
                cap = cap + np.minimum(extra, self.max_prefetch)
            return cap

        return self._cached(("capacity", kind), compute)

    def free(self, kind: str, priority: float | None = None) -> np.ndarray:
        """Workers that may take a task of ``kind`` now: eligible and below capacity, or, for
        a task of ``priority`` higher than everything a worker holds, at most one above it
        (express).
        """
        load = self.busy + self.other
        cap = self.capacity(kind)
        ok = load < cap
        if priority is not None:
            ok = ok | ((load < cap + 1) & (self.maxprio < priority))
        return self.eligible & ok

    def signals(self, kind: str) -> Signals:
        """The scoring signals for a task of ``kind`` (busy counts every task on the worker)."""
        return Signals(
            cpu=self.cpu,
            accel=self.accel,
            busy=self.busy + self.other,
            slots=self.capacity(kind),
            slowness=self.slowness(kind),
            rtt=self.rtt_filled(),
            tiebreak=self.tiebreak,
        )


def _fill(a: np.ndarray, default: float) -> np.ndarray:
    known = ~np.isnan(a)
    if known.all():
        return a
    return np.where(known, a, float(np.median(a[known])) if known.any() else default)
