"""The source document's ``assign_task``, kept as a baseline for benchmarks and tests.

    for task in tasks:
        best_node = argmax over nodes of
            (1 - node.load) * 0.6 + (1 - node.latency) * 0.3 + task.priority * 0.1
        best_node.enqueue(task)

:class:`DocumentPlacementPlugin` does exactly this when tasks arrive (``update_graph``), with
the same :func:`~cluster_app.placement.scoring.score` as the real plugin but read the way the
document reads it: ``load`` is the utilisation last reported (refreshed on a heartbeat-like
period, not after each enqueue), nothing measures slowness, and the priority term is added.
It therefore keeps both flaws the real plugin fixes: a batch herds onto one node, and
priority never changes where a task goes. It pins each task to its node (push), so it has no
failure handling either. Not for production use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from cluster_app.placement.probe import RTT_METRIC
from cluster_app.placement.scoring import Signals, Weights, best, score

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed.scheduler import Scheduler

__all__ = ["DocumentPlacementPlugin"]


class DocumentPlacementPlugin(SchedulerPlugin):
    """Push placement by the source document's formula (see the module docstring).

    Hooks run inline on the scheduler's event loop.

    Parameters
    ----------
    key_prefixes : tuple of str
        Keys it places.
    weights : Weights
    latency_ref : float
        Round trip (seconds) that counts as latency 1.
    refresh_interval : float
        Seconds between load snapshots (the document's monitoring period).
    """

    name = "cluster-app-placement-document"

    def __init__(
        self,
        key_prefixes: tuple[str, ...] = ("agent-",),
        weights: Weights = Weights(),
        latency_ref: float = 0.1,
        refresh_interval: float = 0.5,
    ) -> None:
        self.key_prefixes = tuple(key_prefixes)
        self.weights = weights.validated()
        self.latency_ref = latency_ref
        self.refresh_interval = refresh_interval
        self.scheduler: Scheduler | None = None
        self.addrs: list[str] = []
        self.sig: Signals | None = None
        self.placed = 0

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._snapshot()
        pc = PeriodicCallback(self._refresh, self.refresh_interval * 1000)
        scheduler.periodic_callbacks[self.name] = pc
        pc.start()

    async def close(self) -> None:
        if self.scheduler is not None:
            pc = self.scheduler.periodic_callbacks.pop(self.name, None)
            if pc is not None:
                pc.stop()

    def _refresh(self) -> None:
        s = self.scheduler
        if s is None:
            return
        if s.plugins.get(self.name) is not self:  # unregistered: stop refreshing
            self.scheduler = None
            pc = s.periodic_callbacks.pop(self.name, None)
            if pc is not None:
                pc.stop()
            return
        self._snapshot()

    def _snapshot(self) -> None:
        s = self.scheduler
        assert s is not None  # called only while attached (start, _refresh)
        wss = [ws for ws in s.workers.values() if ws in s.running]
        self.addrs = [ws.address for ws in wss]
        n = len(wss)

        def metric(ws, name: str) -> float:
            v = ws.metrics.get(name)
            return float(v) if isinstance(v, (int, float)) else 0.0

        self.sig = Signals(
            cpu=np.array([metric(ws, "cpu") / 100 / max(ws.nthreads, 1) for ws in wss]),
            accel=np.array([metric(ws, "gpu_utilization") / 100 for ws in wss]),
            busy=np.array([len(ws.processing) for ws in wss], np.float64),
            slots=np.array([ws.nthreads for ws in wss], np.float64),
            slowness=np.ones(n),
            rtt=np.array([metric(ws, RTT_METRIC) for ws in wss]),
            tiebreak=np.argsort(np.argsort(np.array(self.addrs, dtype=object))),
        )

    def update_graph(
        self, scheduler: Scheduler, *, tasks: Sequence[Key] = (), **kwargs: Any
    ) -> None:
        if self.sig is None or not self.addrs:
            return
        for key in tasks:
            text = str(key[0] if isinstance(key, tuple) and key else key)
            ts = scheduler.tasks.get(key)
            if not text.startswith(self.key_prefixes) or ts is None or ts.state != "released":
                continue
            priority = -ts.priority[0] if ts.priority else 0
            scores = score(
                self.sig,
                self.weights,
                latency_ref=self.latency_ref,
                include_task=False,
                priority=priority,
            )
            ts.worker_restrictions = {self.addrs[best(scores, self.sig.tiebreak)]}
            ts.loose_restrictions = False
            self.placed += 1
