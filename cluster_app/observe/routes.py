"""JSON routes on the scheduler's HTTP server: the monitor's state for scripts and tools.

``/cluster-app/json/<view>.json`` where ``view`` is ``snapshot`` (everything), ``agents``,
``runs``, ``sync``, ``placement`` or ``serving``; ``?limit=N`` bounds the agents listed. They
serve the same data as the dashboard page and the ``cluster_app_monitor`` handler.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from tornado import web

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler

    from cluster_app.observe.monitor import FleetMonitor

__all__ = ["ROUTE", "attach"]

ROUTE = r"/cluster-app/json/(\w+)\.json"
VIEWS = ("snapshot", "agents", "runs", "sync", "placement", "serving")


class MonitorJson(web.RequestHandler):
    def initialize(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def get(self, view: str) -> None:
        from cluster_app.observe.monitor import PLUGIN_NAME

        monitor = self.scheduler.plugins.get(PLUGIN_NAME)
        if monitor is None:
            raise web.HTTPError(404, reason="the cluster-app monitor is not running")
        if view not in VIEWS:
            raise web.HTTPError(404, reason=f"no view {view!r}; views: {', '.join(VIEWS)}")
        try:
            limit = int(self.get_argument("limit", "200"))
        except ValueError:
            raise web.HTTPError(400, reason="limit must be an integer") from None
        snap = monitor.snapshot(limit=max(0, limit))  # type: ignore[attr-defined]
        body = snap if view == "snapshot" else {"time": snap["time"], view: snap[view]}
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(_finite(body), allow_nan=False))


def _finite(x: object) -> object:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def attach(scheduler: Scheduler, monitor: FleetMonitor) -> None:
    """Add the routes once per scheduler (Tornado cannot remove a route: after the monitor
    closes they answer 404)."""
    app = getattr(scheduler, "http_application", None)
    if app is None or getattr(app, "_cluster_app_routes", False):
        return
    app.add_handlers(r".*$", [(ROUTE, MonitorJson, {"scheduler": scheduler})])
    app._cluster_app_routes = True
