"""``RttProbe``: a ``WorkerPlugin`` that reports the worker's round trip to the scheduler.

Dask workers time every heartbeat (``Worker.heartbeat`` feeds it to the ``latency`` digest)
but only keep a very slow average (``Worker.latency``, weight 0.05) and do not report it as a
metric. The probe adds ``worker.metrics["cluster_app_rtt"]``: a faster exponentially weighted
average of the raw heartbeat round trips. It sends no messages of its own: the metric is read
once per heartbeat, just before that heartbeat is timed, so each read sees exactly the round
trips measured since the previous one. Heartbeats carry it into ``WorkerState.metrics``.
"""

from __future__ import annotations

from distributed import WorkerPlugin

from cluster_app.errors import SpecError

__all__ = ["RTT_METRIC", "RttProbe"]

RTT_METRIC = "cluster_app_rtt"


class _Sampler:
    """Per-worker state of the probe (the plugin object may be shared in-process)."""

    def __init__(self, worker, alpha: float) -> None:
        self.alpha = alpha
        self.last_total = worker.digests_total.get("latency", 0.0)
        self.rtt = float(worker.latency)  # the registration round trip, a first estimate

    def __call__(self, worker) -> float:
        # called by Worker.get_metrics on the worker's event loop, once per heartbeat
        total = worker.digests_total.get("latency", 0.0)
        sample, self.last_total = total - self.last_total, total
        if sample > 0:
            self.rtt = self.alpha * sample + (1 - self.alpha) * self.rtt
        return self.rtt


class RttProbe(WorkerPlugin):
    """Adds the ``cluster_app_rtt`` metric (seconds) to every worker.

    Parameters
    ----------
    alpha : float
        Weight of the newest heartbeat round trip in the average, (0, 1].
    """

    name = "cluster-app-rtt"
    idempotent = True

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0 < alpha <= 1:
            raise SpecError(f"alpha={alpha!r} must be in (0, 1]")
        self.alpha = alpha

    def setup(self, worker) -> None:
        """Install the metric (worker event loop)."""
        worker.metrics[RTT_METRIC] = _Sampler(worker, self.alpha)

    def teardown(self, worker) -> None:
        """Remove the metric (worker event loop)."""
        worker.metrics.pop(RTT_METRIC, None)
