"""Goodput accounting: where a run's wall time went (pure data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Goodput"]


@dataclass
class Goodput:
    """Where a run's wall time went (seconds, accumulated across controller incarnations).

    ``productive`` counts the share of each round's time whose work was kept (a round that
    lost one of four shards counts 3/4); ``recovery`` counts the rest of such rounds, restores
    and the downtime between a controller's death and its successor's start; ``idle`` is the
    remainder (folds, evaluations, pauses).
    """

    wall: float = 0.0
    productive: float = 0.0
    startup: float = 0.0
    checkpoint: float = 0.0
    recovery: float = 0.0

    @property
    def idle(self) -> float:
        return max(
            0.0, self.wall - self.productive - self.startup - self.checkpoint - self.recovery
        )

    @property
    def goodput(self) -> float:
        return self.productive / self.wall if self.wall > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "idle": self.idle, "goodput": self.goodput}
