"""Columnar state the monitor keeps on the scheduler: the agents table and fixed histograms.

Both are numpy arrays updated per event, so a dashboard refresh or a Prometheus scrape reads
them with vectorised operations: their cost does not grow with a Python loop over workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["ROLES", "AgentTable", "Histogram"]

ROLES = ("idle", "active", "standby")
IDLE, ACTIVE, STANDBY = 0, 1, 2


class AgentTable:
    """One row per worker: role, run, version, cumulative local steps, last loss, last update.

    Rows are added when a worker joins (or first appears in an event) and removed by swapping
    the last row into the hole, so every column stays a dense array.
    """

    role: np.ndarray  # int8: IDLE, ACTIVE, STANDBY
    run: np.ndarray  # int32 run code (-1: none)
    version: np.ndarray  # int64 (-1: unknown)
    step: np.ndarray  # int64 local steps trained, all runs
    loss: np.ndarray  # float64 last round's training loss
    updated: np.ndarray  # float64 wall-clock time of the last update

    def __init__(self, capacity: int = 64) -> None:
        self.addrs: list[str] = []
        self.index: dict[str, int] = {}
        self.runs: list[str] = []  # run codes -> run ids
        self._run_code: dict[str, int] = {}
        self.generation = 0  # bumped when rows are added or removed (row numbers change)
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        n = len(self.addrs)
        old = self.__dict__.get("role")
        cols = {
            "role": (np.int8, IDLE),
            "run": (np.int32, -1),
            "version": (np.int64, -1),
            "step": (np.int64, 0),
            "loss": (np.float64, np.nan),
            "updated": (np.float64, np.nan),
        }
        for name, (dtype, fill) in cols.items():
            col = np.full(capacity, fill, dtype)
            if old is not None:
                col[:n] = getattr(self, name)[:n]
            setattr(self, name, col)

    def __len__(self) -> int:
        return len(self.addrs)

    def row(self, addr: str) -> int:
        """The row of ``addr``, added (idle) if it has none."""
        i = self.index.get(addr)
        if i is None:
            i = len(self.addrs)
            if i == len(self.role):
                self._alloc(2 * i)
            self.addrs.append(addr)
            self.index[addr] = i
            self.generation += 1
            self.role[i], self.run[i], self.version[i] = IDLE, -1, -1
            self.step[i], self.loss[i], self.updated[i] = 0, np.nan, np.nan
        return i

    def remove(self, addr: str) -> None:
        i = self.index.pop(addr, None)
        if i is None:
            return
        last = len(self.addrs) - 1
        if i != last:
            moved = self.addrs[last]
            self.addrs[i] = moved
            self.index[moved] = i
            for col in (self.role, self.run, self.version, self.step, self.loss, self.updated):
                col[i] = col[last]
        self.addrs.pop()
        self.generation += 1

    def run_code(self, run: str) -> int:
        code = self._run_code.get(run)
        if code is None:
            code = self._run_code[run] = len(self.runs)
            self.runs.append(run)
        return code

    def set_round(
        self,
        run: str,
        version: int,
        agents: Iterable[dict],
        standby: Sequence[str],
        now: float,
    ) -> None:
        """A run's committed round: its agents are active at ``version``, its standbys on
        standby, and whoever held a role in the run before and has none now is idle."""
        code = self.run_code(run)
        n = len(self.addrs)
        self.role[:n][self.run[:n] == code] = IDLE
        for a in agents:
            i = self.row(a["worker"])
            self.role[i], self.run[i], self.version[i] = ACTIVE, code, version
            self.step[i] += a.get("steps") or 0
            loss = a.get("loss")
            self.loss[i] = np.nan if loss is None else loss
            self.updated[i] = now
        for addr in standby:
            i = self.row(addr)
            self.role[i], self.run[i], self.version[i], self.updated[i] = (
                STANDBY,
                code,
                version,
                now,
            )

    def end_run(self, run: str) -> None:
        """A run ended: its agents are idle (they keep their last values)."""
        code = self._run_code.get(run)
        if code is not None:
            n = len(self.addrs)
            self.role[:n][self.run[:n] == code] = IDLE

    def counts(self) -> dict[str, int]:
        """Agents per role (one ``bincount``)."""
        c = np.bincount(self.role[: len(self.addrs)], minlength=len(ROLES))
        return {name: int(c[k]) for k, name in enumerate(ROLES)}

    def top(self, k: int, score: np.ndarray | None = None) -> np.ndarray:
        """The rows to show first: active, then standby, then idle; best score first within a
        role (``score`` aligned with the rows; NaN last). A partial sort when the fleet is big."""
        n = len(self.addrs)
        if n == 0:
            return np.zeros(0, np.int64)
        rank = np.choose(self.role[:n], [2, 0, 1]).astype(np.float64) * 1e6
        if score is not None:
            s = np.nan_to_num(score[:n], nan=-1e5, posinf=1e5, neginf=-1e5)
            rank -= np.clip(s, -1e5, 1e5)
        if k < n:
            part = np.argpartition(rank, k)[:k]
            return part[np.argsort(rank[part], kind="stable")]
        return np.argsort(rank, kind="stable")


class Histogram:
    """A Prometheus-style histogram kept as numpy bucket counts (cumulative on export)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = np.asarray(sorted(buckets), np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, np.int64)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float | None) -> None:
        if value is None or not np.isfinite(value):
            return
        self.counts[np.searchsorted(self.bounds, value, side="left")] += 1
        self.sum += float(value)

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, ``+Inf`` last, as Prometheus exposes them."""
        cum = np.cumsum(self.counts)
        les = [f"{b:g}" for b in self.bounds] + ["+Inf"]
        return [(le, float(c)) for le, c in zip(les, cum, strict=True)]

    def quantile(self, q: float) -> float | None:
        """The bucket upper bound holding quantile ``q`` (None when empty or beyond the last)."""
        total = self.count
        if total == 0:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return float(self.bounds[i]) if i < len(self.bounds) else None
