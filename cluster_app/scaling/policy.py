"""How many workers the fleet wants: a pure policy (no Dask, no clock of its own).

:func:`raw_target` turns the fleet's demand into a worker count:

- **training**: each running run wants its width: its ``train.agents`` when set, else the
  active agents it has now (a run trains on whatever it was given; it does not ask for more);
- **other agent work** (evaluations, serving batches, scoring, warm-ups), queued or running, in
  expected seconds (Dask's per-prefix duration averages): one worker per
  ``target_backlog_seconds`` of it, so a burst that a few workers clear before a new one could
  start asks for few;
- **hot standbys**: what the running runs ask for (``recovery.standby``), kept on top, so a lost
  agent's shard always has a warm taker;

then clamps to ``[minimum, maximum]``. :class:`Stabilizer` applies the Kubernetes HPA's rule:
scale up at once, scale down only to the highest target seen over the last
``scale_down_seconds``, so a fleet does not shrink in the gap between two rounds or flap on a
bursty queue (dask-kubernetes#674, #633).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from cluster_app import config
from cluster_app.config import setting

__all__ = ["Demand", "ScalingSpec", "Stabilizer", "desired_workers", "raw_target"]


@dataclass(frozen=True)
class ScalingSpec:
    """Validated ``cluster-app.scaling.*`` settings."""

    minimum: int = setting("scaling.minimum")
    maximum: int = setting("scaling.maximum")
    target_backlog_seconds: float = setting("scaling.target-backlog-seconds")
    scale_down_seconds: float = setting("scaling.scale-down-seconds")

    def __post_init__(self) -> None:
        config.check(self)
        if self.minimum > self.maximum:
            from cluster_app.errors import SpecError

            raise SpecError(f"scaling.minimum={self.minimum} > scaling.maximum={self.maximum}")

    @classmethod
    def from_config(cls, **overrides) -> ScalingSpec:
        return cls(**config.from_config(cls, overrides, what="scaling setting"))


@dataclass(frozen=True)
class Demand:
    """What the fleet has to do now.

    Attributes
    ----------
    run_width : int
        Workers the running runs train on (the sum of their widths).
    other_seconds : float
        Expected seconds of the other agent tasks queued or running.
    standby : int
        Hot standbys the running runs ask for.
    """

    run_width: int = 0
    other_seconds: float = 0.0
    standby: int = 0


def raw_target(demand: Demand, spec: ScalingSpec) -> int:
    """The workers ``demand`` needs, before stabilisation (see the module docstring)."""
    other = math.ceil(max(demand.other_seconds, 0.0) / spec.target_backlog_seconds - 1e-9)
    want = max(demand.run_width, 0) + other + max(demand.standby, 0)
    return min(max(want, spec.minimum), spec.maximum)


class Stabilizer:
    """Fast up, slow down: the target is the highest raw target of the last
    ``window`` seconds (the current one included)."""

    def __init__(self, window: float) -> None:
        self.window = float(window)
        self.history: deque[tuple[float, int]] = deque()

    def __call__(self, raw: int, now: float) -> int:
        self.history.append((now, raw))
        while self.history and self.history[0][0] < now - self.window:
            self.history.popleft()
        return max(r for _, r in self.history)


def desired_workers(demand: Demand, spec: ScalingSpec, stabilizer: Stabilizer, now: float) -> int:
    """The stabilised target for ``demand`` at time ``now``."""
    return stabilizer(raw_target(demand, spec), now)
