"""Checkpoint cadence as small policy objects (pure; no Orbax, no Dask)."""

from __future__ import annotations

import math

from cluster_app.errors import SpecError

__all__ = ["CheckpointPolicy", "young_daly_interval"]


def young_daly_interval(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """The Young/Daly optimum interval between checkpoints, ``sqrt(2 * C * MTBF)`` seconds.

    With a blocking cost of 20 ms and a failure every 6 hours this is ~29 s: checkpoints are
    cheap enough (asynchronous Orbax saves) that the document's 30 minutes is far too rare.
    """
    if checkpoint_cost_s <= 0 or mtbf_s <= 0:
        raise SpecError(f"cost={checkpoint_cost_s} and mtbf={mtbf_s} must be positive")
    return math.sqrt(2.0 * checkpoint_cost_s * mtbf_s)


class CheckpointPolicy:
    """Save when ``every_rounds`` rounds or ``every_seconds`` seconds have passed since the last
    save (whichever comes first; None disables that trigger).

    Parameters
    ----------
    every_rounds : int, optional
    every_seconds : float, optional
    """

    def __init__(self, every_rounds: int | None = 5, every_seconds: float | None = 1800.0) -> None:
        if every_rounds is None and every_seconds is None:
            raise SpecError("a checkpoint policy needs every_rounds and/or every_seconds")
        if every_rounds is not None and every_rounds < 1:
            raise SpecError(f"every_rounds={every_rounds} must be >= 1")
        if every_seconds is not None and every_seconds <= 0:
            raise SpecError(f"every_seconds={every_seconds} must be > 0")
        self.every_rounds, self.every_seconds = every_rounds, every_seconds
        self._last_round: int | None = None
        self._last_time: float | None = None

    def __repr__(self) -> str:
        return (
            f"CheckpointPolicy(every_rounds={self.every_rounds}, "
            f"every_seconds={self.every_seconds})"
        )

    def saved(self, round: int, now: float) -> None:
        self._last_round, self._last_time = round, now

    def should_save(self, round: int, now: float) -> bool:
        if self._last_round is None:
            self.saved(round - 1, now)  # the clock starts with the run (or its resumption)
        assert self._last_round is not None and self._last_time is not None  # saved() set both
        if self.every_rounds is not None and round - self._last_round >= self.every_rounds:
            return True
        return self.every_seconds is not None and now - self._last_time >= self.every_seconds
