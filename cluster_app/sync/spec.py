"""``SyncSpec``: how agents and the coordinator synchronise, as plain validated data (no JAX)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster_app import config
from cluster_app.config import setting

__all__ = ["SyncSpec"]


@dataclass(frozen=True)
class SyncSpec:
    """How agents and the coordinator synchronise (see ``cluster-app.sync.*``)."""

    codec: str = setting("sync.codec")
    outer: str = setting("sync.outer")
    outer_learning_rate: float = setting("sync.outer-learning-rate")
    outer_momentum: float = setting("sync.outer-momentum")
    full_every: int = setting("sync.full-every")  # local steps between full fp32 snapshots (K)
    max_staleness: int = setting("sync.max-staleness")
    push_timeout: float = setting("sync.push-timeout")
    async_push: bool = setting("sync.async-push")

    def __post_init__(self) -> None:
        config.check(self)

    @classmethod
    def from_config(cls, **overrides: Any) -> SyncSpec:
        """Defaults from ``cluster-app.sync.*``; keyword arguments (field names) win."""
        return cls(**config.from_config(cls, overrides, what="sync field"))
