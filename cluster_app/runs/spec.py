"""What a run is and what it produced: ``RunSpec``, ``RoundRecord``, ``TrainResult``.

Plain data, no JAX. A run's spec is copied into its record in the store when it starts
(:func:`spec_to_dict`), so every incarnation of its loop, and every client that attaches to it,
agrees on it (:func:`spec_from_dict`).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from cluster_app import config
from cluster_app.agent.spec import AgentSpec
from cluster_app.config import setting
from cluster_app.errors import RunError, SpecError
from cluster_app.learning.spec import ContinualSpec
from cluster_app.sync.spec import SyncSpec

__all__ = [
    "AGENT_FIELDS",
    "SYNC_FIELDS",
    "RoundRecord",
    "RunSpec",
    "TrainResult",
    "spec_from_dict",
    "spec_to_dict",
]

AGENT_FIELDS = frozenset(f.name for f in fields(AgentSpec))
SYNC_FIELDS = frozenset(f.name for f in fields(SyncSpec))


def _run_id() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a training run; validated on creation."""

    agent: AgentSpec
    sync: SyncSpec = field(default_factory=SyncSpec)
    rounds: int = setting("train.rounds")
    local_steps: int = setting("train.local-steps")
    max_seconds: float | None = setting("train.max-seconds")
    eval_batches: int = setting("train.eval-batches")
    eval_every: int | None = setting("train.eval-every")
    target_loss: float | None = setting("train.target-loss")
    # the run's version 0: a registry revision (branch, tag, commit id), or any version of
    # another run of the store, a running one included: "run:<run-id>" (its latest) or
    # "run:<run-id>@<version>"
    init_from: str | None = setting("train.init-from")
    # a continual run (incremental, transfer, lifelong; cluster_app.learning): its tasks set
    # the rounds (rounds_per_task each)
    continual: ContinualSpec | None = None
    # active agents it trains on (None: every worker it is given, less its standbys); the
    # adaptive target asks for this many plus the standbys
    agents: int | None = setting("train.agents")
    standby: int = setting("recovery.standby")  # warm agents that take over a lost shard
    takeover_timeout: float | None = setting("recovery.takeover-timeout")
    # checkpoint cadence travels with the run, so every incarnation of its loop agrees
    checkpoint_every_rounds: int | None = setting("recovery.checkpoint-every-rounds")
    checkpoint_every_seconds: float | None = setting("recovery.checkpoint-every-seconds")
    keep_checkpoints: int = setting("recovery.keep")
    store_url: str = setting("store.url")
    run_id: str = field(default_factory=_run_id)

    def __post_init__(self) -> None:
        config.check(self)
        if self.continual is not None:
            c = self.continual
            if isinstance(c, dict):
                c = ContinualSpec.from_dict(c)
                object.__setattr__(self, "continual", c)
            if c.scenario == "task" and self.agent.model != "mlp":
                raise SpecError("the task-incremental scenario needs a classifier (model='mlp')")
            object.__setattr__(self, "rounds", c.rounds)
        if self.agent.lr_schedule != "constant" and self.agent.decay_steps is None:
            # a decaying schedule ends with the run unless told otherwise
            horizon = replace(self.agent, decay_steps=self.rounds * self.local_steps)
            object.__setattr__(self, "agent", horizon)

    @classmethod
    def from_config(cls, **overrides: Any) -> RunSpec:
        """Defaults from ``cluster-app.train.*``, ``recovery.*`` and ``store.url``; keywords win.

        Agent fields (``model``, ``learning_rate``, ...) and sync fields (``codec``,
        ``outer``, ...) may be given here too.
        """
        agent = overrides.pop("agent", None) or AgentSpec.from_config(
            **{k: overrides.pop(k) for k in list(overrides) if k in AGENT_FIELDS}
        )
        sync = overrides.pop("sync", None) or SyncSpec.from_config(
            **{k: overrides.pop(k) for k in list(overrides) if k in SYNC_FIELDS}
        )
        kw = config.from_config(
            cls, overrides, extra=("run_id", "continual"), what="training argument"
        )
        return cls(agent=agent, sync=sync, **kw)

    @property
    def run_url(self) -> str:
        """The run's directory in the store: ``<store_url>/<run_id>``."""
        return f"{self.store_url.rstrip('/')}/{self.run_id}"

    @property
    def checkpoint_dir(self) -> str:
        """Where the run's Orbax checkpoints go: ``<run>/checkpoints`` on a local store; under
        ``cluster-app.recovery.checkpoint-dir`` for a remote one (Orbax writes local paths)."""
        url = self.run_url
        if "://" in url and not url.startswith("file://"):
            base = config.get("recovery.checkpoint-dir")
            if base is None:
                raise RunError(
                    f"the store {url} is remote: set cluster-app.recovery."
                    "checkpoint-dir to a directory Orbax can write"
                )
            return os.path.join(base, self.run_id)
        return os.path.abspath(os.path.join(url.removeprefix("file://"), "checkpoints"))


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
    # agents lost mid-round whose shard a hot standby ran instead:
    # {"shard", "lost", "by", "detected", "started"} (wall-clock times)
    takeovers: list[dict] = field(default_factory=list)
    ended: float = 0.0  # wall-clock time (time.time()) the round's version was committed
    learning_rate: float | None = None  # the agents' inner rate at the round's last step
    task: int | None = None  # a continual run's task (index into its all_tasks)
    # a continual run's evaluation on every task seen so far: [{"task", "name", "loss", ...}]
    task_eval: list[dict] | None = None

    def history(self) -> dict[str, Any]:
        """The round as the run record's history keeps it (for MTTR and audit)."""
        return {
            "round": self.round,
            "version": self.version,
            "ended": self.ended,
            "seconds": self.seconds,
            "launched": len(self.workers) + len(self.dropped),
            "agents": len(self.workers),
            "dropped": self.dropped,
            "takeovers": self.takeovers,
            "standby": len(self.standby),
            "loss": self.loss,
            "train_seconds": self.train_seconds,
            "heldout_loss": self.heldout_loss,
            "task": self.task,
            "task_eval": self.task_eval,
        }


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
    # a continual run's start evaluation on every prior task and its consolidations
    continual: dict = field(default_factory=dict)

    @property
    def loss_curve(self) -> np.ndarray:
        """The mean agent loss of each round."""
        return np.array([r.loss for r in self.rounds])

    @property
    def steps(self) -> int:
        """Local steps of all agents over all rounds."""
        return sum(r.steps for r in self.rounds)

    @property
    def steps_per_s(self) -> float:
        """Local steps per second of training (evaluations excluded), all agents together."""
        return self.steps / self.train_seconds if self.train_seconds else 0.0

    def continual_report(self) -> dict:
        """A continual run's accuracy matrix, average accuracy, backward transfer, forgetting
        and stability gap over this incarnation's rounds (:func:`cluster_app.learning.report`);
        ``RunHandle``'s history covers every incarnation."""
        from cluster_app.learning.report import history_report

        rep = history_report([r.history() for r in self.rounds], self.continual.get("start"))
        if rep is None:
            raise RunError(f"run {self.run_id} is not a continual run")
        return rep

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
        """The run's key figures: rounds, steps/s, training and held-out loss from start to end
        (and held-out accuracy where the model is a classifier), bytes moved, goodput."""
        # a classifier's evaluation (the digits MLP) has an accuracy; the code model's has not
        accuracy = {
            f"heldout_accuracy_{when}": ev["accuracy"]
            for when, ev in (("start", self.eval_start), ("end", self.eval_end))
            if "accuracy" in ev
        }
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
            **accuracy,
            "baseline_loss": self.eval_end.get("baseline_loss"),
            "bytes_moved": self.bytes_moved,
            "rejected_deltas": sum(r.rejected for r in self.rounds),
            "goodput": round(self.goodput.get("goodput", 0.0), 4),
            "wall_seconds": round(self.wall_seconds, 2),
        }


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    """The spec as plain JSON-able values (the run record's ``run.json``)."""
    return asdict(spec)


def spec_from_dict(d: dict[str, Any]) -> RunSpec:
    """The spec recorded by :func:`spec_to_dict`."""
    d = dict(d)
    # a continual spec stays a dict here: RunSpec builds it (ContinualSpec.from_dict)
    return RunSpec(agent=AgentSpec(**d.pop("agent")), sync=SyncSpec(**d.pop("sync")), **d)
