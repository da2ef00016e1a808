"""``RunLoop``: drives one run through a ``Client``, round after round.

It runs in the user's process (``AgentCluster.train``) or as a long-running task on the
cluster (:mod:`cluster_app.runs.durable`, ``AgentCluster.submit``). Either way it owns the
run's coordinator, checkpointer, clocks and goodput, and per round it:

1. reads the control state (pause / stop) from the run record;
2. assigns roles (:func:`~cluster_app.runs.roles.assign_roles`): active agents and hot
   standbys;
3. runs the round (:class:`~cluster_app.runs.agents.RunAgents`): one shard per active agent, a
   warm-up per standby; the shard of an agent whose worker is lost mid-round goes at once to a
   hot standby, which is active from then on (:func:`~cluster_app.runs.roles.after_takeover`);
   with no standby it is dropped (at most one round of that agent's work is lost);
4. folds the pushes into the next version through the coordinator;
5. in a continual run (:mod:`cluster_app.learning`), consolidates the finished tasks at each
   task switch (replay buffer, Fisher and anchor, into the run's store, before the new task's
   first round) and evaluates every task seen so far on its cadence;
6. evaluates on the cadence, checkpoints on the policy, records the round and its status,
   and reports all of it to the scheduler as structured events (:mod:`cluster_app.observe`:
   the dashboard page, the JSON routes and Prometheus read them there).

Where it starts, a fresh run included, is :func:`~cluster_app.runs.resume.resume`'s business.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
from distributed import Client

from cluster_app.agent.messages import RoundResult
from cluster_app.agent.worker import CURRENT
from cluster_app.errors import RunError
from cluster_app.observe import events
from cluster_app.recovery.policy import CheckpointPolicy
from cluster_app.runs.agents import Collected, RunAgents
from cluster_app.runs.continual import ContinualRun
from cluster_app.runs.goodput import Clock, Goodput
from cluster_app.runs.progress import progress_bar
from cluster_app.runs.record import RunRecord
from cluster_app.runs.resume import resume
from cluster_app.runs.roles import Roles, after_takeover, assign_roles, standby_pool
from cluster_app.runs.spec import RoundRecord, RunSpec, TrainResult, spec_to_dict
from cluster_app.sync.store import ParamStore

__all__ = ["RunLoop"]

logger = logging.getLogger(__name__)


class RunLoop:
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
        When to checkpoint (default: the spec's cadence).
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
        self.agents = RunAgents(client, spec)
        self.record = RunRecord(spec.run_url)
        self.continual = ContinualRun(spec, self.agents, self.record)
        self.store = ParamStore(spec.run_url)
        self.roles = Roles()
        self.lost_workers = 0
        self.goodput = Goodput()
        self.clock = Clock()
        self.trained = 0.0  # this incarnation's training seconds at its last round
        self.records: list[RoundRecord] = []
        self._last_results: tuple[list[RoundResult], int] = ([], 0)
        self.live = 0  # running workers at the last role assignment
        self.eval_start: dict = {}
        from cluster_app.recovery.checkpoint import Checkpointer
        from cluster_app.sync.coordinator import Coordinator  # optax: only when a run starts

        self.coordinator = Coordinator(self.store, spec.sync)
        self.ckpt = Checkpointer(spec.checkpoint_dir, keep=spec.keep_checkpoints)

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        """Run (or resume) the run to its end: its rounds, a budget, a target or a stop."""
        self._open(time.perf_counter())
        try:
            first = self._start()
            phase = "finished"
            with progress_bar(self.progress, self.spec, first) as bar:
                r = first
                while r < self.spec.rounds:
                    control = self.record.control()
                    if control == "stopped":
                        phase = "stopped"
                        break
                    if control == "paused":
                        self._report("paused", r)
                        time.sleep(0.5)
                        continue
                    rec = self._round(r)
                    bar.advance(rec)
                    r += 1
                    if self._done(rec):
                        break
            self._finish()
        except BaseException as e:
            self._report("failed", len(self.records), error=repr(e))
            raise
        finally:
            self.ckpt.close()  # let an in-flight asynchronous save finish (or record its failure)
        return self._result(first, phase)

    def _open(self, started: float) -> None:
        self.record.create(spec_to_dict(self.spec))
        previous = self.record.status()
        self.goodput = Goodput.resumed(previous)  # a resumption continues the accounting
        self.clock = Clock(self.goodput.wall, previous.get("train_seconds", 0.0), started)

    def _start(self) -> int:
        """Initialise or resume, evaluate the starting version; returns the first round."""
        self.agents.init()
        resumed = resume(self.store, self.coordinator, self.ckpt, self.spec.local_steps)
        self.goodput.recovery += resumed.restore_seconds + resumed.downtime
        self.eval_start = self.agents.evaluate(self.coordinator.version)
        self.continual.start(self.coordinator.version)
        self.goodput.startup += self.clock.elapsed()
        self.clock.train_started = time.perf_counter()
        return resumed.first_round

    def _done(self, rec: RoundRecord) -> bool:
        """Whether the run ends early after ``rec``: its time budget (which spans every
        incarnation of the run) or its target loss."""
        spec = self.spec
        if spec.max_seconds is not None and self.clock.trained0 + rec.train_seconds > (
            spec.max_seconds
        ):
            return True
        return spec.target_loss is not None and (
            rec.heldout_loss is not None and rec.heldout_loss <= spec.target_loss
        )

    # ------------------------------------------------------------------ a round
    def _round(self, r: int) -> RoundRecord:
        self.continual.consolidate(r, self.coordinator.version)
        rec = self._train(r)
        rec.train_seconds = self.clock.trained()
        self.trained = rec.train_seconds
        if self.spec.eval_every and (r + 1) % self.spec.eval_every == 0:
            self._evaluate(rec)
        self.clock.eval_seconds += self.continual.evaluate(rec)
        if self.policy.should_save(r, time.monotonic()):
            self._save(r)
        self.records.append(rec)
        self.record.record_round(r, rec.history())
        self._emit(events.ROUND, events.round_event(self.spec.run_id, rec, *self._last_results))
        self._report("running", r)
        if self.on_round is not None:
            self.on_round(rec)
        return rec

    def _train(self, r: int) -> RoundRecord:
        """Roles, the agents' shards, the fold: one committed version."""
        spec, coordinator = self.spec, self.coordinator
        live = self.agents.live()
        self.live = len(live)
        self.roles = assign_roles(self.roles, live, spec.standby, spec.agents)
        if self.roles.lost:
            present = set(self.agents.live(running_only=False))
            self.lost_workers += sum(w not in present for w in self.roles.lost)
        t0 = time.perf_counter()
        tasks = self.agents.round(r, coordinator.version, self.roles.active, self.roles.standby)
        got = self.agents.collect(tasks)
        results = got.results
        if not results:
            raise RunError(f"round {r}: every agent was lost")
        if got.takeovers:  # the standbys that ran lost agents' shards are active from now on
            self.roles = after_takeover(self.roles, got.replaced)
            present = set(self.agents.live(running_only=False))
            self.lost_workers += sum(t.lost not in present for t in got.takeovers)
        loss = float(np.mean([x.loss_last for x in results]))
        stats = coordinator.fold(
            [x.push for x in results],
            spec.local_steps,
            meta={"round": r, "workers": sorted({x.worker for x in results}), "loss": loss},
            final=r + 1 == spec.rounds,  # the run's last version is the exact master
        )
        seconds = time.perf_counter() - t0
        pushed = sum(x.push.delta is not None for x in results)
        n_params = sum(v.size for v in coordinator.master.values())
        self._last_results = (results, pushed * 4 * n_params)
        self.goodput.round(seconds, len(results) / len(tasks.shards))
        warm_bytes = self.agents.settle_warm(tasks)
        return RoundRecord(
            round=r,
            version=stats.version,
            kind=stats.kind,
            workers=[x.worker for x in results],
            loss=loss,
            loss_first=float(np.mean([x.loss_first for x in results])),
            steps=sum(x.steps for x in results),
            seconds=seconds,
            push_bytes=stats.push_bytes,
            fold_bytes=stats.fold_bytes,
            pull_bytes=sum(x.pull_bytes for x in results) + warm_bytes,
            commit_bytes=stats.commit_bytes,
            accepted=stats.accepted,
            rejected=sum(stats.rejected.values()),
            deferred=stats.deferred,
            standby=list(tasks.standby),
            dropped=got.dropped,
            takeovers=_takeovers(got, results),
            ended=time.time(),
            learning_rate=float(np.mean([x.learning_rate for x in results])),
        )

    def _evaluate(self, rec: RoundRecord) -> None:
        t0 = time.perf_counter()
        ev = self.agents.evaluate(rec.version)
        rec.heldout_loss = ev["loss"]
        # the evaluating agent skips this pull in its next round, so it is sync traffic;
        # after the last round it is measurement only
        if rec.round + 1 < self.spec.rounds:
            rec.pull_bytes += ev["pull_bytes"]
        self.clock.eval_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ the end
    def _finish(self) -> None:
        """Stopped early (target, budget, stop): commit the master's unsent residual too."""
        if not self.records:
            return
        last = self.records[-1]
        written = self.store.bytes_written
        self.coordinator.finish({"round": last.round})
        last.commit_bytes += self.store.bytes_written - written
        self._save(last.round)

    def _result(self, first: int, phase: str) -> TrainResult:
        train_seconds = self.clock.trained()
        eval_end = self.agents.evaluate(self.coordinator.version)
        last = self.records[-1].round if self.records else first - 1
        self._report(phase, last, eval_end=eval_end)
        return TrainResult(
            run_id=self.spec.run_id,
            run_url=self.spec.run_url,
            version=self.coordinator.version,
            rounds=self.records,
            eval_start=self.eval_start,
            eval_end=eval_end,
            wall_seconds=self.clock.elapsed(),
            train_seconds=train_seconds,
            goodput=self.goodput.as_dict(),
            resumed_from=first,
            continual=self.continual.summary(),
        )

    # ------------------------------------------------------------------ durability
    def _save(self, r: int) -> None:
        state, meta = self.coordinator.checkpoint()
        self.goodput.wall = self.clock.wall()
        meta.update(
            round=r,
            run_id=self.spec.run_id,
            goodput=asdict(self.goodput),
            data_cursor={"round": r + 1, "seed": self.spec.agent.seed},
        )
        self.goodput.checkpoint += self.ckpt.save(r, state, meta)
        self.policy.saved(r, time.monotonic())
        self._emit(events.CHECKPOINT, {"run": self.spec.run_id, "round": r, "time": time.time()})

    def _report(self, phase: str, r: int, **extra) -> None:
        self.goodput.wall = self.clock.wall()
        self.record.set_status(
            phase=phase,
            round=r,
            version=getattr(self.coordinator, "version", None),  # None until it has started
            active=list(self.roles.active),
            standby=list(self.roles.standby),
            lost_workers=self.lost_workers,
            goodput=self.goodput.as_dict(),
            train_seconds=self.clock.trained0 + self.trained,
            checkpoint_errors=self.ckpt.errors,
            rejected=dict(self.coordinator.rejected),
            **extra,
        )
        self._publish(phase)
        self._emit(
            events.RUN,
            {
                "run": self.spec.run_id,
                "phase": phase,
                "round": r,
                "goodput": events.finite(self.goodput.as_dict().get("goodput")),
                "standby_target": self.spec.standby,
                # what the fleet can hold now (active agents must outnumber standbys)
                "standby_possible": standby_pool(self.spec.standby, self.live),
                "agents": self.spec.agents,
                "checkpoint_interval": self._checkpoint_interval(),
                "checkpoint_errors": len(self.ckpt.errors),
            },
        )

    def _publish(self, phase: str) -> None:
        """The run's newest version on the scheduler: a worker that joins loads it before it
        reports ready (``AgentPlugin.setup``)."""
        version = getattr(self.coordinator, "version", None)
        if version is None:
            return
        entry = {
            "url": self.spec.run_url,
            "version": version,
            "phase": phase,
            "agent": asdict(self.spec.agent),
            "time": time.time(),
        }
        try:
            self.client.set_metadata([*CURRENT, self.spec.run_id], entry)
        except Exception:
            logger.debug("could not publish the current version", exc_info=True)

    def _checkpoint_interval(self) -> float | None:
        """Seconds the policy lets pass between saves (its round trigger at the rounds' mean
        pace, or its time trigger, whichever is sooner): what the stale-checkpoint alert uses."""
        spec, recs = self.spec, self.records[-20:]
        by_rounds = None
        if spec.checkpoint_every_rounds and recs:
            by_rounds = spec.checkpoint_every_rounds * float(np.mean([x.seconds for x in recs]))
        known = [x for x in (by_rounds, spec.checkpoint_every_seconds) if x is not None]
        return min(known) if known else None

    def _emit(self, topic: str, msg: dict) -> None:
        """A structured event to the scheduler; observability never stops a run."""
        try:
            self.client.log_event(topic, msg)
        except Exception:
            logger.debug("could not send %s", topic, exc_info=True)


def _takeovers(got: Collected, results: list[RoundResult]) -> list[dict]:
    """The round's takeovers as its record keeps them, with when each standby began training."""
    started = {res.worker: res.started for res in results}
    return [
        {
            "shard": t.shard,
            "lost": t.lost,
            "by": t.by,
            "detected": t.detected,
            "started": started.get(t.by),
        }
        for t in got.takeovers
    ]
