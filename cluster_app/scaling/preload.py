"""Scheduler preload: ``dask scheduler --preload cluster_app.scaling.preload``.

Installs the :class:`ScalingPlugin` when the scheduler starts, so an autoscaler (the
dask-kubernetes operator's DaskAutoscaler) gets our target from its first poll, before any client
connects; without it the scheduler answers with Dask's own target until a client installs ours
(0 with no tasks: the fleet would shrink to the autoscaler's minimum). Installing it again from
a client keeps this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster_app.scaling.plugin import ScalingPlugin

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler

__all__ = ["dask_setup"]


async def dask_setup(scheduler: Scheduler) -> None:
    await scheduler.register_scheduler_plugin(ScalingPlugin(), idempotent=True)
