"""Putting our plugins on a cluster: the one place that knows which plugins a fleet needs.

:class:`~cluster_app.cluster.AgentCluster` calls :func:`install` when it connects, and the
:class:`~cluster_app.runs.keeper.RunKeeper` calls it again after a scheduler restart (a new
scheduler has no plugins, and workers that rejoin it have none either), so placement comes
back together with the agents:

- :class:`~cluster_app.observe.monitor.FleetMonitor`: what the fleet reports, for the
  dashboard page, the JSON routes and Prometheus (one per scheduler: registering it again keeps
  the running one and its history);
- :class:`~cluster_app.scaling.plugin.ScalingPlugin`: our policy as the scheduler's adaptive
  target (``cluster.adapt()``, the dask-kubernetes operator) and safe scale-down;
- :class:`~cluster_app.agent.worker.AgentPlugin`: one agent per worker, joiners included;
- unless ``cluster-app.placement.enabled`` is false, :class:`~cluster_app.placement.RttProbe`
  (each worker's round trip, a placement signal) and the scoring
  :class:`~cluster_app.placement.PlacementPlugin`, which then places every ``agent-*`` task.
"""

from __future__ import annotations

from typing import Any

from distributed import Client

from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.worker import AgentPlugin
from cluster_app.observe.monitor import FleetMonitor
from cluster_app.placement import PlacementPlugin, PlacementSettings, RttProbe
from cluster_app.scaling.plugin import ScalingPlugin

__all__ = ["install", "install_async", "plugins_for"]


def plugins_for(agent: AgentSpec, placement: PlacementSettings | None = None) -> list[Any]:
    """The plugins a fleet of ``agent`` needs, in registration order (see the module
    docstring); ``placement`` defaults to ``cluster-app.placement.*`` read here."""
    placement = placement or PlacementSettings.from_config()
    out: list[Any] = [FleetMonitor(), ScalingPlugin(), AgentPlugin(agent)]
    if placement.enabled:
        # agent tasks then wait on the scheduler and go to the best-scoring free worker
        out += [RttProbe(), PlacementPlugin(placement)]
    return out


def install(
    client: Client, agent: AgentSpec, placement: PlacementSettings | None = None
) -> list[Any]:
    """Register the fleet's plugins through ``client``; returns them."""
    plugins = plugins_for(agent, placement)
    for plugin in plugins:
        client.register_plugin(plugin)
    return plugins


async def install_async(
    client: Client, agent: AgentSpec, placement: PlacementSettings | None = None
) -> list[Any]:
    """:func:`install` through an asynchronous client (the keeper's, on the scheduler)."""
    plugins = plugins_for(agent, placement)
    for plugin in plugins:
        await client.register_plugin(plugin)
    return plugins
