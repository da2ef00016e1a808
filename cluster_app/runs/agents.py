"""The agent tasks of one run, as the run loop submits and collects them (the Dask side).

:class:`RunAgents` knows the run's spec and a ``Client``; it submits ``agent_init``,
``agent_round``, ``agent_warm`` and ``agent_eval`` (:mod:`cluster_app.agent.worker`) with keys
that name the run, and it waits for a round while watching for lost workers: a shard whose
worker is gone is dropped, not re-run (its round of work is the only loss), so a lost worker
never stalls the fleet.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, cast

from distributed import Client, Future, wait

from cluster_app.agent.messages import RoundResult
from cluster_app.agent.worker import agent_eval, agent_init, agent_round, agent_warm
from cluster_app.errors import RunError
from cluster_app.runs.spec import RunSpec

__all__ = ["RoundTasks", "RunAgents", "live_workers", "workers_info"]


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


@dataclass(frozen=True)
class RoundTasks:
    """The tasks of one round in flight: a shard per active agent, a warm-up per standby."""

    shards: dict[str, Future]  # by worker address, in shard order
    warm: list[Future]


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
        """Commit the run's version 0 unless its store has versions already."""
        spec = self.spec
        self._submit(
            agent_init,
            spec.agent,
            spec.run_url,
            {"run_id": spec.run_id},
            key=f"agent-init-{spec.run_id}-{time.time_ns()}",
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

    def round(
        self, r: int, base: int, active: tuple[str, ...], standby: tuple[str, ...]
    ) -> RoundTasks:
        """Start round ``r`` from version ``base``: a shard per active agent, a warm-up (load
        ``base``, no training) per standby."""
        spec = self.spec
        futs = {
            addr: self._submit(
                agent_round,
                spec=spec.agent,
                sync=spec.sync,
                store_url=spec.run_url,
                base_version=base,
                round=r,
                shard=shard,
                num_shards=len(active),
                steps=spec.local_steps,
                workers=[addr],
                key=f"agent-round-{spec.run_id}-{r}-{shard}-{base}",
            )
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
        return RoundTasks(futs, warm)

    def collect(self, tasks: RoundTasks) -> tuple[list[RoundResult], list[str]]:
        """Wait for a round's shards; returns their results and the workers whose shards
        were dropped (lost mid-round)."""
        pending, dropped, missing = dict(tasks.shards), [], set()
        while True:
            done = {a: f for a, f in pending.items() if f.done()}
            if len(done) == len(pending):
                break
            # a paused (memory-pressured) worker is slow, not lost: only absence counts, and
            # only when two looks a quarter second apart agree
            live = set(self.live(running_only=False))
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
            elif f.status == "error" and addr in set(self.live(running_only=False)):
                raise RunError(f"agent on {addr} failed") from cast(BaseException, f.exception())
            else:
                dropped.append(addr)
        return results, dropped

    def settle_warm(self, tasks: RoundTasks) -> int:
        """End a round's warm-ups; returns the bytes the finished ones pulled (standbys' pulls
        are real sync traffic)."""
        pulled = sum(f.result()["pull_bytes"] for f in tasks.warm if f.status == "finished")
        self.client.cancel([f for f in tasks.warm if not f.done()])
        return pulled
