"""The task functions of continual runs (``RunSpec.continual``), beside ``worker.py``'s:
per-task evaluation and the consolidation of finished tasks into the run's store."""

from __future__ import annotations

from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.worker import _plugin, _sync_to
from cluster_app.learning import consolidation
from cluster_app.learning.spec import ContinualSpec

__all__ = ["agent_consolidate", "agent_eval_tasks"]


def agent_eval_tasks(
    spec: AgentSpec,
    store_url: str,
    version: int,
    continual: ContinualSpec,
    upto: int,
    n_batches: int,
) -> dict:
    """Held-out metrics of ``version`` on every task of a continual run up to ``upto``."""
    plugin = _plugin()
    agent = plugin.agent_for(spec)
    with agent.lock:
        pulled = _sync_to(agent, plugin.store(store_url), version)
        tasks = agent.continual.evaluate(continual, upto, n_batches)
    return {"version": version, "pull_bytes": pulled, "tasks": tasks}


def agent_consolidate(
    spec: AgentSpec, store_url: str, version: int, continual: ContinualSpec, k: int
) -> dict:
    """Consolidate the first ``k`` tasks of a continual run at ``version`` (its replay buffer,
    Fisher and anchor, into the run's store); returns what it recorded."""
    plugin = _plugin()
    agent = plugin.agent_for(spec)
    latest = next((j for j in range(k - 1, 0, -1) if consolidation.exists(store_url, j)), None)
    prev = None if latest is None else consolidation.load(store_url, latest)
    with agent.lock:
        _sync_to(agent, plugin.store(store_url), version)
        done = agent.continual.consolidate(continual, k, version, prev)
    consolidation.save(store_url, done)
    return {"tasks": k, "version": version, **done.meta}
