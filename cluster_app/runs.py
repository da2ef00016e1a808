"""The run controller: training in rounds over whatever agents the cluster has right now.

A round is: list the live workers, give each one shard of the round's data and the current
global version, let every agent run ``local_steps`` steps, then fold their deltas into the next
global version (``new = base + outer_lr * mean(deltas)``) and commit it to the parameter store.
Workers that join are used from the next round on; a worker that dies mid-round has its task
re-run elsewhere by Dask (its restriction is loose), so the round still completes.

The controller runs in the client process and only moves numpy arrays and small dicts: the JAX
work happens in the agents on the workers.
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
from cluster_app.sync.store import ParamStore

__all__ = ["RoundRecord", "RunController", "RunSpec", "TrainResult"]


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a training run; validated on creation."""

    agent: AgentSpec
    rounds: int = 30
    local_steps: int = 50
    max_seconds: float | None = None
    eval_batches: int = 20
    outer_learning_rate: float = 1.0
    store_url: str = "cluster-app-store"
    run_id: str = field(
        default_factory=lambda: f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )

    def __post_init__(self) -> None:
        for key, value in (
            ("train.rounds", self.rounds),
            ("train.local-steps", self.local_steps),
            ("train.max-seconds", self.max_seconds),
            ("train.eval-batches", self.eval_batches),
            ("train.outer-learning-rate", self.outer_learning_rate),
            ("store.url", self.store_url),
        ):
            try:
                config.SCHEMA[key].check(key, value)
            except Exception as e:
                raise SpecError(str(e).replace("config key cluster-app.", "")) from None

    @classmethod
    def from_config(cls, **overrides: Any) -> RunSpec:
        """Defaults from ``cluster-app.train.*`` and ``store.url``; keyword arguments win.

        Agent fields (``model``, ``dataset``, ``learning_rate``, ...) may be given here too.
        """
        agent_fields = {
            "model",
            "dataset",
            "seed",
            "batch_size",
            "optimizer",
            "learning_rate",
            "model_kwargs",
            "data_kwargs",
        }
        agent = overrides.pop("agent", None) or AgentSpec.from_config(
            **{k: overrides.pop(k) for k in list(overrides) if k in agent_fields}
        )
        keys = {
            "rounds": "train.rounds",
            "local_steps": "train.local-steps",
            "max_seconds": "train.max-seconds",
            "eval_batches": "train.eval-batches",
            "outer_learning_rate": "train.outer-learning-rate",
            "store_url": "store.url",
        }
        unknown = set(overrides) - set(keys) - {"run_id"}
        if unknown:
            raise SpecError(
                f"unknown training argument(s) {sorted(unknown)}; valid: "
                f"{sorted(set(keys) | agent_fields | {'run_id'})}"
            )
        kw = {name: config.get(key) for name, key in keys.items()}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(agent=agent, **kw)

    @property
    def run_url(self) -> str:
        return f"{self.store_url.rstrip('/')}/{self.run_id}"


@dataclass
class RoundRecord:
    """What one round did."""

    round: int
    version: int
    workers: list[str]
    loss: float  # mean over agents of their last local-step loss
    loss_first: float
    steps: int
    seconds: float


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

    def _fold(self, base: dict[str, np.ndarray], results: list[dict]) -> dict[str, np.ndarray]:
        """``base + outer_lr * mean(deltas)``, reading each delta once, accumulating in float64."""
        acc = {k: np.zeros(v.shape, np.float64) for k, v in base.items()}
        for res in results:
            delta = self.store.get_object(res["delta"])
            for k in acc:
                acc[k] += delta[k]
        lr, n = self.spec.outer_learning_rate, len(results)
        return {k: (base[k] + lr * acc[k] / n).astype(base[k].dtype) for k in base}

    def _round(self, r: int, version: int) -> RoundRecord:
        workers = live_workers(self.client)
        if not workers:
            raise RunError("the cluster has no running workers")
        t0 = time.perf_counter()
        futs = [
            self._submit(
                agent_round,
                self.spec.agent,
                self.spec.run_url,
                version,
                r,
                shard,
                len(workers),
                self.spec.local_steps,
                workers=[addr],
                key=f"agent-round-{self.spec.run_id}-{r}-{shard}",
            )
            for shard, addr in enumerate(workers)
        ]
        wait(futs)
        errors = [f for f in futs if f.status != "finished"]
        if errors:
            raise RunError(f"round {r} failed on {len(errors)} of {len(futs)} agents") from (
                errors[0].exception()
            )
        results = [f.result() for f in futs]
        base, _ = self.store.read(version)
        new = self._fold(base, results)
        self.store.commit(
            new,
            version=version + 1,
            parent=version,
            meta={
                "round": r,
                "agents": len(results),
                "workers": sorted({x["worker"] for x in results}),
                "loss": float(np.mean([x["loss_last"] for x in results])),
            },
        )
        for res in results:
            self.store.delete_object(res["delta"])
        return RoundRecord(
            round=r,
            version=version + 1,
            workers=[x["worker"] for x in results],
            loss=float(np.mean([x["loss_last"] for x in results])),
            loss_first=float(np.mean([x["loss_first"] for x in results])),
            steps=sum(x["steps"] for x in results),
            seconds=time.perf_counter() - t0,
        )

    def run(self) -> TrainResult:
        t_start = time.perf_counter()
        spec = self.spec
        version = self._submit(
            agent_init,
            spec.agent,
            spec.run_url,
            {"run_id": spec.run_id},
            key=f"agent-init-{spec.run_id}",
        ).result()
        eval_start = self._evaluate(version)
        records: list[RoundRecord] = []
        t_train = time.perf_counter()
        bar = _progress(self.progress)
        with bar:
            # with a time budget the number of rounds is unknown up front
            total = spec.rounds if spec.max_seconds is None else None
            task = bar.add_task("training", total=total, loss=float("nan"), agents=0)
            for r in range(spec.rounds):
                rec = self._round(r, version)
                version = rec.version
                records.append(rec)
                bar.update(task, advance=1, loss=rec.loss, agents=len(rec.workers))
                if self.on_round is not None:
                    self.on_round(rec)
                if (
                    spec.max_seconds is not None
                    and time.perf_counter() - t_train > spec.max_seconds
                ):
                    break
        train_seconds = time.perf_counter() - t_train
        eval_end = self._evaluate(version)
        return TrainResult(
            run_id=spec.run_id,
            run_url=spec.run_url,
            version=version,
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
