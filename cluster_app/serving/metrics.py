"""Per-arm serving metrics: recent latencies and outcomes for the canary, Prometheus for all.

The canary judges the current split only, so :class:`ArmStats` are kept per (split id, arm)
and a new split starts from nothing. Prometheus series use low-cardinality labels: the arm's
role (``baseline``, ``candidate``, ``shadow``, ``direct``) and the outcome.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ArmStats", "ServingMetrics"]

_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ArmStats:
    """What one arm of one split has done lately."""

    latencies: deque = field(default_factory=lambda: deque(maxlen=2000))
    ok: int = 0
    errors: int = 0

    def record(self, seconds: float, ok: bool) -> None:
        self.latencies.append(seconds)
        if ok:
            self.ok += 1
        else:
            self.errors += 1

    @property
    def requests(self) -> int:
        return self.ok + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p50_ms": self.percentile(50) * 1e3 if self.latencies else None,
            "p99_ms": self.percentile(99) * 1e3 if self.latencies else None,
        }


class ServingMetrics:
    """The gateway's counters, on its own Prometheus registry (served at ``/metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "cluster_app_serving_latency_seconds",
            "Completion request latency at the gateway",
            ["role"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "cluster_app_serving_requests_total",
            "Completion requests by arm role and outcome",
            ["role", "outcome"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cluster_app_serving_batch_size",
            "Prompts per agent task",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.queue = Gauge(
            "cluster_app_serving_queue", "Requests waiting or in flight", registry=self.registry
        )
        self.rollbacks = Counter(
            "cluster_app_serving_rollbacks_total",
            "Automatic rollbacks of a split's candidate",
            registry=self.registry,
        )
        self.arms: dict[tuple[str, str], ArmStats] = {}

    def arm(self, split_id: str, ref: str) -> ArmStats:
        return self.arms.setdefault((split_id, ref), ArmStats())
