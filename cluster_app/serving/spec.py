"""``ServeSpec``: how the gateway batches, bounds and judges traffic (``cluster-app.serving``)."""

from __future__ import annotations

from dataclasses import dataclass

from cluster_app import config
from cluster_app.config import setting

__all__ = ["ServeSpec"]


@dataclass(frozen=True)
class ServeSpec:
    """Validated serving settings; the batch window follows from the latency budget."""

    host: str = setting("serving.host")
    port: int = setting("serving.port")
    name: str = setting("serving.name")
    latency_budget_ms: float = setting("serving.latency-budget-ms")
    window_fraction: float = setting("serving.window-fraction")
    max_batch: int = setting("serving.max-batch")
    max_queue: int = setting("serving.max-queue")
    max_in_flight: int = setting("serving.max-in-flight")
    max_prompt_chars: int = setting("serving.max-prompt-chars")
    max_tokens: int = setting("serving.max-tokens")
    default_max_tokens: int = setting("serving.default-max-tokens")
    timeout: float = setting("serving.timeout")
    priority: int = setting("serving.priority")
    free_refresh: float = setting("serving.free-refresh")
    check_every: float = setting("serving.canary.check-every")
    min_requests: int = setting("serving.canary.min-requests")
    min_latency_requests: int = setting("serving.canary.min-latency-requests")
    max_error_rate: float = setting("serving.canary.max-error-rate")
    max_p99_ratio: float = setting("serving.canary.max-p99-ratio")
    max_quality_regression: float = setting("serving.canary.max-quality-regression")
    quality_window: int = setting("serving.canary.quality-window")

    def __post_init__(self) -> None:
        config.check(self)

    @classmethod
    def from_config(cls, **overrides) -> ServeSpec:
        """From ``cluster-app.serving.*``; keywords win."""
        return cls(**config.from_config(cls, overrides, what="serving setting"))

    @property
    def window(self) -> float:
        """Seconds the first request of a batch may wait for others: a small share of the
        latency budget, so batching never costs more than that share of it."""
        return self.latency_budget_ms * self.window_fraction / 1000.0
