"""``PlacementPlugin``: the Dask ``SchedulerPlugin`` that places agent tasks (pull dispatch).

How a task travels (all on the scheduler's event loop; nothing here does I/O or blocks):

1. ``update_graph`` (tasks are still ``released``): a task whose key starts with one of the
   configured prefixes, or that is annotated ``cluster_app_placement=True``, is *managed*: its
   worker restriction is set to :data:`PARK`, an address no worker can have. Loose worker
   restrictions (``workers=[...], allow_other_workers=True``, as the run controller gives
   its rounds) become preferred workers: the task waits for one of them while any is in the
   cluster and goes anywhere once they are all gone. Tasks with hard worker, host or
   resource restrictions, and actors, are left to Dask.
2. When its dependencies are done Dask tries to run it, finds no valid worker and parks it in
   ``no-worker``; the ``transition`` hook then puts it in the priority queue.
3. A dispatch pass (scheduled with ``call_soon`` after anything that frees a slot or queues a
   task, and by a periodic refresh) asks the :class:`~cluster_app.placement.dispatch.Dispatcher`
   which queued tasks go to which free workers, restricts each to its worker and calls
   ``scheduler.transitions({key: "processing"})``: from there on it is an ordinary Dask task.
4. When it leaves ``processing`` its slot is freed; if it did not finish (worker lost, retry,
   reschedule) its restriction goes back to :data:`PARK`, so it parks and re-enters the queue
   at its old place instead of following Dask's default placement.

Results, errors, retries, cancellation, the task stream and progress bars are Dask's own.
A snapshot of the plugin's view (per-worker signals and scores, queue depth by priority,
decisions/s) is served by the scheduler handler ``cluster_app_placement``
(:func:`placement_snapshot` calls it from a client).

Note: ``distributed.scheduler.no-workers-timeout`` (off by default) would fail parked tasks;
leave it off, or above the longest queueing time you expect, when the plugin is on.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Hashable, Sequence
from time import monotonic, time
from typing import TYPE_CHECKING, Any, cast

import dask.config
import numpy as np
from distributed import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from cluster_app.placement.probe import RTT_METRIC
from cluster_app.placement.queue import QueuedTask
from cluster_app.placement.settings import PlacementSettings

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed import Client
    from distributed.scheduler import Scheduler, TaskStateState

__all__ = ["HANDLER", "PARK", "PLUGIN_NAME", "PlacementPlugin", "placement_snapshot"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "cluster-app-placement"
HANDLER = "cluster_app_placement"
ANNOTATION = "cluster_app_placement"
# a worker restriction no worker can satisfy: the task waits in ``no-worker`` for the plugin
PARK = "cluster-app-placement://parked"


def _key_text(key: Hashable) -> str:
    # dask collection keys are tuples whose first element names the collection
    return str(key[0] if isinstance(key, tuple) and key else key)


def _compute_seconds(startstops: Any) -> float | None:
    try:
        total = sum(ss["stop"] - ss["start"] for ss in startstops if ss["action"] == "compute")
    except (TypeError, KeyError):
        return None
    return total if total > 0 else None


class PlacementPlugin(SchedulerPlugin):
    """Places agent tasks by score with capacity-driven dispatch (see the module docstring).

    Parameters
    ----------
    settings : PlacementSettings, optional
        Default: read from ``cluster-app.placement.*`` where the plugin is created (the
        client), then shipped with it to the scheduler.

    Notes
    -----
    Every hook runs inline on the scheduler's event loop thread: they only touch in-memory
    state and numpy arrays, and the dispatch pass is deferred with ``call_soon`` rather
    than run inside another transition.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, settings: PlacementSettings | None = None) -> None:
        self.settings = settings or PlacementSettings.from_config()
        self.dispatcher = self.settings.build()
        self.scheduler: Scheduler | None = None
        self.managed: dict[Key, QueuedTask] = {}
        self._pass_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_kind = "agent"

    def __getstate__(self) -> dict:
        return {"settings": self.settings}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, scheduler: Scheduler) -> None:
        """Attach to the scheduler: workers, handler, periodic refresh (event loop)."""
        self.scheduler = scheduler
        self._loop = asyncio.get_running_loop()
        for ws in scheduler.workers.values():
            self.dispatcher.fleet.add(ws.address, ws.nthreads)
        scheduler.handlers[HANDLER] = self.snapshot
        pc = PeriodicCallback(self._refresh, self.settings.refresh_interval * 1000)
        scheduler.periodic_callbacks[PLUGIN_NAME] = pc
        pc.start()
        if dask.config.get("distributed.scheduler.no-workers-timeout", None):
            logger.warning(
                "distributed.scheduler.no-workers-timeout is set: agent tasks waiting in the "
                "placement queue longer than that will fail; unset it to queue without limit"
            )

    async def close(self) -> None:
        """The scheduler is closing: stop the refresh (event loop)."""
        self._detach(hand_back=False)

    def _detach(self, hand_back: bool = True) -> None:
        """Stop; with ``hand_back``, give every managed task back to Dask's own placement.

        Runs when the scheduler closes, or from the refresh once the plugin finds itself
        unregistered (``Scheduler.remove_plugin`` calls no hook), so no task stays parked.
        """
        s = self.scheduler
        if s is None:
            return
        self.scheduler = None
        pc = s.periodic_callbacks.pop(PLUGIN_NAME, None)
        if pc is not None:
            pc.stop()
        if s.handlers.get(HANDLER) == self.snapshot:
            del s.handlers[HANDLER]
        if not hand_back:
            return
        recs: dict[Key, TaskStateState] = {}
        for key, task in self.managed.items():
            ts = s.tasks.get(key)
            if ts is None:
                continue
            ts.worker_restrictions = set(task.preferred) if task.preferred else None
            ts.loose_restrictions = bool(task.preferred)
            if ts.state == "no-worker":
                recs[key] = "processing"
        self.managed.clear()
        if recs:
            s.transitions(recs, stimulus_id=f"cluster-app-placement-detach-{time()}")

    def restart(self, scheduler: Scheduler) -> None:
        """The scheduler forgot every task: start from an empty queue (event loop)."""
        fleet = self.dispatcher.fleet
        fleet.forget_work()  # what it learned about the workers still holds
        self.dispatcher = self.settings.build()
        self.dispatcher.fleet = fleet
        self.managed.clear()

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        """A joining worker is eligible at once (event loop)."""
        ws = scheduler.workers.get(worker)
        if ws is not None:
            fleet = self.dispatcher.fleet
            i = fleet.add(worker, ws.nthreads)
            fleet.set_eligible(i, ws in scheduler.running)  # else from the next refresh
            self._request_pass()

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        """Forget a worker; Dask has already released its tasks back to us (event loop)."""
        self.dispatcher.fleet.remove(worker)
        for key, a in list(self.dispatcher.inflight.items()):
            if a.addr == worker:  # not seen leaving processing: do it now
                self.dispatcher.requeue(key)
        self._request_pass()

    # ------------------------------------------------------------------ task hooks
    def _wants(self, key: Key, annotations: dict[str, dict[Key, Any]]) -> bool:
        flag = annotations.get(ANNOTATION, {}).get(key)
        if flag is not None:
            return bool(flag)
        return _key_text(key).startswith(self.settings.key_prefixes)

    def update_graph(
        self,
        scheduler: Scheduler,
        *,
        tasks: Sequence[Key] = (),
        annotations: dict[str, dict[Key, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        """Take over new agent tasks before they transition (event loop)."""
        annotations = annotations or {}
        for key in tasks:
            if key in self.managed or not self._wants(key, annotations):
                continue
            ts = scheduler.tasks.get(key)
            if ts is None or ts.state != "released" or ts.actor or ts.run_spec is None:
                continue
            if ts.host_restrictions or ts.resource_restrictions:
                continue
            if ts.worker_restrictions and not ts.loose_restrictions:
                continue  # pinned by the caller: Dask places it
            preferred = frozenset(ts.worker_restrictions) if ts.worker_restrictions else None
            ts.worker_restrictions = {PARK}
            ts.loose_restrictions = False
            priority = -ts.priority[0] if ts.priority else 0
            self.managed[key] = QueuedTask(
                key=key,
                priority=float(priority),
                kind=ts.prefix.name,
                enqueued=math.nan,
                preferred=preferred,
            )

    def transition(
        self, key: Key, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any
    ) -> None:
        """Follow managed tasks through Dask's state machine (event loop, inline)."""
        task = self.managed.get(key)
        if task is None:
            return
        d = self.dispatcher
        if finish == "no-worker":
            self._park(key)
            if key in d.inflight:  # a hand-over that did not happen
                d.requeue(key)
            elif key not in d.queue:
                if math.isnan(task.enqueued):
                    task.enqueued = monotonic()
                d.submit(task)
            self._request_pass()
        elif start == "no-worker" and finish != "processing":
            d.queue.remove(key)  # released, cancelled or erred while queued
        elif start == "processing":
            d.finished(key, _compute_seconds(kwargs.get("startstops")), monotonic())
            self._park(key)  # if it runs again it must come back through the queue
            self._request_pass()
        if finish == "forgotten":
            d.discard(key)
            del self.managed[key]

    def _park(self, key: Key) -> None:
        ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
        if ts is not None:
            ts.worker_restrictions = {PARK}
            ts.loose_restrictions = False

    # ------------------------------------------------------------------ dispatch
    def _request_pass(self) -> None:
        if not self._pass_pending and self._loop is not None and len(self.dispatcher.queue):
            self._pass_pending = True
            self._loop.call_soon(self._pass)

    def _pass(self) -> None:
        """One dispatch pass (event loop, scheduled by :meth:`_request_pass`)."""
        self._pass_pending = False
        s = self.scheduler
        if s is None:
            return
        d = self.dispatcher
        fleet = d.fleet
        assignments = d.dispatch(monotonic())
        recs: dict[Key, TaskStateState] = {}
        for a in assignments:
            key = cast("Key", a.task.key)  # the pure queue holds the Dask keys as Hashable
            self._last_kind = a.task.kind
            ts = s.tasks.get(key)
            ws = s.workers.get(a.addr)
            if ws is None or ws not in s.running:
                i = fleet.index.get(a.addr)
                if i is not None:
                    fleet.set_eligible(i, False)  # paused or leaving: until the next refresh
                d.requeue(key)
            elif ts is None or ts.state != "no-worker":
                d.discard(key)
            else:
                ts.worker_restrictions = {a.addr}
                recs[key] = "processing"
        if recs:
            s.transitions(recs, stimulus_id=f"cluster-app-placement-{time()}")
        if len(assignments) >= d.max_per_pass or len(assignments) > len(recs):
            self._request_pass()

    def _refresh(self) -> None:
        """Copy the workers' metrics into the fleet; retry held tasks (event loop, periodic)."""
        s = self.scheduler
        if s is None:
            return
        if s.plugins.get(self.name) is not self:
            self._detach()
            return
        fleet = self.dispatcher.fleet
        for addr in [a for a in fleet.addrs if a not in s.workers]:
            fleet.remove(addr)
        for ws in s.workers.values():
            if ws.address not in fleet:
                fleet.add(ws.address, ws.nthreads)
        n = len(fleet)
        cpu, accel, rtt, other = (np.zeros(n) for _ in range(4))
        eligible = np.zeros(n, bool)
        running = s.running
        for i, addr in enumerate(fleet.addrs):
            ws = s.workers[addr]
            m = ws.metrics
            threads = max(ws.nthreads, 1)
            cpu[i] = (m.get("cpu") or 0.0) / 100.0 / threads
            accel[i] = (m.get("gpu_utilization") or 0.0) / 100.0
            r = m.get(RTT_METRIC)
            if r is None:  # no probe on that worker: the last heartbeat's own round trip
                r = (m.get("digests_total_since_heartbeat") or {}).get("latency")
            rtt[i] = r if isinstance(r, (int, float)) and r > 0 else np.nan
            # tasks we did not place, less the long-running ones (a run controller secedes: it
            # holds no thread, as Dask's own scheduler counts it)
            other[i] = max(0, len(ws.processing) - len(ws.long_running) - int(fleet.busy[i]))
            eligible[i] = ws in running
        fleet.refresh(cpu=cpu, accel=accel, rtt=rtt, other=other, eligible=eligible)
        self._request_pass()

    # ------------------------------------------------------------------ observability
    def snapshot(self, kind: str | None = None) -> dict[str, Any]:
        """The plugin's view, as plain JSON-able values (scheduler handler; event loop).

        Parameters
        ----------
        kind : str, optional
            Kind of task (key prefix) to score workers for; default the last one placed.
        """
        d = self.dispatcher
        now = monotonic()
        kind = kind or self._last_kind
        view = d.worker_view(kind)
        workers = {
            addr: {
                name: (bool(v[i]) if v.dtype == bool else d.finite(float(v[i])))
                for name, v in view.items()
            }
            for i, addr in enumerate(d.fleet.addrs)
        }
        return {
            "time": time(),
            "kind": kind,
            "queue_depth": len(d.queue),
            "queue_by_priority": [[p, n] for p, n in d.queue.depth_by_priority().items()],
            "inflight": len(d.inflight),
            "managed": len(self.managed),
            "decisions_total": d.decisions_total,
            "decisions_per_s": d.decision_rate(now),
            "holds_total": d.holds_total,
            "requeued_total": d.requeued_total,
            "workers": workers,
            "settings": self.settings.as_dict(),
        }


def placement_snapshot(client: Client, kind: str | None = None) -> dict[str, Any]:
    """The placement plugin's snapshot, fetched through the scheduler handler.

    Returns a coroutine for asynchronous clients, like other ``Client`` methods.
    """
    # Client.sync is typed coroutine-or-value: a sync client gets the value, as documented
    return client.sync(  # pyright: ignore[reportReturnType]
        getattr(client.scheduler, HANDLER), kind=kind
    )
