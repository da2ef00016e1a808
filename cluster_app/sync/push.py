"""``Push``: what an agent hands the coordinator for one round (plain data, no JAX, no Dask)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Push"]


@dataclass(frozen=True)
class Push:
    """One agent's compressed delta for one round, as the coordinator folds it.

    Attributes
    ----------
    worker : str
        The agent's worker address.
    round, shard : int
        Which share of which round it trained.
    base_version : int
        The global version it trained from (its staleness is measured against it).
    delta : str or None
        The store object holding the encoded delta; None when nothing was pushed.
    error : str or None
        Why nothing was pushed (a diverged delta is never written).
    """

    worker: str
    round: int
    shard: int
    base_version: int
    delta: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain values (checkpoint metadata carries the pushes still pending)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Push:
        """The push recorded by :meth:`as_dict`, or in a checkpoint written before pushes were
        typed (a whole result dict: the fields are picked from it)."""
        return cls(
            worker=d["worker"],
            round=d["round"],
            shard=d.get("shard", 0),
            base_version=d["base_version"],
            delta=d.get("delta"),
            error=d.get("error"),
        )
