"""``PlacementSettings``: the one small config object of the placement plugin.

Read from ``cluster-app.placement.*`` (see ``cluster_app.yaml``) on the client, then pickled
with the plugin to the scheduler, so the client's configuration is the one that applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from cluster_app import config
from cluster_app.config import setting
from cluster_app.errors import ConfigError, SpecError
from cluster_app.placement.dispatch import Dispatcher, ScorePolicy
from cluster_app.placement.fleet import Fleet
from cluster_app.placement.scoring import Weights

__all__ = ["PlacementSettings"]


@dataclass(frozen=True)
class PlacementSettings:
    """How the placement plugin scores, queues and dispatches.

    Attributes
    ----------
    enabled : bool
        Whether :class:`~cluster_app.cluster.AgentCluster` registers the plugin.
    key_prefixes : tuple of str
        Tasks whose key starts with one of these are placed by the plugin (as are tasks
        annotated ``cluster_app_placement=True``).
    weights : Weights
        Load / latency / priority weights of the score.
    latency_ref : float
        Round trip (seconds) that counts as latency 1.
    aging : float
        Priority levels a queued task gains per second of waiting.
    max_prefetch : int
        Most tasks a worker may hold beyond its threads to hide its hand-over overhead.
    prefetch_threshold : float
        Prefetch only where that overhead exceeds this fraction of the task duration.
    hold : bool
        Let a task wait for a better worker (see :mod:`cluster_app.placement.dispatch`).
    hold_margin : float
        How much sooner the alternative must finish before a task is held.
    lookahead : int
        Held tasks after which a dispatch pass stops looking down the queue.
    refresh_interval : float
        Seconds between snapshots of the workers' metrics.
    duration_alpha : float
        Weight of the newest duration in the per-worker averages.
    learn_interval : float
        Longest time what finished tasks teach (durations, overheads) waits before the
        estimates derived from it are recomputed (0: at every task).
    """

    enabled: bool = setting("placement.enabled")
    key_prefixes: tuple[str, ...] = setting("placement.key-prefixes", convert=tuple)
    weights: Weights = setting("placement.weights", convert=lambda d: Weights(**d))
    latency_ref: float = setting("placement.latency-reference")
    aging: float = setting("placement.aging")
    max_prefetch: int = setting("placement.max-prefetch")
    prefetch_threshold: float = setting("placement.prefetch-threshold")
    hold: bool = setting("placement.hold")
    hold_margin: float = setting("placement.hold-margin")
    lookahead: int = setting("placement.lookahead")
    refresh_interval: float = setting("placement.refresh-interval")
    duration_alpha: float = setting("placement.duration-alpha")
    learn_interval: float = setting("placement.learn-interval")

    def __post_init__(self) -> None:
        if isinstance(self.key_prefixes, str) or not all(
            isinstance(p, str) and p for p in self.key_prefixes
        ):
            raise ConfigError(
                f"placement key_prefixes={self.key_prefixes!r} must be a list of non-empty "
                "strings, e.g. ['agent-']"
            )
        object.__setattr__(self, "key_prefixes", tuple(self.key_prefixes))
        try:
            config.check(self)
        except SpecError as e:
            raise ConfigError(str(e)) from None
        try:
            self.weights.validated()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def from_config(cls, **overrides: Any) -> PlacementSettings:
        """Values from ``cluster-app.placement.*``; keyword arguments win."""
        return cls(
            **config.from_config(cls, overrides, what="placement setting", error=ConfigError)
        )

    def with_(self, **changes: Any) -> PlacementSettings:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def build(self) -> Dispatcher:
        """A fresh dispatcher with the default score policy."""
        policy = ScorePolicy(self.weights, self.latency_ref, self.hold, self.hold_margin)
        fleet = Fleet(
            self.duration_alpha, self.max_prefetch, self.prefetch_threshold, self.learn_interval
        )
        return Dispatcher(policy, fleet, aging=self.aging, lookahead=self.lookahead)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for snapshots and JSON)."""
        d = asdict(self)
        d["weights"] = self.weights._asdict()
        d["key_prefixes"] = list(self.key_prefixes)
        return d
