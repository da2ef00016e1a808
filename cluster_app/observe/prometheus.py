"""``cluster_app_*`` series on the scheduler's own ``/metrics`` (Dask's Prometheus route).

Dask serves ``prometheus_client``'s default registry there, so the monitor registers one
collector when it starts and removes it when it closes. Every family is yielded on every scrape,
with a sample even when there is nothing to count yet: a series never disappears between
scrapes (distributed#9096). Labels are low-cardinality: ``role``, ``priority``, and ``run`` for
the running runs and at most the last :data:`~cluster_app.observe.monitor.KEEP_ENDED_RUNS` that
ended. Latencies are histograms. The serving gateway's series are on the gateway's own
``/metrics`` (see docs/serving.md); the alert rules use both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cluster_app.observe.table import ROLES, Histogram

if TYPE_CHECKING:
    from cluster_app.observe.monitor import FleetMonitor

__all__ = ["MonitorCollector", "attach", "detach"]

_lock = threading.RLock()  # the registry calls collect() while we register
_monitors: list[FleetMonitor] = []  # attached, the latest last (one per scheduler in a process)
_collector: MonitorCollector | None = None


def attach(monitor: FleetMonitor) -> None:
    """Export ``monitor`` on the default registry (registering the collector once)."""
    global _collector
    with _lock:
        _monitors.append(monitor)
        if _collector is None:
            _collector = MonitorCollector()
            REGISTRY.register(_collector)


def detach(monitor: FleetMonitor) -> None:
    """Stop exporting ``monitor``; the collector leaves the registry with the last one."""
    global _collector
    with _lock:
        if monitor in _monitors:
            _monitors.remove(monitor)
        if not _monitors and _collector is not None:
            REGISTRY.unregister(_collector)
            _collector = None


def _scraped() -> object | None:
    """The scheduler whose ``/metrics`` Dask is serving now: its handler points its own
    collectors at that server just before it collects (several schedulers can share a process,
    and this registry)."""
    try:
        from distributed.http.scheduler.prometheus.core import PrometheusHandler
    except ImportError:  # pragma: no cover
        return None
    collectors = PrometheusHandler._collectors
    return getattr(collectors[0], "server", None) if collectors else None


def _current() -> FleetMonitor | None:
    """The monitor of the scheduler being scraped, else the latest attached."""
    server = _scraped()
    for m in reversed(_monitors):
        if server is not None and m.scheduler is server:
            return m
    return _monitors[-1] if _monitors else None


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


class MonitorCollector(Collector):
    """Reads the latest attached monitor at scrape time (no state of its own)."""

    def collect(self) -> Iterator[Metric]:
        with _lock:
            m = _current()
        if m is None:
            return
        yield from self._agents(m)
        yield from self._runs(m)
        yield from self._sync(m)
        yield from self._placement(m)
        events = CounterMetricFamily(
            "cluster_app_monitor_events", "Our events the monitor received", labels=["topic"]
        )
        for topic, n in m.events_total.items():
            events.add_metric([topic.removeprefix("cluster-app-")], n)
        yield events

    def _agents(self, m: FleetMonitor) -> Iterator[Metric]:
        agents = GaugeMetricFamily("cluster_app_agents", "Agents by role", labels=["role"])
        counts = m.agents.counts()
        for role in ROLES:
            agents.add_metric([role], counts[role])
        yield agents

    def _runs(self, m: FleetMonitor) -> Iterator[Metric]:
        now = time.time()
        g = {
            name: GaugeMetricFamily(f"cluster_app_run_{name}", doc, labels=["run"])
            for name, doc in (
                ("running", "1 while the run is running or paused, 0 once it ended"),
                ("round", "The run's last committed round"),
                ("version", "The run's last committed parameter version"),
                ("loss", "Mean training loss of the last round"),
                ("heldout_loss", "Held-out loss at the last evaluation"),
                ("goodput", "Share of the run's wall time spent on kept training"),
                ("last_round_timestamp_seconds", "Wall-clock time of the last committed round"),
                ("standby", "Hot standbys in the last round"),
                ("standby_target", "Hot standbys the run asks for"),
                (
                    "standby_possible",
                    "Hot standbys its fleet can hold now (fewer agents than 2x+1)",
                ),
            )
        }
        rounds = CounterMetricFamily("cluster_app_run_rounds", "Rounds committed", labels=["run"])
        ck_time = GaugeMetricFamily(
            "cluster_app_checkpoint_last_timestamp_seconds",
            "Wall-clock time of the run's latest checkpoint",
            labels=["run"],
        )
        ck_interval = GaugeMetricFamily(
            "cluster_app_checkpoint_interval_seconds",
            "Seconds the checkpoint policy allows between saves",
            labels=["run"],
        )
        ck_errors = CounterMetricFamily(
            "cluster_app_checkpoint_errors", "Checkpoint saves that failed", labels=["run"]
        )
        for v in list(m.runs.values()):
            label = [v.run]
            values = {
                "running": 1.0 if v.running else 0.0,
                "round": v.round,
                "version": v.version,
                "loss": v.loss,
                "heldout_loss": v.heldout_loss,
                "goodput": v.goodput,
                "last_round_timestamp_seconds": v.last_round,
                "standby": v.standby,
                "standby_target": v.standby_target,
                "standby_possible": v.standby_possible,
            }
            for name, value in values.items():
                if value is not None:
                    g[name].add_metric(label, float(value))
            rounds.add_metric(label, v.rounds)
            ck_errors.add_metric(label, v.checkpoint_errors)
            # a run that never checkpointed is as old as its start
            ck_time.add_metric(label, v.checkpoint_time or m.started)
            if v.checkpoint_interval is not None:
                ck_interval.add_metric(label, v.checkpoint_interval)
        yield from g.values()
        yield from (rounds, ck_time, ck_interval, ck_errors)
        yield _histogram(
            "cluster_app_round_seconds", "Seconds per committed round", m.round_seconds
        )
        yield GaugeMetricFamily(
            "cluster_app_monitor_uptime_seconds",
            "Seconds since the monitor started",
            value=now - m.started,
        )

    def _sync(self, m: FleetMonitor) -> Iterator[Metric]:
        s = m.sync
        for name, doc in (
            ("push_bytes", "Compressed delta bytes pushed"),
            ("pull_bytes", "Bytes agents read to reach a round's version"),
            ("dense_bytes", "What the pushed deltas weigh uncompressed (float32)"),
            ("pushes", "Deltas written by agents' pushers"),
            ("rejected", "Pushes the coordinator rejected (stale, diverged, missing)"),
            ("push_errors", "Pushes that failed to write"),
        ):
            yield CounterMetricFamily(f"cluster_app_sync_{name}", doc, value=s[name])
        yield _histogram(
            "cluster_app_sync_push_seconds", "Seconds to encode and write a delta", m.push_seconds
        )
        yield _histogram(
            "cluster_app_sync_pull_seconds",
            "Seconds an agent took to pull a round's version",
            m.pull_seconds,
        )

    def _placement(self, m: FleetMonitor) -> Iterator[Metric]:
        p = m.placement()
        depth = GaugeMetricFamily(
            "cluster_app_placement_queue_depth",
            "Agent tasks waiting, by priority",
            labels=["priority"],
        )
        for prio, n in p.get("queue_by_priority", []):
            depth.add_metric([f"{prio:g}"], n)
        yield depth
        yield CounterMetricFamily(
            "cluster_app_placement_decisions",
            "Placement decisions made",
            value=p.get("decisions_total", 0),
        )
        yield GaugeMetricFamily(
            "cluster_app_placement_inflight",
            "Placed agent tasks running",
            value=p.get("inflight", 0),
        )
