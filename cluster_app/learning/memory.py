"""What a continual run keeps of its finished tasks, in memory: :class:`Consolidation`.

Plain numpy (the agents' pure core uses it; :mod:`~cluster_app.learning.consolidation` writes
and reads it in the run's store).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cluster_app.learning.replay import ReplayBuffer

__all__ = ["Consolidation"]


@dataclass
class Consolidation:
    """What protects the first ``tasks`` tasks of a run: a replay buffer, and EWC's diagonal
    Fisher (flat leaves, summed over the tasks) with the parameters it anchors to."""

    tasks: int
    version: int  # the run version it was computed at (the EWC anchor)
    replay: ReplayBuffer | None = None
    fisher: dict[str, np.ndarray] | None = None
    anchor: dict[str, np.ndarray] | None = None
    meta: dict = field(default_factory=dict)  # the Fisher's variant, sample counts, ...
