"""``FleetMonitor``: the scheduler plugin that keeps what our parts report, for people to see.

It listens to our structured events (:mod:`cluster_app.observe.events`) and to workers joining
and leaving, and keeps bounded, mostly columnar state (:mod:`cluster_app.observe.table`):

- the agents: worker, role (active, standby, idle), run, version, local steps, last loss;
- each run: phase, round, version, loss curve, goodput, standbys against their target, the
  latest checkpoint and its age;
- sync traffic: bytes pushed and pulled, the compression ratio, push and pull latency;
- the serving gateways' live splits, and the branches and tags as they move.

Placement (the queue by priority, decisions per second, each worker's load, latency and score)
is read from the :class:`~cluster_app.placement.PlacementPlugin` when asked.

Three views serve the same state: the scheduler handler ``cluster_app_monitor``
(:func:`monitor_snapshot` from a client), JSON routes on the scheduler's HTTP server
(``/cluster-app/json/<name>.json``), and ``cluster_app_*`` series on the scheduler's
``/metrics`` (:mod:`cluster_app.observe.prometheus`). The dashboard page
(:mod:`cluster_app.observe.dashboard`) draws it. Every handler runs on the scheduler's event
loop, does no I/O and costs O(runs + rows shown), never a Python loop over the fleet.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import SchedulerPlugin

from cluster_app.observe import events as ev
from cluster_app.observe.table import ROLES, AgentTable, Histogram

if TYPE_CHECKING:
    from distributed import Client
    from distributed.scheduler import Scheduler

__all__ = ["HANDLER", "PLUGIN_NAME", "FleetMonitor", "RunView", "monitor_snapshot"]

PLUGIN_NAME = "cluster-app-monitor"
HANDLER = "cluster_app_monitor"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# the PlacementPlugin's name (placement sits above this package, so it is not imported here;
# a test checks the two agree)
PLACEMENT_PLUGIN = "cluster-app-placement"
KEEP_ENDED_RUNS = 20  # runs that ended are forgotten beyond this many (label cardinality)


@dataclass
class RunView:
    """What the monitor knows of one run."""

    run: str
    phase: str = "running"
    round: int | None = None
    version: int | None = None
    loss: float | None = None
    heldout_loss: float | None = None
    goodput: float | None = None
    last_round: float | None = None  # wall-clock time of the last committed round
    rounds: int = 0  # rounds seen committed
    active: int = 0
    standby: int = 0
    standby_target: int | None = None
    standby_possible: int | None = None  # what its fleet can hold now
    agents: int | None = None  # the width it asks for (train.agents; None: what it is given)
    checkpoint_round: int | None = None
    checkpoint_time: float | None = None
    checkpoint_interval: float | None = None  # seconds the policy allows between saves
    checkpoint_errors: int = 0
    curve: deque = field(default_factory=lambda: deque(maxlen=2000))  # (round, loss, heldout)

    @property
    def running(self) -> bool:
        return self.phase in ("running", "paused")

    def as_dict(self, now: float) -> dict[str, Any]:
        age = None if self.checkpoint_time is None else now - self.checkpoint_time
        return {
            "run": self.run,
            "phase": self.phase,
            "round": self.round,
            "version": self.version,
            "loss": self.loss,
            "heldout_loss": self.heldout_loss,
            "goodput": self.goodput,
            "last_round_age_s": None if self.last_round is None else now - self.last_round,
            "rounds": self.rounds,
            "active": self.active,
            "standby": self.standby,
            "standby_target": self.standby_target,
            "checkpoint": {
                "round": self.checkpoint_round,
                "age_s": age,
                "interval_s": self.checkpoint_interval,
                "errors": self.checkpoint_errors,
            },
        }


class FleetMonitor(SchedulerPlugin):
    """Keeps the fleet's state from our events (see the module docstring)."""

    name = PLUGIN_NAME
    idempotent = True  # one per scheduler: registering again keeps the running one

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        self.started = time.time()
        self._reset()

    def _reset(self) -> None:
        self.agents = AgentTable()
        self.runs: dict[str, RunView] = {}
        self.serving: dict[str, dict] = {}  # gateway name -> its last report
        self.serving_series: deque = deque(maxlen=600)  # (time, name, arm, p99_ms)
        self.refs: dict[str, dict] = {}  # "branch:prod" -> {commit, time}
        self.sync = {
            "push_bytes": 0,
            "pull_bytes": 0,
            "dense_bytes": 0,
            "pushes": 0,
            "rejected": 0,
            "push_errors": 0,
        }
        self.sync_series: deque = deque(maxlen=600)  # (time, push_bytes, dense_bytes, pull)
        self.push_seconds = Histogram(LATENCY_BUCKETS)
        self.pull_seconds = Histogram(LATENCY_BUCKETS)
        self.round_seconds = Histogram(ROUND_BUCKETS)
        self.events_total: dict[str, int] = dict.fromkeys(ev.TOPICS, 0)
        self._aligned: tuple[dict, int, np.ndarray] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, scheduler: Scheduler) -> None:
        from cluster_app.observe import prometheus, routes

        self.scheduler = scheduler
        scheduler.handlers[HANDLER] = self.snapshot
        for addr in scheduler.workers:
            self.agents.row(addr)
        prometheus.attach(self)
        routes.attach(scheduler, self)
        _add_to_dashboard_menu(scheduler)

    async def close(self) -> None:
        from cluster_app.observe import prometheus

        prometheus.detach(self)
        s = self.scheduler
        if s is not None and s.handlers.get(HANDLER) == self.snapshot:
            del s.handlers[HANDLER]
        self.scheduler = None

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.agents.row(worker)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self.agents.remove(worker)

    # ------------------------------------------------------------------ events
    def log_event(self, topic: str, msg: Any) -> None:
        handler = self._handlers.get(topic)
        if handler is None or not isinstance(msg, dict):
            return
        self.events_total[topic] += 1
        handler(self, msg)

    def _run(self, run: str) -> RunView:
        view = self.runs.get(run)
        if view is None:
            view = self.runs[run] = RunView(run)
            ended = [r for r, v in self.runs.items() if not v.running]
            for r in ended[: max(0, len(ended) - KEEP_ENDED_RUNS)]:
                del self.runs[r]
        return view

    def _on_round(self, m: dict) -> None:
        view = self._run(str(m["run"]))
        now = float(m.get("time") or time.time())
        agents, standby = m.get("agents") or [], m.get("standby") or []
        view.phase = "running"
        view.round, view.version, view.loss = m.get("round"), m.get("version"), m.get("loss")
        if m.get("heldout_loss") is not None:
            view.heldout_loss = m["heldout_loss"]
        view.last_round, view.rounds = now, view.rounds + 1
        view.active, view.standby = len(agents), len(standby)
        view.curve.append((m.get("round"), m.get("loss"), m.get("heldout_loss")))
        self.agents.set_round(view.run, int(m.get("version") or 0), agents, standby, now)
        s = self.sync
        s["push_bytes"] += int(m.get("push_bytes") or 0)
        s["pull_bytes"] += int(m.get("pull_bytes") or 0)
        s["dense_bytes"] += int(m.get("dense_bytes") or 0)
        s["rejected"] += int(m.get("rejected") or 0)
        self.sync_series.append(
            (now, m.get("push_bytes") or 0, m.get("dense_bytes") or 0, m.get("pull_bytes") or 0)
        )
        self.round_seconds.observe(m.get("seconds"))
        for a in agents:
            self.pull_seconds.observe(a.get("pull_seconds"))

    def _on_run(self, m: dict) -> None:
        view = self._run(str(m["run"]))
        view.phase = str(m.get("phase") or view.phase)
        for name in (
            "goodput",
            "standby_target",
            "standby_possible",
            "checkpoint_interval",
            "agents",
        ):
            if m.get(name) is not None:
                setattr(view, name, m[name])
        if m.get("checkpoint_errors") is not None:
            view.checkpoint_errors = int(m["checkpoint_errors"])
        if not view.running:
            self.agents.end_run(view.run)

    def _on_checkpoint(self, m: dict) -> None:
        view = self._run(str(m["run"]))
        if m.get("error"):
            view.checkpoint_errors += 1
        else:
            view.checkpoint_round, view.checkpoint_time = m.get("round"), m.get("time")

    def _on_push(self, m: dict) -> None:
        self.sync["pushes"] += 1
        if m.get("error"):
            self.sync["push_errors"] += 1
        self.push_seconds.observe(m.get("seconds"))

    def _on_serving(self, m: dict) -> None:
        name = str(m.get("name", "cluster-app"))
        self.serving[name] = m
        now = float(m.get("time") or time.time())
        for arm in m.get("arms") or []:
            if arm.get("p99_ms") is not None:
                self.serving_series.append((now, name, arm.get("ref"), arm["p99_ms"]))

    def _on_ref(self, m: dict) -> None:
        self.refs[f"{m.get('kind', 'branch')}:{m.get('name')}"] = m

    _handlers = {
        ev.ROUND: _on_round,
        ev.RUN: _on_run,
        ev.CHECKPOINT: _on_checkpoint,
        ev.PUSH: _on_push,
        ev.SERVING: _on_serving,
        ev.REF: _on_ref,
    }

    # ------------------------------------------------------------------ views
    def _placement_plugin(self) -> Any:
        s = self.scheduler
        return s.plugins.get(PLACEMENT_PLUGIN) if s is not None else None

    def placement(self) -> dict[str, Any]:
        """The placement plugin's queue by priority and its decision rate."""
        plugin = self._placement_plugin()
        if plugin is None:
            return {"enabled": False}
        d = plugin.dispatcher
        return {
            "enabled": True,
            "queue_depth": len(d.queue),
            "queue_by_priority": [[p, n] for p, n in d.queue.depth_by_priority().items()],
            "inflight": len(d.inflight),
            "decisions_total": d.decisions_total,
            "decisions_per_s": d.decision_rate(time.monotonic()),
        }

    def signals(self) -> dict[str, np.ndarray] | None:
        """Each agent's load, round trip (s) and score as placement sees them, aligned with the
        agents table (None when placement is off)."""
        plugin = self._placement_plugin()
        if plugin is None:
            return None
        d = plugin.dispatcher
        view = d.worker_view(plugin._last_kind)
        n = len(self.agents)
        where = self._alignment(d.fleet.index)
        ok = where >= 0
        aligned: dict[str, np.ndarray] = {}
        # "rtt" is the measured round trip in seconds ("latency" is the score's normalised term)
        for name, source in (("load", "load"), ("latency", "rtt"), ("score", "score")):
            col = view.get(source)
            out = np.full(n, np.nan)
            if col is not None and len(col):
                out[ok] = np.asarray(col, np.float64)[where[ok]]
            aligned[name] = out
        return aligned

    def _alignment(self, fleet_index: dict[str, int]) -> np.ndarray:
        """Our row -> the fleet's row (-1: not in the fleet). Rebuilt only when either side's
        membership changed (the fleet makes a new index then), so a refresh is one gather."""
        key = (fleet_index, self.agents.generation)
        cached = self._aligned
        if cached is None or cached[0] is not fleet_index or cached[1] != key[1]:
            where = np.fromiter(
                (fleet_index.get(a, -1) for a in self.agents.addrs),
                np.int64,
                count=len(self.agents),
            )
            cached = self._aligned = (fleet_index, key[1], where)
        return cached[2]

    def compression_ratio(self) -> float | None:
        s = self.sync
        return s["dense_bytes"] / s["push_bytes"] if s["push_bytes"] else None

    def agent_rows(self, limit: int = 200) -> list[dict[str, Any]]:
        """Up to ``limit`` agents, the ones worth seeing first (:meth:`AgentTable.top`)."""
        aligned = self.signals()
        t = self.agents
        rows = t.top(limit, None if aligned is None else aligned["score"])
        out = []
        for i in rows:  # at most ``limit`` rows, whatever the fleet's size
            code = int(t.run[i])
            out.append(
                {
                    "worker": t.addrs[i],
                    "role": ROLES[int(t.role[i])],
                    "run": t.runs[code] if code >= 0 else None,
                    "version": int(t.version[i]) if t.version[i] >= 0 else None,
                    "step": int(t.step[i]),
                    "loss": ev.finite(t.loss[i]),
                    "load": None if aligned is None else ev.finite(aligned["load"][i]),
                    "latency_ms": None
                    if aligned is None
                    else ev.finite(aligned["latency"][i] * 1e3),
                    "score": None if aligned is None else ev.finite(aligned["score"][i]),
                }
            )
        return out

    def snapshot(self, limit: int = 200) -> dict[str, Any]:
        """Everything, as plain JSON-able values (scheduler handler; event loop)."""
        now = time.time()
        placement = self.placement()
        return {
            "time": now,
            "agents": self.agent_rows(limit),
            "counts": {**self.agents.counts(), "total": len(self.agents)},
            "runs": [v.as_dict(now) for v in self.runs.values()],
            "curves": {r: list(v.curve)[-500:] for r, v in self.runs.items()},
            "placement": placement,
            "sync": {
                **self.sync,
                "compression_ratio": self.compression_ratio(),
                "push_p50_s": self.push_seconds.quantile(0.5),
                "push_p99_s": self.push_seconds.quantile(0.99),
                "pull_p50_s": self.pull_seconds.quantile(0.5),
                "pull_p99_s": self.pull_seconds.quantile(0.99),
            },
            "serving": list(self.serving.values()),
            "refs": sorted(self.refs.values(), key=lambda r: -(r.get("time") or 0))[:50],
            "events_total": dict(self.events_total),
        }


def _add_to_dashboard_menu(scheduler: Scheduler) -> None:
    """List the page in the dashboard's "More" menu (when the page is registered)."""
    from cluster_app.observe.dashboard import add_to_menu

    add_to_menu(scheduler)


def monitor_snapshot(client: Client, limit: int = 200) -> dict[str, Any]:
    """The monitor's snapshot through the scheduler handler (a coroutine for asynchronous
    clients, like other ``Client`` methods)."""
    return client.sync(  # pyright: ignore[reportReturnType]
        getattr(client.scheduler, HANDLER), limit=limit
    )
