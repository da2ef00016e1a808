"""The run controller: rounds, hot standbys, checkpoints, resumption, control and goodput.

:class:`RunController` drives one run through a ``Client``. It can run in the user's process
(``AgentCluster.train``) or as a long-running task on the cluster (:func:`controller_task`,
``AgentCluster.submit``), where it outlives the client: if its worker dies Dask re-runs the
task elsewhere and the new incarnation resumes from the store and the newest valid checkpoint.

Per round it: reads the control state (pause/stop), splits the live workers into *active*
agents and *hot standbys* (warm agents holding the current version, no training work),
gives every active agent one shard, drops the shard of an agent whose worker is lost
mid-round (at most one round of that agent's work is lost, never redone twice), folds the
rest through the coordinator, checkpoints on the policy and reports status and goodput.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
from distributed import Client, wait

from cluster_app import config
from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.worker import agent_eval, agent_init, agent_round, agent_warm
from cluster_app.errors import RunError
from cluster_app.recovery.goodput import Goodput
from cluster_app.recovery.policy import CheckpointPolicy
from cluster_app.recovery.runstate import RunState
from cluster_app.runs import RoundRecord, RunSpec, TrainResult, live_workers
from cluster_app.sync.spec import SyncSpec
from cluster_app.sync.store import ParamStore

__all__ = ["RunController", "controller_task", "spec_from_dict", "spec_to_dict"]


def spec_to_dict(spec: RunSpec) -> dict:
    return asdict(spec)


def spec_from_dict(d: dict) -> RunSpec:
    d = dict(d)
    return RunSpec(agent=AgentSpec(**d.pop("agent")), sync=SyncSpec(**d.pop("sync")), **d)


class RunController:
    """Drives one training run against a cluster through ``client``.

    Parameters
    ----------
    client : distributed.Client
    spec : RunSpec
    on_round : callable, optional
        Called with each :class:`RoundRecord` after its version is committed.
    progress : bool
        Show a progress bar over rounds.
    policy : CheckpointPolicy, optional
        When to checkpoint (default from ``cluster-app.recovery.*``).
    """

    def __init__(
        self,
        client: Client,
        spec: RunSpec,
        on_round: Callable[[RoundRecord], None] | None = None,
        progress: bool = True,
        policy: CheckpointPolicy | None = None,
    ) -> None:
        self.client, self.spec, self.on_round, self.progress = client, spec, on_round, progress
        self.policy = policy or CheckpointPolicy(
            spec.checkpoint_every_rounds, spec.checkpoint_every_seconds
        )
        self.store = ParamStore(spec.run_url)
        self.state = RunState(spec.run_url)
        self.active: list[str] = []
        self.standby: list[str] = []
        self.goodput = Goodput()
        self.lost_workers = 0

    # ------------------------------------------------------------------ tasks
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
        return self._submit(
            agent_eval,
            self.spec.agent,
            self.spec.run_url,
            version,
            self.spec.eval_batches,
            key=f"agent-eval-{self.spec.run_id}-{version}-{time.time_ns()}",
        ).result()

    # ------------------------------------------------------------------ roles
    def _assign(self) -> None:
        """Sticky roles: a lost active agent is replaced by a standby (promotion); new workers
        refill the standby pool up to ``spec.standby``, then become active. Active agents
        always outnumber standbys (a 2-worker cluster has none), so a small fleet keeps
        learning at full width."""
        live = live_workers(self.client)
        if not live:
            raise RunError("the cluster has no running workers")
        lost = [w for w in self.active if w not in live]  # gone, or paused: replace this round
        present = set(live_workers(self.client, running_only=False))
        self.lost_workers += len([w for w in lost if w not in present])
        active = [w for w in self.active if w in live]
        standby = [w for w in self.standby if w in live]
        for _ in lost:
            if standby:
                active.append(standby.pop(0))
        pool = min(self.spec.standby, (len(live) - 1) // 2)
        for w in (w for w in live if w not in active and w not in standby):
            (standby if active and len(standby) < pool else active).append(w)
        if not active:
            active.append(standby.pop(0))
        self.active, self.standby = active, standby

    # ------------------------------------------------------------------ a round
    def _round(self, r: int, coordinator) -> RoundRecord:
        spec = self.spec
        self._assign()
        t0 = time.perf_counter()
        base = coordinator.version
        futs = {
            addr: self._submit(
                agent_round,
                spec.agent,
                spec.sync,
                spec.run_url,
                base,
                r,
                shard,
                len(self.active),
                spec.local_steps,
                workers=[addr],
                key=f"agent-round-{spec.run_id}-{r}-{shard}-{base}",
            )
            for shard, addr in enumerate(self.active)
        }
        warm = [
            self._submit(
                agent_warm,
                spec.agent,
                spec.run_url,
                base,
                workers=[w],
                key=f"agent-warm-{spec.run_id}-{r}-{i}",
            )
            for i, w in enumerate(self.standby)
        ]
        results, dropped = self._collect(futs)
        if not results:
            raise RunError(f"round {r}: every agent was lost")
        loss = float(np.mean([x["loss_last"] for x in results]))
        stats = coordinator.fold(
            results,
            spec.local_steps,
            meta={"round": r, "workers": sorted({x["worker"] for x in results}), "loss": loss},
            final=r + 1 == spec.rounds,  # the run's last version is the exact master
        )
        seconds = time.perf_counter() - t0
        kept = len(results) / len(futs)
        self.goodput.productive += seconds * kept
        self.goodput.recovery += seconds * (1 - kept)
        # standbys' pulls are real traffic: count the ones that finished during the round
        warm_bytes = sum(f.result()["pull_bytes"] for f in warm if f.status == "finished")
        self.client.cancel([f for f in warm if not f.done()])
        return RoundRecord(
            round=r,
            version=stats.version,
            kind=stats.kind,
            workers=[x["worker"] for x in results],
            loss=loss,
            loss_first=float(np.mean([x["loss_first"] for x in results])),
            steps=sum(x["steps"] for x in results),
            seconds=seconds,
            push_bytes=stats.push_bytes,
            fold_bytes=stats.fold_bytes,
            pull_bytes=sum(x["pull_bytes"] for x in results) + warm_bytes,
            commit_bytes=stats.commit_bytes,
            accepted=stats.accepted,
            rejected=sum(stats.rejected.values()),
            deferred=stats.deferred,
            standby=list(self.standby),
            dropped=dropped,
            ended=time.time(),
            learning_rate=float(np.mean([x["learning_rate"] for x in results])),
        )

    def _collect(self, futs: dict) -> tuple[list[dict], list[str]]:
        """Wait for the round; a shard whose worker died is dropped, not re-run (its round of
        work is the only loss), so a lost worker never stalls the fleet."""
        pending, dropped, missing = dict(futs), [], set()
        while True:
            done = {a: f for a, f in pending.items() if f.done()}
            if len(done) == len(pending):
                break
            # a paused (memory-pressured) worker is slow, not lost: only absence counts, and
            # only when two looks a quarter second apart agree
            live = set(live_workers(self.client, running_only=False))
            absent = {a for a in pending if a not in live and a not in done}
            for addr in absent & missing:
                self.client.cancel([pending.pop(addr)])
                dropped.append(addr)
            missing = absent - set(dropped)
            with contextlib.suppress(TimeoutError):  # wake up to look for lost workers
                wait(list(pending.values()), timeout=0.25, return_when="FIRST_COMPLETED")
        results = []
        for addr, f in pending.items():
            if f.status == "finished":
                results.append(f.result())
            elif f.status == "error" and addr in set(live_workers(self.client, running_only=False)):
                raise RunError(f"agent on {addr} failed") from f.exception()
            else:
                dropped.append(addr)
        return results, dropped

    # ------------------------------------------------------------------ lifecycle
    def _checkpoint_dir(self) -> str:
        url = self.spec.run_url
        if "://" in url and not url.startswith("file://"):
            base = config.get("recovery.checkpoint-dir")
            if base is None:
                raise RunError(
                    f"the store {url} is remote: set cluster-app.recovery."
                    "checkpoint-dir to a directory Orbax can write"
                )
            return os.path.join(base, self.spec.run_id)
        return os.path.abspath(os.path.join(url.removeprefix("file://"), "checkpoints"))

    def _start(self, coordinator, ckpt) -> int:
        """Initialise or resume; returns the first round to run."""
        from cluster_app.errors import VersionNotFound

        spec = self.spec
        self._submit(
            agent_init,
            spec.agent,
            spec.run_url,
            {"run_id": spec.run_id},
            key=f"agent-init-{spec.run_id}-{time.time_ns()}",
        ).result()
        params0, _ = self.store.read(0)

        def validate(state, meta):
            # the checkpoint must agree with the store it claims to belong to
            try:
                stored, _ = self.store.read(meta["version"])
            except VersionNotFound:
                return f"version {meta['version']} is not in the store"
            for k, v in stored.items():
                if not np.array_equal(np.asarray(state["published"][k]), v):
                    return f"published parameters differ from stored version {meta['version']}"
            return None

        t0 = time.perf_counter()
        restored = ckpt.restore(coordinator.template(params0), validate=validate)
        if restored is None:  # a fresh run, or no usable checkpoint: the store is the truth
            params, rec, skipped = self.store.read_valid()
            coordinator.start(params, rec.version, skip_to=max(skipped, default=None))
            last = self.store.record(max(skipped)) if skipped else rec
            first = last.meta.get("round", -1) + 1 if last.version > 0 else 0
        else:
            meta = restored["meta"]
            coordinator.restore(restored["state"], meta)
            first = meta["round"] + 1
            if self.store.latest() > coordinator.version:  # committed after the checkpoint
                params, rec, skipped = self.store.read_valid()
                if rec.version > coordinator.version:
                    coordinator.steps_since_full += spec.local_steps * (
                        rec.version - coordinator.version
                    )
                    coordinator.catch_up(params, rec.version)
                    first = rec.meta.get("round", first - 1) + 1
                if skipped:  # a corrupted newest version: never overwrite it, build past it
                    coordinator.start(
                        coordinator.published, coordinator.version, skip_to=max(skipped)
                    )
                    first = self.store.record(max(skipped)).meta.get("round", first - 1) + 1
            self.goodput.recovery += time.perf_counter() - t0 + meta.get("downtime", 0.0)
        return first

    def run(self) -> TrainResult:
        from cluster_app.recovery.checkpoint import Checkpointer
        from cluster_app.sync.coordinator import Coordinator  # optax: only when a run starts

        t_start = time.perf_counter()
        spec = self.spec
        self.state.create(spec_to_dict(spec))
        previous = self.state.status()
        self.train_offset, self._trained = previous.get("train_seconds", 0.0), 0.0
        if "goodput" in previous:  # a resumption: the accounting continues, with the downtime
            self.goodput = Goodput(
                **{
                    k: previous["goodput"][k]
                    for k in ("wall", "productive", "startup", "checkpoint", "recovery")
                }
            )
            if previous.get("phase") not in ("finished", "stopped"):
                down = max(0.0, time.time() - previous["updated"])
                self.goodput.recovery += down
                self.goodput.wall += down
        ckpt = Checkpointer(self._checkpoint_dir(), keep=spec.keep_checkpoints)
        coordinator = Coordinator(self.store, spec.sync)
        first = self._start(coordinator, ckpt)
        wall0 = self.goodput.wall
        eval_start = self._evaluate(coordinator.version)
        self.goodput.startup += time.perf_counter() - t_start
        records: list[RoundRecord] = []
        t_train = time.perf_counter()
        eval_seconds = 0.0
        phase = "finished"
        try:
            with _progress(self.progress) as bar:
                total = spec.rounds if spec.max_seconds is None else None
                task = bar.add_task(
                    "training", total=total, completed=first, loss=float("nan"), agents=0
                )
                r = first
                while r < spec.rounds:
                    control = self.state.control()
                    if control == "stopped":
                        phase = "stopped"
                        break
                    if control == "paused":
                        self._report("paused", r, coordinator, ckpt, wall0, t_start)
                        time.sleep(0.5)
                        continue
                    rec = self._round(r, coordinator)
                    rec.train_seconds = time.perf_counter() - t_train - eval_seconds
                    self._trained = rec.train_seconds
                    if spec.eval_every and (r + 1) % spec.eval_every == 0:
                        t0 = time.perf_counter()
                        ev = self._evaluate(rec.version)
                        rec.heldout_loss = ev["loss"]
                        # the evaluating agent skips this pull in its next round, so it is
                        # sync traffic; after the last round it is measurement only
                        if r + 1 < spec.rounds:
                            rec.pull_bytes += ev["pull_bytes"]
                        eval_seconds += time.perf_counter() - t0
                    if self.policy.should_save(r, time.monotonic()):
                        self._save(ckpt, coordinator, r, wall0, t_start)
                    records.append(rec)
                    self.state.record_round(
                        r,
                        {
                            "round": r,
                            "version": rec.version,
                            "ended": rec.ended,
                            "seconds": rec.seconds,
                            "launched": len(rec.workers) + len(rec.dropped),
                            "agents": len(rec.workers),
                            "dropped": rec.dropped,
                            "standby": len(rec.standby),
                            "loss": rec.loss,
                        },
                    )
                    self._report("running", r, coordinator, ckpt, wall0, t_start)
                    bar.update(task, advance=1, loss=rec.loss, agents=len(rec.workers))
                    if self.on_round is not None:
                        self.on_round(rec)
                    r += 1
                    # the budget spans every incarnation of this run's controller
                    trained = self.train_offset + rec.train_seconds
                    if spec.max_seconds is not None and trained > spec.max_seconds:
                        break
                    if (
                        spec.target_loss is not None
                        and rec.heldout_loss is not None
                        and rec.heldout_loss <= spec.target_loss
                    ):
                        break
            if records:
                # stopped early (target, budget, stop): commit the master's unsent residual too
                written = self.store.bytes_written
                coordinator.finish({"round": records[-1].round})
                records[-1].commit_bytes += self.store.bytes_written - written
                self._save(ckpt, coordinator, records[-1].round, wall0, t_start)
        except BaseException as e:
            self._report("failed", len(records), coordinator, ckpt, wall0, t_start, error=repr(e))
            raise
        finally:
            ckpt.close()  # let an in-flight asynchronous save finish (or record its failure)
        train_seconds = time.perf_counter() - t_train - eval_seconds
        eval_end = self._evaluate(coordinator.version)
        self._report(
            phase,
            records[-1].round if records else first - 1,
            coordinator,
            ckpt,
            wall0,
            t_start,
            eval_end=eval_end,
        )
        return TrainResult(
            run_id=spec.run_id,
            run_url=spec.run_url,
            version=coordinator.version,
            rounds=records,
            eval_start=eval_start,
            eval_end=eval_end,
            wall_seconds=time.perf_counter() - t_start,
            train_seconds=train_seconds,
            goodput=self.goodput.as_dict(),
            resumed_from=first,
        )

    def _save(self, ckpt, coordinator, r: int, wall0: float, t_start: float) -> None:
        state, meta = coordinator.checkpoint()
        self.goodput.wall = wall0 + time.perf_counter() - t_start
        meta.update(
            round=r,
            run_id=self.spec.run_id,
            goodput=asdict(self.goodput),
            data_cursor={"round": r + 1, "seed": self.spec.agent.seed},
        )
        self.goodput.checkpoint += ckpt.save(r, state, meta)
        self.policy.saved(r, time.monotonic())

    def _report(
        self, phase: str, r: int, coordinator, ckpt, wall0: float, t_start: float, **extra
    ) -> None:
        self.goodput.wall = wall0 + time.perf_counter() - t_start
        self.state.set_status(
            phase=phase,
            round=r,
            version=coordinator.version,
            active=self.active,
            standby=self.standby,
            lost_workers=self.lost_workers,
            goodput=self.goodput.as_dict(),
            train_seconds=self.train_offset + self._trained,
            checkpoint_errors=ckpt.errors,
            rejected=dict(coordinator.rejected),
            **extra,
        )


def controller_task(spec_dict: dict) -> dict:
    """Run (or resume) a run from inside the cluster; returns its summary.

    Submitted by ``AgentCluster.submit`` and released with ``fire_and_forget``: it secedes
    from the worker's thread pool while it waits, and when its worker dies Dask runs it
    again elsewhere, where it resumes from the store and the newest valid checkpoint.
    """
    from distributed import worker_client

    spec = spec_from_dict(spec_dict)
    with worker_client(separate_thread=True) as client:
        result = RunController(client, spec, progress=False).run()
    return result.summary()


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
