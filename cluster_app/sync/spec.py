"""``SyncSpec``: how agents and the coordinator synchronise, as plain validated data (no JAX)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from cluster_app import config
from cluster_app.errors import SpecError

__all__ = ["SyncSpec"]

_KEYS = {
    "codec": "sync.codec",
    "outer": "sync.outer",
    "outer_learning_rate": "sync.outer-learning-rate",
    "outer_momentum": "sync.outer-momentum",
    "full_every": "sync.full-every",
    "max_staleness": "sync.max-staleness",
    "push_timeout": "sync.push-timeout",
    "async_push": "sync.async-push",
}


@dataclass(frozen=True)
class SyncSpec:
    """How agents and the coordinator synchronise (see ``cluster-app.sync.*``)."""

    codec: str = "int8"
    outer: str = "average"
    outer_learning_rate: float = 1.0
    outer_momentum: float = 0.9
    full_every: int = 1000  # local steps between full fp32 snapshots (K)
    max_staleness: int = 2
    push_timeout: float = 30.0
    async_push: bool = True

    def __post_init__(self) -> None:
        config.check_fields({_KEYS[f.name]: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_config(cls, **overrides: Any) -> SyncSpec:
        """Defaults from ``cluster-app.sync.*``; keyword arguments (field names) win."""
        unknown = set(overrides) - set(_KEYS)
        if unknown:
            raise SpecError(f"unknown sync field(s) {sorted(unknown)}; valid: {sorted(_KEYS)}")
        kw = {name: config.get(key) for name, key in _KEYS.items()}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)
