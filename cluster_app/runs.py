"""What a run is and what it produced: ``RunSpec``, ``RoundRecord``, ``TrainResult``.

The loop that drives a run lives in ``controller.py``.

A run trains in rounds over whatever agents the cluster has right now.

A round is: list the live workers, give each one shard of the round's data and the current
global version, let every agent run ``local_steps`` steps (H) and push its compressed delta,
then let the :class:`~cluster_app.sync.coordinator.Coordinator` fold the deltas into the next
global version (outer optimiser, compressed delta commit, full snapshot every K steps).
Workers that join are used from the next round on; a worker that dies mid-round has its task
re-run elsewhere by Dask (its restriction is loose), so the round still completes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from distributed import Client

from cluster_app import config
from cluster_app.agent.spec import AgentSpec
from cluster_app.errors import SpecError
from cluster_app.sync.spec import SyncSpec

__all__ = ["RoundRecord", "RunSpec", "TrainResult", "live_workers", "workers_info"]

AGENT_FIELDS = {
    "model",
    "dataset",
    "seed",
    "batch_size",
    "optimizer",
    "learning_rate",
    "lr_schedule",
    "warmup_steps",
    "decay_steps",
    "lr_end_fraction",
    "lr_cooldown",
    "model_kwargs",
    "data_kwargs",
}
SYNC_FIELDS = {
    "codec",
    "outer",
    "outer_learning_rate",
    "outer_momentum",
    "full_every",
    "max_staleness",
    "push_timeout",
    "async_push",
}
_TRAIN_KEYS = {
    "rounds": "train.rounds",
    "local_steps": "train.local-steps",
    "max_seconds": "train.max-seconds",
    "eval_batches": "train.eval-batches",
    "eval_every": "train.eval-every",
    "target_loss": "train.target-loss",
    "standby": "recovery.standby",
    "checkpoint_every_rounds": "recovery.checkpoint-every-rounds",
    "checkpoint_every_seconds": "recovery.checkpoint-every-seconds",
    "keep_checkpoints": "recovery.keep",
    "store_url": "store.url",
}


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a training run; validated on creation."""

    agent: AgentSpec
    sync: SyncSpec = field(default_factory=SyncSpec)
    rounds: int = 30
    local_steps: int = 100
    max_seconds: float | None = None
    eval_batches: int = 20
    eval_every: int | None = None
    target_loss: float | None = None
    standby: int = 0  # hot standbys: warm agents that take over a lost agent's shard
    # checkpoint cadence travels with the run, so every controller incarnation agrees
    checkpoint_every_rounds: int | None = 5
    checkpoint_every_seconds: float | None = 1800.0
    keep_checkpoints: int = 3
    store_url: str = "cluster-app-store"
    run_id: str = field(
        default_factory=lambda: f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )

    def __post_init__(self) -> None:
        config.check_fields({key: getattr(self, name) for name, key in _TRAIN_KEYS.items()})
        if self.agent.lr_schedule != "constant" and self.agent.decay_steps is None:
            # a decaying schedule ends with the run unless told otherwise
            horizon = replace(self.agent, decay_steps=self.rounds * self.local_steps)
            object.__setattr__(self, "agent", horizon)

    @classmethod
    def from_config(cls, **overrides: Any) -> RunSpec:
        """Defaults from ``cluster-app.train.*``, ``sync.*`` and ``store.url``; keywords win.

        Agent fields (``model``, ``learning_rate``, ...) and sync fields (``codec``,
        ``outer``, ...) may be given here too.
        """
        agent = overrides.pop("agent", None) or AgentSpec.from_config(
            **{k: overrides.pop(k) for k in list(overrides) if k in AGENT_FIELDS}
        )
        sync = overrides.pop("sync", None) or SyncSpec.from_config(
            **{k: overrides.pop(k) for k in list(overrides) if k in SYNC_FIELDS}
        )
        unknown = set(overrides) - set(_TRAIN_KEYS) - {"run_id"}
        if unknown:
            valid = sorted(set(_TRAIN_KEYS) | AGENT_FIELDS | SYNC_FIELDS | {"run_id"})
            raise SpecError(f"unknown training argument(s) {sorted(unknown)}; valid: {valid}")
        kw = {name: config.get(key) for name, key in _TRAIN_KEYS.items()}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(agent=agent, sync=sync, **kw)

    @property
    def run_url(self) -> str:
        return f"{self.store_url.rstrip('/')}/{self.run_id}"


@dataclass
class RoundRecord:
    """What one round did."""

    round: int
    version: int
    kind: str  # the committed version: "delta" or "full"
    workers: list[str]
    loss: float  # mean over agents of their last local-step loss
    loss_first: float
    steps: int
    seconds: float
    push_bytes: int = 0  # compressed agent deltas folded this round
    fold_bytes: int = 0  # those deltas read back from the store by the coordinator
    pull_bytes: int = 0  # what agents read to reach the round's base version
    commit_bytes: int = 0  # the new global version
    accepted: int = 0
    rejected: int = 0
    deferred: int = 0
    heldout_loss: float | None = None  # when evaluated after this round (eval_every)
    train_seconds: float = 0.0  # wall time since training started, evaluations excluded
    standby: list[str] = field(default_factory=list)  # hot standbys during this round
    dropped: list[str] = field(default_factory=list)  # agents lost mid-round (shard skipped)
    ended: float = 0.0  # wall-clock time (time.time()) the round's version was committed
    learning_rate: float | None = None  # the agents' inner rate at the round's last step


@dataclass
class TrainResult:
    """The outcome of a run: per-round records, held-out evaluation and throughput."""

    run_id: str
    run_url: str
    version: int
    rounds: list[RoundRecord]
    eval_start: dict
    eval_end: dict
    wall_seconds: float
    train_seconds: float
    goodput: dict = field(default_factory=dict)
    resumed_from: int = 0  # the first round this controller ran (> 0 after a resume)

    @property
    def loss_curve(self) -> np.ndarray:
        return np.array([r.loss for r in self.rounds])

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.rounds)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds else 0.0

    def time_to_loss(self, target: float) -> float | None:
        """Training seconds (evaluations excluded) until held-out loss first reached ``target``."""
        for r in self.rounds:
            if r.heldout_loss is not None and r.heldout_loss <= target:
                return r.train_seconds
        return None

    @property
    def bytes_moved(self) -> int:
        """Bytes through the store, each way: agents' pushes and pulls, the coordinator's reads
        of the pushes and its commits."""
        return sum(r.push_bytes + r.fold_bytes + r.pull_bytes + r.commit_bytes for r in self.rounds)

    def summary(self) -> dict:
        return {
            "run_id": self.run_id,
            "rounds": len(self.rounds),
            "version": self.version,
            "agent_steps": self.steps,
            "steps_per_s": round(self.steps_per_s, 2),
            "train_loss_start": self.rounds[0].loss_first if self.rounds else float("nan"),
            "train_loss_end": self.rounds[-1].loss if self.rounds else float("nan"),
            "heldout_loss_start": self.eval_start.get("loss"),
            "heldout_loss_end": self.eval_end.get("loss"),
            "baseline_loss": self.eval_end.get("baseline_loss"),
            "bytes_moved": self.bytes_moved,
            "rejected_deltas": sum(r.rejected for r in self.rounds),
            "goodput": round(self.goodput.get("goodput", 0.0), 4),
            "wall_seconds": round(self.wall_seconds, 2),
        }


def workers_info(client: Client) -> dict[str, dict]:
    """The scheduler's per-worker information, fetched now (never the client's cache)."""
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


def live_workers(client: Client, running_only: bool = True) -> list[str]:
    """Addresses of the workers currently running, sorted for a stable shard assignment.

    ``running_only=False`` lists every worker the scheduler still has, including paused ones
    (memory pressure) and ones still starting: gone from this list means gone.
    """
    # ask the scheduler itself: ``client.scheduler_info()`` returns the client's cached
    # identity, which its periodic 2-second refresh replaces with one listing no workers
    info = workers_info(client)
    return sorted(
        a for a, w in info.items() if not running_only or w.get("status", "running") == "running"
    )
