"""A replay buffer filled by reservoir sampling (Vitter's Algorithm R), as plain numpy.

Every example of the stream has the same chance of being in the buffer, whatever task it came
from: after tasks of equal size each holds about ``capacity / tasks`` slots. The buffer is
filled once per finished task by the run's consolidation (``agent_consolidate``), from a
generator seeded by ``(seed, task)``, so the same run always builds the very same buffer, and
every agent reads that one buffer from the run's store (``learning/consolidation.py``).
Agents draw their replay samples with their round's own generator (``sample``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster_app.errors import SpecError

__all__ = ["ReplayBuffer"]


@dataclass
class ReplayBuffer:
    """Up to ``capacity`` examples ``(x, y)`` with the task each came from."""

    capacity: int
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    task: np.ndarray | None = None
    seen: int = 0  # examples offered so far, over every task

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise SpecError(f"replay capacity={self.capacity} must be a positive integer")

    def copy(self) -> ReplayBuffer:
        """An independent copy (a consolidation extends its predecessor's buffer, never
        changes it)."""

        def c(a):
            return None if a is None else a.copy()

        return ReplayBuffer(self.capacity, c(self.x), c(self.y), c(self.task), self.seen)

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    def add(self, x: np.ndarray, y: np.ndarray, task: int, rng: np.random.Generator) -> None:
        """Offer the examples ``x, y`` of ``task``, in order, to the reservoir."""
        if len(x) != len(y):
            raise SpecError(f"replay: {len(x)} inputs but {len(y)} labels")
        if self.x is None:
            self.x = np.empty((0, *x.shape[1:]), x.dtype)
            self.y = np.empty((0, *y.shape[1:]), y.dtype)
            self.task = np.empty((0,), np.int32)
        assert self.y is not None and self.task is not None
        if x.shape[1:] != self.x.shape[1:]:
            raise SpecError(
                f"replay: examples of shape {x.shape[1:]} in a {self.x.shape[1:]} buffer"
            )
        free = max(0, self.capacity - len(self))
        head = min(free, len(x))  # the buffer is not full yet: keep them all
        self.x = np.concatenate([self.x, x[:head]])
        self.y = np.concatenate([self.y, y[:head]])
        self.task = np.concatenate([self.task, np.full(head, task, np.int32)])
        for i in range(head, len(x)):  # Algorithm R: example number n replaces slot j < capacity
            j = int(rng.integers(0, self.seen + i + 1))
            if j < self.capacity:
                self.x[j], self.y[j], self.task[j] = x[i], y[i], task
        self.seen += len(x)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` examples drawn uniformly with replacement: ``(x, y, task)``."""
        if not len(self):
            raise SpecError("replay buffer is empty")
        assert self.x is not None and self.y is not None and self.task is not None
        idx = rng.integers(0, len(self), size=n)
        return self.x[idx], self.y[idx], self.task[idx]

    def counts(self) -> dict[int, int]:
        """Examples held per task."""
        if self.task is None:
            return {}
        tasks, n = np.unique(self.task, return_counts=True)
        return {int(t): int(c) for t, c in zip(tasks, n)}
