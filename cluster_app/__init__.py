"""cluster_app: fleets of JAX learning agents on Dask.

The public API is what ``__all__`` lists; everything else is importable but not promised.
Names are imported when first used, so ``import cluster_app.placement`` on a scheduler loads
neither JAX, zarr nor Orbax.

Package map (layers from the top; ``docs/architecture.md`` has the full table)::

    cli.py, demo.py  ``cluster-app`` (also ``dask cluster-app``) and the main job
    testing/         tools for tests, benchmarks and chaos: emulated workers, baselines, kill -9
    cluster.py       AgentCluster: the composition root (LocalCluster or an address)
    runs/            a run's whole life: spec, roles, the round loop, resume, record, handle,
                     keeper, and ``install`` (the one place that puts our plugins on a cluster)
    agent/           pure JAX models, TrainState + steps, datasets; worker.py = the WorkerPlugin
    learning/        continual runs: tasks, replay reservoir, exact-Fisher EWC, consolidations
    placement/       scheduler plugin: priority queue + scoring placement of agent tasks
    recovery/        Orbax checkpoints with validated fallback, checkpoint policies
    sync/            ParamStore on zarr (versions, exclusive commits), codecs, the coordinator
    config.py        defaults (cluster_app.yaml) + validated reads through dask.config
    errors.py        the exception tree
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "Agent": "cluster_app.agent.agent",
    "AgentCluster": "cluster_app.cluster",
    "AgentPlugin": "cluster_app.agent.worker",
    "AgentSpec": "cluster_app.agent.spec",
    "ClusterAppError": "cluster_app.errors",
    "Commit": "cluster_app.sync.store",
    "CommitConflict": "cluster_app.errors",
    "ConfigError": "cluster_app.errors",
    "ContinualSpec": "cluster_app.learning.spec",
    "CorruptData": "cluster_app.errors",
    "EvalSpec": "cluster_app.versions.gate",
    "Gate": "cluster_app.versions.gate",
    "GateRefused": "cluster_app.errors",
    "InvalidRefName": "cluster_app.errors",
    "MergeConflict": "cluster_app.errors",
    "ParamStore": "cluster_app.sync.store",
    "PlacementSettings": "cluster_app.placement.settings",
    "RefConflict": "cluster_app.errors",
    "RefNotFound": "cluster_app.errors",
    "Registry": "cluster_app.versions.registry",
    "Revision": "cluster_app.versions.commits",
    "RoundRecord": "cluster_app.runs.spec",
    "RunError": "cluster_app.errors",
    "RunHandle": "cluster_app.runs.handle",
    "RunLoop": "cluster_app.runs.loop",
    "RunSpec": "cluster_app.runs.spec",
    "SpecError": "cluster_app.errors",
    "StoreError": "cluster_app.errors",
    "SyncSpec": "cluster_app.sync.spec",
    "Task": "cluster_app.learning.spec",
    "TrainResult": "cluster_app.runs.spec",
    "VersionNotFound": "cluster_app.errors",
    "Versions": "cluster_app.runs.versions",
}

if TYPE_CHECKING:
    from cluster_app import config
    from cluster_app.agent.agent import Agent
    from cluster_app.agent.spec import AgentSpec
    from cluster_app.agent.worker import AgentPlugin
    from cluster_app.cluster import AgentCluster
    from cluster_app.errors import (
        ClusterAppError,
        CommitConflict,
        ConfigError,
        CorruptData,
        GateRefused,
        InvalidRefName,
        MergeConflict,
        RefConflict,
        RefNotFound,
        RunError,
        SpecError,
        StoreError,
        VersionNotFound,
    )
    from cluster_app.learning.spec import ContinualSpec, Task
    from cluster_app.placement.settings import PlacementSettings
    from cluster_app.runs.handle import RunHandle
    from cluster_app.runs.loop import RunLoop
    from cluster_app.runs.spec import RoundRecord, RunSpec, TrainResult
    from cluster_app.runs.versions import Versions
    from cluster_app.sync.spec import SyncSpec
    from cluster_app.sync.store import Commit, ParamStore
    from cluster_app.versions.commits import Revision
    from cluster_app.versions.gate import EvalSpec, Gate
    from cluster_app.versions.registry import Registry


def __getattr__(name: str) -> Any:
    if name == "config":
        return importlib.import_module("cluster_app.config")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cluster_app' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, "config"])


__all__ = [
    "Agent",
    "AgentCluster",
    "AgentPlugin",
    "AgentSpec",
    "ClusterAppError",
    "Commit",
    "CommitConflict",
    "ConfigError",
    "ContinualSpec",
    "CorruptData",
    "EvalSpec",
    "Gate",
    "GateRefused",
    "InvalidRefName",
    "MergeConflict",
    "ParamStore",
    "PlacementSettings",
    "RefConflict",
    "RefNotFound",
    "Registry",
    "Revision",
    "RoundRecord",
    "RunError",
    "RunHandle",
    "RunLoop",
    "RunSpec",
    "SpecError",
    "StoreError",
    "SyncSpec",
    "Task",
    "TrainResult",
    "VersionNotFound",
    "Versions",
    "__version__",
    "config",
]
