"""Scoring placement: a Dask scheduler plugin that places agent tasks (system S4).

Map (pure core first; nothing here imports JAX, and ``scoring`` imports no Dask either)::

    scoring.py   the score: one pure numpy function over workers + sort key / best pick
    queue.py     priority queue with FIFO ties and aging (no starvation)
    fleet.py     per-worker signal arrays (load, round trip, durations per kind of task)
    dispatch.py  Dispatcher: pull dispatch with projected load; ScorePolicy + hold rule
    settings.py  PlacementSettings from ``cluster-app.placement.*``
    plugin.py    PlacementPlugin (SchedulerPlugin) + the ``cluster_app_placement`` handler
    probe.py     RttProbe (WorkerPlugin): the ``cluster_app_rtt`` metric
    naive.py     the source document's pseudo-code as a plugin (baseline only)
    emulate.py   Handicap (WorkerPlugin) + ``work``: slow / distant workers for tests/benchmarks

``docs/placement.md`` explains the design and the measured results.
"""

from __future__ import annotations

from cluster_app.placement.dispatch import Dispatcher, ScorePolicy
from cluster_app.placement.fleet import Fleet
from cluster_app.placement.plugin import PlacementPlugin, placement_snapshot
from cluster_app.placement.probe import RttProbe
from cluster_app.placement.queue import QueuedTask, TaskQueue
from cluster_app.placement.scoring import Signals, Weights, best, placement_key, score
from cluster_app.placement.settings import PlacementSettings

__all__ = [
    "Dispatcher",
    "Fleet",
    "PlacementPlugin",
    "PlacementSettings",
    "QueuedTask",
    "RttProbe",
    "ScorePolicy",
    "Signals",
    "TaskQueue",
    "Weights",
    "best",
    "placement_key",
    "placement_snapshot",
    "score",
]
