"""Scheduler preload: ``dask scheduler --preload cluster_app.observe.preload``.

Imported before the scheduler starts, it registers the dashboard page (which a dashboard only
picks up at start), and :func:`dask_setup` installs the :class:`FleetMonitor`, so the page, the
JSON routes and the ``cluster_app_*`` Prometheus series are there from the first scrape, before
any client connects. (``AgentCluster`` installs the monitor too; installing it twice keeps one.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cluster_app.observe.dashboard  # noqa: F401  (registers the page)
from cluster_app.observe.monitor import FleetMonitor

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler

__all__ = ["dask_setup"]


async def dask_setup(scheduler: Scheduler) -> None:
    await scheduler.register_scheduler_plugin(FleetMonitor(), idempotent=True)
