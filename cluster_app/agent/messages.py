"""What agent tasks send back to the run loop: frozen plain data (no JAX, no Dask)."""

from __future__ import annotations

from dataclasses import dataclass

from cluster_app.sync.push import Push

__all__ = ["RoundResult"]


@dataclass(frozen=True)
class RoundResult:
    """One agent's share of one round, as ``agent_round`` returns it.

    Attributes
    ----------
    push : Push
        The delta it pushed (or why it pushed none), for the coordinator.
    pull_bytes : int
        What it read from the store to reach the round's base version.
    loss_first, loss_last, loss_mean : float
        Training loss at its first and last local step, and over all of them.
    steps : int
        Local steps run.
    seconds : float
        Wall time of the local steps.
    learning_rate : float
        The inner rate at the round's last step.
    encode_seconds : float
        Time to compress the delta.
    started : float
        Wall-clock time (``time.time()``) its local steps began, after it reached the base
        version (a standby taking over a lost shard mid-round is measured by it).
    pull_seconds : float
        Time to reach the base version (read and apply what it lacked).
    """

    push: Push
    pull_bytes: int
    loss_first: float
    loss_last: float
    loss_mean: float
    steps: int
    seconds: float
    learning_rate: float
    encode_seconds: float = 0.0
    started: float = 0.0
    pull_seconds: float = 0.0

    @property
    def worker(self) -> str:
        return self.push.worker
