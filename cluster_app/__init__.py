"""cluster_app: fleets of JAX learning agents on Dask.

The public API is what ``__all__`` lists; everything else is importable but not promised.

Package map::

    config.py       defaults (cluster_app.yaml) + validated reads through dask.config
    errors.py       the exception tree
    agent/          pure JAX models, TrainState + steps, datasets; worker.py = the WorkerPlugin
    sync/           ParamStore on zarr (versions, exclusive commits), pytree flattening
    placement/      scheduler plugin: priority queue + scoring placement of agent tasks
    runs.py         the run controller (rounds, delta averaging, commits)
    cluster.py      AgentCluster: LocalCluster or an address, plugins, train/complete
    cli.py          ``cluster-app`` (and ``dask cluster-app``)
"""

from __future__ import annotations

from cluster_app import config
from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.worker import AgentPlugin
from cluster_app.cluster import AgentCluster
from cluster_app.controller import RunController
from cluster_app.errors import (
    ClusterAppError,
    CommitConflict,
    ConfigError,
    CorruptData,
    RunError,
    SpecError,
    StoreError,
    VersionNotFound,
)
from cluster_app.runs import RoundRecord, RunSpec, TrainResult
from cluster_app.sync.store import Commit, ParamStore

__version__ = "0.1.0"


def __getattr__(name: str):
    # Agent pulls in JAX; import it only when asked for, so clients stay light
    if name == "Agent":
        from cluster_app.agent.agent import Agent

        return Agent
    raise AttributeError(f"module 'cluster_app' has no attribute {name!r}")


__all__ = [
    "Agent",
    "AgentCluster",
    "AgentPlugin",
    "AgentSpec",
    "ClusterAppError",
    "Commit",
    "CommitConflict",
    "ConfigError",
    "CorruptData",
    "ParamStore",
    "RoundRecord",
    "RunController",
    "RunError",
    "RunSpec",
    "SpecError",
    "StoreError",
    "TrainResult",
    "VersionNotFound",
    "__version__",
    "config",
]
