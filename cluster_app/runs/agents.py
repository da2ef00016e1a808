"""The agent tasks of one run, as the run loop submits and collects them (the Dask side).

:class:`RunAgents` knows the run's spec and a ``Client``; it submits ``agent_init``,
``agent_round``, ``agent_warm`` and ``agent_eval`` (:mod:`cluster_app.agent.worker`) with keys
that name the run, and it waits for a round while watching for lost workers. The shard of a
worker lost mid-round goes at once to one of the round's hot standbys, which holds the round's
base version already (its warm-up loaded it), so the round still completes at full strength;
with no standby left the shard is dropped (that round of its work is the only loss), so a lost
worker never stalls the fleet.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, cast

import fsspec
from distributed import Client, Future, wait

from cluster_app.agent.continual_tasks import agent_consolidate, agent_eval_tasks
from cluster_app.agent.messages import RoundResult
from cluster_app.agent.worker import agent_eval, agent_init, agent_round, agent_warm
from cluster_app.errors import RunError, SpecError
from cluster_app.runs.spec import RunSpec
from cluster_app.sync.store import ParamStore
from cluster_app.versions.registry import Registry

__all__ = ["Collected", "RoundTasks", "RunAgents", "Takeover", "live_workers", "workers_info"]


def workers_info(client: Client) -> dict[str, dict]:
    """The scheduler's per-worker information, fetched now (never the client's cache)."""
    scheduler = cast(Any, client.scheduler)  # an rpc whose handlers are attributes
    identity = cast(dict, client.sync(scheduler.identity, n_workers=-1))
    return identity["workers"]


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


@dataclass
class RoundTasks:
    """The tasks of one round in flight: a shard per active agent, a warm-up per standby."""

    round: int
    base: int
    shards: dict[str, Future]  # by worker address, in shard order
    standby: tuple[str, ...]
    warm: list[Future]


@dataclass(frozen=True)
class Takeover:
    """A hot standby ran the shard of an agent lost mid-round."""

    shard: int
    lost: str  # the worker the shard was assigned to
    by: str  # the standby that ran it
    detected: float  # wall-clock time the loss was seen


@dataclass(frozen=True)
class Collected:
    """A round's outcome: the shards' results, the takeovers, and the shards dropped."""

    results: list[RoundResult]
    takeovers: list[Takeover]
    dropped: list[str]  # workers whose shard no one ran (lost, with no standby to take it)

    @property
    def replaced(self) -> dict[str, str]:
        """Lost worker -> the standby that ran its shard in the end."""
        out: dict[str, str] = {}
        for t in self.takeovers:  # a standby lost in turn is replaced again: follow the chain
            origin = next((k for k, v in out.items() if v == t.lost), t.lost)
            out[origin] = t.by
        return out


class RunAgents:
    """Submits one run's agent tasks and collects them (see the module docstring)."""

    def __init__(self, client: Client, spec: RunSpec) -> None:
        self.client, self.spec = client, spec

    def _submit(self, fn, *args, workers: list[str] | None = None, key: str, **kwargs) -> Future:
        return self.client.submit(
            fn,
            *args,
            workers=workers,
            allow_other_workers=workers is not None,
            pure=False,
            retries=2,
            key=key,
            **kwargs,
        )

    def live(self, running_only: bool = True) -> list[str]:
        return live_workers(self.client, running_only)

    def init(self) -> None:
        """Commit the run's version 0 unless its store has versions already: from the
        registry revision ``spec.init_from`` names (resolved now, recorded in version 0's
        metadata), or fresh from the agent's seed."""
        spec = self.spec
        meta: dict[str, Any] = {"run_id": spec.run_id}
        init: tuple | None = None
        if spec.init_from is not None and ParamStore(spec.run_url).latest() is None:
            if spec.init_from.startswith("run:"):
                init = self._from_run(spec.init_from)
                meta.update(from_run=init[1], from_version=init[2])
            else:
                commit = Registry(spec.store_url).resolve(spec.init_from)
                meta.update(from_commit=commit, from_ref=spec.init_from)
                init = (spec.store_url, commit)
        self._submit(
            agent_init,
            spec.agent,
            spec.run_url,
            meta,
            init,
            key=f"agent-init-{spec.run_id}-{time.time_ns()}",
        ).result()

    def _from_run(self, ref: str) -> tuple[str, str, int]:
        """``run:<run-id>[@<version>]`` -> ("run", that run's store URL, version): any version
        of another run, or the latest of a running one."""
        run_id, _, at = ref.removeprefix("run:").partition("@")
        url = f"{self.spec.store_url.rstrip('/')}/{run_id}"
        fs, root = fsspec.core.url_to_fs(url)
        # looked up before ParamStore, which would create the directory of a run that is not
        latest = ParamStore(url).latest() if run_id and fs.exists(f"{root}/commits") else None
        if latest is None:
            raise SpecError(f"init_from={ref!r}: the store has no run {run_id!r} with versions")
        try:
            version = latest if not at else int(at)
        except ValueError:
            raise SpecError(f"init_from={ref!r}: the version after '@' must be a number") from None
        if not 0 <= version <= latest:
            raise SpecError(f"init_from={ref!r}: run {run_id} has versions 0..{latest}")
        return ("run", url, version)

    def consolidate(self, version: int, k: int) -> dict:
        """Consolidate a continual run's first ``k`` tasks at ``version`` (on a worker)."""
        spec = self.spec
        return self._submit(
            agent_consolidate,
            spec.agent,
            spec.run_url,
            version,
            spec.continual,
            k,
            key=f"agent-consolidate-{spec.run_id}-{k}-{time.time_ns()}",
        ).result()

    def evaluate_tasks(self, version: int, upto: int) -> dict:
        """A continual run's held-out metrics of ``version`` on its tasks ``0..upto``."""
        spec = self.spec
        return self._submit(
            agent_eval_tasks,
            spec.agent,
            spec.run_url,
            version,
            spec.continual,
            upto,
            spec.eval_batches,
            key=f"agent-eval-{spec.run_id}-tasks-{version}-{time.time_ns()}",
        ).result()

    def evaluate(self, version: int) -> dict:
        """Held-out metrics of ``version`` (and the bytes its evaluating agent pulled)."""
        spec = self.spec
        return self._submit(
            agent_eval,
            spec.agent,
            spec.run_url,
            version,
            spec.eval_batches,
            key=f"agent-eval-{spec.run_id}-{version}-{time.time_ns()}",
        ).result()

    def _shard(self, r: int, base: int, shard: int, n: int, addr: str, key: str) -> Future:
        spec = self.spec
        return self._submit(
            agent_round,
            spec=spec.agent,
            sync=spec.sync,
            store_url=spec.run_url,
            base_version=base,
            round=r,
            shard=shard,
            num_shards=n,
            steps=spec.local_steps,
            worker=addr,
            plan=None if spec.continual is None else spec.continual.plan(r),
            workers=[addr],
            key=key,
        )

    def round(
        self, r: int, base: int, active: tuple[str, ...], standby: tuple[str, ...]
    ) -> RoundTasks:
        """Start round ``r`` from version ``base``: a shard per active agent, a warm-up (load
        ``base``, no training) per standby."""
        spec = self.spec
        key = f"agent-round-{spec.run_id}-{r}"
        futs = {
            addr: self._shard(r, base, shard, len(active), addr, f"{key}-{shard}-{base}")
            for shard, addr in enumerate(active)
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
            for i, w in enumerate(standby)
        ]
        return RoundTasks(r, base, futs, tuple(standby), warm)

    def collect(self, tasks: RoundTasks) -> Collected:
        """Wait for a round's shards. The shard of a worker lost mid-round goes at once to a
        hot standby of the round (from the round's base version); with none left, or if the
        standby does not finish within ``spec.takeover_timeout``, it is dropped."""
        n = len(tasks.shards)
        pending = dict(tasks.shards)
        shard_of = {addr: i for i, addr in enumerate(tasks.shards)}
        spare = list(tasks.standby)
        deadline: dict[str, float] = {}  # a standby's shard: when it is given up
        results: list[RoundResult] = []
        takeovers: list[Takeover] = []
        dropped: list[str] = []
        origin = {addr: addr for addr in tasks.shards}  # holder -> the worker first assigned
        missing: set[str] = set()
        while pending:
            live = set(self.live(running_only=False))
            lost = []
            for addr, f in list(pending.items()):
                if not f.done():
                    continue
                if f.status == "finished" and (res := f.result()).worker == addr:
                    results.append(res)
                    del pending[addr]
                elif f.status == "error" and addr in live:
                    raise RunError(f"agent on {addr} failed") from cast(
                        BaseException, f.exception()
                    )
                else:  # cancelled, erred with its worker, or moved elsewhere (misplaced)
                    lost.append(addr)
            # a paused (memory-pressured) worker is slow, not lost: only absence counts, and
            # only when two looks a quarter second apart agree
            absent = {a for a in pending if a not in live and a not in lost}
            lost += sorted(absent & missing)
            missing = absent - set(lost)
            now = time.monotonic()
            for addr in [a for a, t in deadline.items() if now > t and a in pending]:
                self.client.cancel([pending.pop(addr)])  # took too long: give the shard up
                del deadline[addr]
                dropped.append(origin[addr])
            for addr in lost:
                self.client.cancel([pending.pop(addr)])
                deadline.pop(addr, None)
                spare = [w for w in spare if w in live]
                if not spare:
                    dropped.append(origin[addr])
                    continue
                by = spare.pop(0)
                shard = shard_of[addr]
                key = f"agent-round-{self.spec.run_id}-{tasks.round}-{shard}-{tasks.base}"
                pending[by] = self._shard(
                    tasks.round, tasks.base, shard, n, by, f"{key}-takeover-{len(takeovers)}"
                )
                shard_of[by], origin[by] = shard, origin[addr]
                if self.spec.takeover_timeout is not None:
                    deadline[by] = time.monotonic() + self.spec.takeover_timeout
                takeovers.append(Takeover(shard, addr, by, time.time()))
            if pending:
                with contextlib.suppress(TimeoutError):  # wake up to look for lost workers
                    wait(list(pending.values()), timeout=0.25, return_when="FIRST_COMPLETED")
        results.sort(key=lambda res: res.push.shard)
        return Collected(results, takeovers, dropped)

    def settle_warm(self, tasks: RoundTasks) -> int:
        """End a round's warm-ups; returns the bytes the finished ones pulled (standbys' pulls
        are real sync traffic)."""
        pulled = sum(f.result()["pull_bytes"] for f in tasks.warm if f.status == "finished")
        self.client.cancel([f for f in tasks.warm if not f.done()])
        return pulled
