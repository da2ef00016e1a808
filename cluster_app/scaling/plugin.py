"""``ScalingPlugin``: our policy as the scheduler's adaptive target, and safe scale-down.

``LocalCluster.adapt()`` calls ``scheduler.adaptive_target()``; the dask-kubernetes operator asks
the same over HTTP (``/api/v1/adaptive_target``) or RPC (the ``adaptive_target`` handler). The
plugin replaces both with :meth:`ScalingPlugin.adaptive_target`, so every autoscaler follows one
policy (:mod:`cluster_app.scaling.policy`), and puts Dask's own back when it closes.

Its demand comes from the scheduler's own counters (task prefixes: no loop over tasks) and from
the :class:`~cluster_app.observe.monitor.FleetMonitor`'s view of the running runs (their widths
and standby targets).

Scale-down: Dask asks every plugin which workers it may retire
(``valid_workers_downscaling``). We never offer a worker that

- runs agent work or hosts a long-running task (a run's controller, which also checkpoints);
- holds a delta its pusher has not written yet (the agent reports the count with its heartbeat,
  and flushes it on retirement: ``AgentPlugin.teardown``);
- is an active agent or a hot standby of a running run;
- served a batch of a live A/B split in the last ``SERVING_MEMORY`` seconds.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import SchedulerPlugin

from cluster_app.observe.events import PENDING_PUSHES
from cluster_app.observe.monitor import PLUGIN_NAME as MONITOR
from cluster_app.observe.table import ACTIVE, STANDBY
from cluster_app.scaling.policy import Demand, ScalingSpec, Stabilizer, raw_target

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, WorkerState

__all__ = ["PLUGIN_NAME", "ScalingPlugin"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "cluster-app-scaling"
# the run loop's task kinds (keys ``agent-<kind>-<run id>-...``): the run's width covers them
_RUN_KINDS = frozenset({"round", "warm", "init", "eval"})
SERVING_MEMORY = 30.0
_COUNTED = ("processing", "no-worker", "queued")
_UNKNOWN_SECONDS = 0.5  # a kind that never finished yet (Dask's unknown-task-duration)


class ScalingPlugin(SchedulerPlugin):
    """See the module docstring."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, spec: ScalingSpec | None = None) -> None:
        self.spec = spec or ScalingSpec.from_config()
        self.stabilizer = Stabilizer(self.spec.scale_down_seconds)
        self.scheduler: Scheduler | None = None
        self._dask_target: Any = None
        self.served: dict[str, float] = {}  # worker -> when it last finished a serving batch
        self.last: dict[str, Any] = {}  # the last decision, for the dashboard and tests

    def __getstate__(self) -> dict:
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._dask_target = scheduler.adaptive_target
        scheduler.adaptive_target = self.adaptive_target  # type: ignore[method-assign]
        scheduler.handlers["adaptive_target"] = self.adaptive_target

    async def close(self) -> None:
        s = self.scheduler
        if s is not None and s.adaptive_target == self.adaptive_target:
            s.adaptive_target = self._dask_target  # type: ignore[method-assign]
            s.handlers["adaptive_target"] = self._dask_target
        self.scheduler = None

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "processing" and finish == "memory" and "agent-serve" in str(key):
            worker = kwargs.get("worker")
            if worker:
                self.served[worker] = time.monotonic()

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self.served.pop(worker, None)

    # ------------------------------------------------------------------ the target
    def demand(self) -> Demand:
        s = self.scheduler
        assert s is not None
        rounds, other = 0, 0.0
        for name, prefix in s.task_prefixes.items():
            if not name.startswith("agent-"):
                continue
            n = sum(prefix.states.get(state, 0) for state in _COUNTED)
            kind = name.split("-")[1]
            if kind == "round":
                rounds += n
            elif kind not in _RUN_KINDS and n:  # a run's own tasks are in its width
                seconds = prefix.duration_average
                other += n * (seconds if seconds > 0 else _UNKNOWN_SECONDS)
        width, standby = rounds, 0
        monitor = s.plugins.get(MONITOR)
        if monitor is not None:
            running = [v for v in monitor.runs.values() if v.running]  # type: ignore[attr-defined]
            if running:
                width = max(rounds, sum(v.agents or v.active for v in running))
                standby = sum(v.standby_target or 0 for v in running)
        return Demand(run_width=width, other_seconds=other, standby=standby)

    def adaptive_target(self, target_duration: Any = None) -> int:
        """The workers the fleet wants now (stabilised; ``target_duration`` is Dask's knob
        for its own target, accepted and unused)."""
        demand = self.demand()
        raw = raw_target(demand, self.spec)
        target = self.stabilizer(raw, time.monotonic())
        self.last = {"demand": demand, "raw": raw, "target": target, "time": time.time()}
        return target

    # ------------------------------------------------------------------ scale-down
    def valid_workers_downscaling(
        self, scheduler: Scheduler, workers: list[WorkerState]
    ) -> list[WorkerState]:
        members = self._run_members(scheduler)
        canary = self._live_canary(scheduler)
        now = time.monotonic()
        keep = []
        for ws in workers:  # the candidates only: Dask's own short list
            busy = ws.long_running or any(str(ts.key).startswith("agent-") for ts in ws.processing)
            pending = (ws.metrics.get(PENDING_PUSHES) or 0) > 0
            serving = canary and now - self.served.get(ws.address, -1e9) < SERVING_MEMORY
            if not (busy or pending or serving or ws.address in members):
                keep.append(ws)
        return keep

    def _run_members(self, scheduler: Scheduler) -> set[str]:
        """Active agents and hot standbys of running runs (vectorised over the table)."""
        monitor = scheduler.plugins.get(MONITOR)
        if monitor is None:
            return set()
        t, runs = monitor.agents, monitor.runs  # type: ignore[attr-defined]
        running = [i for i, r in enumerate(t.runs) if r in runs and runs[r].running]
        n = len(t)
        mask = np.isin(t.run[:n], running) & np.isin(t.role[:n], (ACTIVE, STANDBY))
        return {t.addrs[i] for i in np.flatnonzero(mask)}

    def _live_canary(self, scheduler: Scheduler) -> bool:
        monitor = scheduler.plugins.get(MONITOR)
        if monitor is None:
            return False
        return any(
            r.get("state") == "active" and len(r.get("arms") or []) > 1
            for r in monitor.serving.values()  # type: ignore[attr-defined]
        )
