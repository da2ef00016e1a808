"""The run controller: training in rounds over whatever agents the cluster has right now.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import Client, wait

from cluster_app import config
from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.worker import agent_eval, agent_init, agent_round
from cluster_app.errors import RunError, SpecError
from cluster_app.sync.spec import SyncSpec
from cluster_app.sync.store import ParamStore

__all__ = ["RoundRecord", "RunController", "RunSpec", "TrainResult", "live_workers"]

AGENT_FIELDS = {
    "model",
    "dataset",
    "seed",
    "batch_size",
    "optimizer",
    "learning_rate",
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
    store_url: str = "cluster-app-store"
    run_id: str = field(
        default_factory=lambda: f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )

    def __post_init__(self) -> None:
        for name, key in _TRAIN_KEYS.items():
            try:
                config.SCHEMA[key].check(key, getattr(self, name))
            except Exception as e:
                raise SpecError(str(e).replace("config key cluster-app.", "")) from None

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
    pull_bytes: int = 0  # what agents read to reach the round's base version
    commit_bytes: int = 0  # the new global version
    accepted: int = 0
    rejected: int = 0
    deferred: int = 0
    heldout_loss: float | None = None  # when evaluated after this round (eval_every)
    train_seconds: float = 0.0  # wall time since training started, evaluations excluded


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
        """Bytes through the store: agents' pushes and pulls plus the coordinator's commits."""
        return sum(r.push_bytes + r.pull_bytes + r.commit_bytes for r in self.rounds)

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
            "wall_seconds": round(self.wall_seconds, 2),
        }


def live_workers(client: Client) -> list[str]:
    """Addresses of the workers currently running, sorted for a stable shard assignment."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(a for a, w in info.items() if w.get("status", "running") == "running")


class RunController:
    """Drives one training run against a cluster through ``client``.

    Parameters
    ----------
    client : distributed.Client
        A client whose workers carry the :class:`~cluster_app.agent.worker.AgentPlugin`.
    spec : RunSpec
    on_round : callable, optional
        Called with each :class:`RoundRecord` after its version is committed (e.g. to scale
        the cluster mid-run, or to stream metrics).
    progress : bool
        Show a progress bar over rounds.
    """

    def __init__(
        self,
        client: Client,
        spec: RunSpec,
        on_round: Callable[[RoundRecord], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.client = client
        self.spec = spec
        self.on_round = on_round
        self.progress = progress
        self.store = ParamStore(spec.run_url)

    def _submit(self, fn, *args, workers=None, key=None):
        return self.client.submit(
            fn,
            *args,
            workers=workers,
            allow_other_workers=workers is not None,
            pure=False,
            retries=2,
            key=key,
        )

    def _evaluate(self, version: int) -> dict:
        fut = self._submit(
            agent_eval,
            self.spec.agent,
            self.spec.run_url,
            version,
            self.spec.eval_batches,
            key=f"agent-eval-{self.spec.run_id}-{version}",
        )
        return fut.result()

    def _round(self, r: int, coordinator) -> RoundRecord:
        spec = self.spec
        workers = live_workers(self.client)
        if not workers:
            raise RunError("the cluster has no running workers")
        t0 = time.perf_counter()
        base = coordinator.version
        futs = [
            self._submit(
                agent_round,
                spec.agent,
                spec.sync,
                spec.run_url,
                base,
                r,
                shard,
                len(workers),
                spec.local_steps,
                workers=[addr],
                key=f"agent-round-{spec.run_id}-{r}-{shard}",
            )
            for shard, addr in enumerate(workers)
        ]
        wait(futs)
        failed = [f for f in futs if f.status != "finished"]
        if failed:
            raise RunError(f"round {r} failed on {len(failed)} of {len(futs)} agents") from (
                failed[0].exception()
            )
        results = [f.result() for f in futs]
        loss = float(np.mean([x["loss_last"] for x in results]))
        stats = coordinator.fold(
            results,
            spec.local_steps,
            meta={"round": r, "workers": sorted({x["worker"] for x in results}), "loss": loss},
        )
        return RoundRecord(
            round=r,
            version=stats.version,
            kind=stats.kind,
            workers=[x["worker"] for x in results],
            loss=loss,
            loss_first=float(np.mean([x["loss_first"] for x in results])),
            steps=sum(x["steps"] for x in results),
            seconds=time.perf_counter() - t0,
            push_bytes=stats.push_bytes,
            pull_bytes=sum(x["pull_bytes"] for x in results),
            commit_bytes=stats.commit_bytes,
            accepted=stats.accepted,
            rejected=sum(stats.rejected.values()),
            deferred=stats.deferred,
        )

    def run(self) -> TrainResult:
        from cluster_app.sync.coordinator import Coordinator  # optax: only when a run starts

        t_start = time.perf_counter()
        spec = self.spec
        version = self._submit(
            agent_init,
            spec.agent,
            spec.run_url,
            {"run_id": spec.run_id},
            key=f"agent-init-{spec.run_id}",
        ).result()
        coordinator = Coordinator(self.store, spec.sync)
        params, _ = self.store.read(version)
        coordinator.start(params, version)
        eval_start = self._evaluate(version)
        records: list[RoundRecord] = []
        t_train = time.perf_counter()
        eval_seconds = 0.0  # excluded from the training clock
        with _progress(self.progress) as bar:
            # with a time budget the number of rounds is unknown up front
            total = spec.rounds if spec.max_seconds is None else None
            task = bar.add_task("training", total=total, loss=float("nan"), agents=0)
            for r in range(spec.rounds):
                rec = self._round(r, coordinator)
                rec.train_seconds = time.perf_counter() - t_train - eval_seconds
                if spec.eval_every and (r + 1) % spec.eval_every == 0:
                    t0 = time.perf_counter()
                    rec.heldout_loss = self._evaluate(rec.version)["loss"]
                    eval_seconds += time.perf_counter() - t0
                records.append(rec)
                bar.update(task, advance=1, loss=rec.loss, agents=len(rec.workers))
                if self.on_round is not None:
                    self.on_round(rec)
                if spec.max_seconds is not None and rec.train_seconds > spec.max_seconds:
                    break
                if (
                    spec.target_loss is not None
                    and rec.heldout_loss is not None
                    and rec.heldout_loss <= spec.target_loss
                ):
                    break
        train_seconds = time.perf_counter() - t_train - eval_seconds
        eval_end = self._evaluate(coordinator.version)
        return TrainResult(
            run_id=spec.run_id,
            run_url=spec.run_url,
            version=coordinator.version,
            rounds=records,
            eval_start=eval_start,
            eval_end=eval_end,
            wall_seconds=time.perf_counter() - t_start,
            train_seconds=train_seconds,
        )


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("agents {task.fields[agents]}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )
