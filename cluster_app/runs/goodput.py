"""Goodput accounting: where a run's wall time went, across incarnations of its loop (pure)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["Clock", "Goodput"]


@dataclass
class Goodput:
    """Where a run's wall time went (seconds, accumulated across incarnations of its loop).

    ``productive`` counts the share of each round's time whose work was kept (a round that
    lost one of four shards counts 3/4); ``recovery`` counts the rest of such rounds, restores
    and the downtime between a loop's death and its successor's start; ``idle`` is the
    remainder (folds, evaluations, pauses).
    """

    wall: float = 0.0
    productive: float = 0.0
    startup: float = 0.0
    checkpoint: float = 0.0
    recovery: float = 0.0

    @classmethod
    def resumed(cls, status: dict[str, Any], now: float | None = None) -> Goodput:
        """The accounting a run's last status reported, continued: the time since that report
        counts as downtime (wall and recovery) unless the run had ended. A status without
        goodput (a new run) starts from zero."""
        previous = status.get("goodput")
        if previous is None:
            return cls()
        g = cls(**{f.name: previous[f.name] for f in fields(cls)})
        if status.get("phase") not in ("finished", "stopped"):
            down = max(0.0, (time.time() if now is None else now) - status["updated"])
            g.recovery += down
            g.wall += down
        return g

    def round(self, seconds: float, kept: float) -> None:
        """A round of ``seconds`` that kept fraction ``kept`` of its shards' work."""
        self.productive += seconds * kept
        self.recovery += seconds * (1 - kept)

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


@dataclass
class Clock:
    """The clocks of one incarnation of a run's loop (``time.perf_counter`` seconds).

    ``wall0`` and ``trained0`` are what earlier incarnations accounted (goodput wall time and
    training time), so budgets and reports span the whole run.
    """

    wall0: float = 0.0
    trained0: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    train_started: float | None = None
    eval_seconds: float = 0.0  # evaluations since training started (not training time)

    def elapsed(self) -> float:
        """Seconds since this incarnation started."""
        return time.perf_counter() - self.started

    def wall(self) -> float:
        """The run's wall time so far, earlier incarnations included."""
        return self.wall0 + self.elapsed()

    def trained(self) -> float:
        """This incarnation's training seconds (evaluations excluded)."""
        if self.train_started is None:
            return 0.0
        return time.perf_counter() - self.train_started - self.eval_seconds
