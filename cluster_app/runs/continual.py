"""The run loop's continual-learning duties (``RunSpec.continual``; :mod:`cluster_app.learning`).

Before each round, :meth:`ContinualRun.consolidate` makes sure the tasks finished by then are
consolidated in the run's store (replay buffer, Fisher and anchor), at the version committed
when the last of them ended: at a task switch that is the version the new task starts from;
after a crash that lost it, the run record's history names that version, so the rebuilt
consolidation is the same. After each round, :meth:`ContinualRun.evaluate` evaluates every
task seen so far on the spec's cadence and at the end of every task.
"""

from __future__ import annotations

import logging
import time

from cluster_app.errors import RunError
from cluster_app.learning import consolidation
from cluster_app.runs.agents import RunAgents
from cluster_app.runs.record import RunRecord
from cluster_app.runs.spec import RoundRecord, RunSpec

__all__ = ["ContinualRun"]

logger = logging.getLogger(__name__)


class ContinualRun:
    """A run's consolidations and per-task evaluations (module docstring); inert for a run
    that is not continual."""

    def __init__(self, spec: RunSpec, agents: RunAgents, record: RunRecord) -> None:
        self.spec, self.agents, self.record = spec, agents, record
        self.start_eval: list[dict] | None = None
        self.consolidations: list[dict] = []
        self.consolidated = 0  # tasks known consolidated in the store (looked up once each)

    def start(self, version: int) -> None:
        """Evaluate the starting version on the prior tasks (what adaptation may forget)."""
        cs = self.spec.continual
        if cs is not None and cs.prior_tasks:
            ev = self.agents.evaluate_tasks(version, len(cs.prior_tasks) - 1)
            self.start_eval = ev["tasks"]

    def consolidate(self, r: int, current: int) -> None:
        """Before round ``r`` (the run is at version ``current``)."""
        cs = self.spec.continual
        if cs is None or not cs.protects:
            return
        k = cs.consolidated_before(r)
        if k <= self.consolidated:
            return
        self.consolidated = k
        if consolidation.exists(self.spec.run_url, k):
            return
        switch = cs.start_round(k)  # the first round after task k-1
        version = current if switch == r else self._version_after(switch - 1)
        t0 = time.perf_counter()
        done = self.agents.consolidate(version, k)
        done["seconds"] = time.perf_counter() - t0
        self.consolidations.append(done)
        logger.info("run %s: %d task(s) consolidated at version %d", self.spec.run_id, k, version)

    def _version_after(self, r: int) -> int:
        """The version round ``r`` committed (version 0 before round 0)."""
        if r < 0:
            return 0
        for h in self.record.history():
            if h["round"] == r:
                return h["version"]
        raise RunError(f"the run record has no round {r}: cannot consolidate at its version")

    def evaluate(self, rec: RoundRecord) -> float:
        """Evaluate ``rec``'s version on every task seen so far when the cadence says so;
        returns the seconds spent (evaluation time, not training time)."""
        cs = self.spec.continual
        if cs is None:
            return 0.0
        rec.task = cs.task_index(rec.round)
        ends_task = (rec.round + 1) % cs.rounds_per_task == 0
        if not ends_task and (rec.round + 1) % cs.eval_every:
            return 0.0
        t0 = time.perf_counter()
        rec.task_eval = self.agents.evaluate_tasks(rec.version, rec.task)["tasks"]
        return time.perf_counter() - t0

    def summary(self) -> dict:
        if self.spec.continual is None:
            return {}
        return {"start": self.start_eval, "consolidations": self.consolidations}
