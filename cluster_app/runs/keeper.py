"""``RunKeeper``: a scheduler plugin that (re)starts the loops of durable runs.

A scheduler restart forgets every task, including the tasks running the loops of durable runs
(:mod:`cluster_app.runs.durable`), and every plugin. Run the scheduler with this module
preloaded and it brings them back on its own::

    dask scheduler --preload cluster_app.runs.keeper --keeper-store-url /data/cluster-app-store

Every ``interval`` seconds (once workers are connected) it lists the runs in the store whose
requested state is ``running`` and whose phase is not finished or stopped
(:func:`runs_to_resume`), installs our plugins for each run's agent
(:func:`~cluster_app.runs.install.install_async`: the agents, and placement unless it is disabled),
and submits the loop of any run that the scheduler does not know; the loop resumes from the
store and its newest valid checkpoint. Listing the store is I/O, so it runs in a thread, never
on the scheduler's event loop; this module imports no JAX.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

import click
import fsspec
from distributed import Client, SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from cluster_app import config
from cluster_app.agent.spec import AgentSpec
from cluster_app.errors import RunError
from cluster_app.runs.durable import controller_key, launch
from cluster_app.runs.install import install_async
from cluster_app.runs.record import RunRecord

__all__ = ["RunKeeper", "dask_setup", "runs_to_resume"]

logger = logging.getLogger(__name__)


def runs_to_resume(store_url: str) -> list[dict]:
    """Specs of the runs under ``store_url`` that should be running (blocking I/O): a run
    record whose requested state is ``running`` and whose phase is neither finished nor
    stopped. Entries that are not runs, or whose spec cannot be read, are skipped."""
    fs, root = fsspec.core.url_to_fs(store_url)
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    out = []
    for run_dir in entries:
        record = RunRecord.reader(fs, run_dir)
        try:
            spec = record.spec()
        except (RunError, json.JSONDecodeError):
            continue  # not a run, or one whose spec is damaged
        if record.should_run():
            out.append(spec)
    return out


class RunKeeper(SchedulerPlugin):
    """Keeps the loops of running runs alive across scheduler restarts.

    Its hooks run on the scheduler's event loop; the store listing runs in a thread.
    """

    name = "cluster-app-keeper"

    def __init__(self, store_url: str, interval: float = 5.0, max_launches: int = 5) -> None:
        self.store_url = store_url
        self.interval = interval
        self.max_launches = max_launches
        self.launches: Counter = Counter()
        self._pc: PeriodicCallback | None = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        self._pc = PeriodicCallback(self.check, self.interval * 1000)
        self._pc.start()

    async def close(self) -> None:
        if self._pc is not None:
            self._pc.stop()

    async def check(self) -> list[str]:
        """Launch the loops that are missing; returns the run ids launched."""
        if not self.scheduler.workers:
            return []
        specs = await asyncio.to_thread(runs_to_resume, self.store_url)
        launched = []
        for spec in specs:
            run_id = spec["run_id"]
            if controller_key(run_id) in self.scheduler.tasks:
                continue
            if self.launches[run_id] >= self.max_launches:
                continue
            self.launches[run_id] += 1
            async with Client(self.scheduler.address, asynchronous=True) as client:
                # a new scheduler has no plugins: agents for (re)joining workers, and placement
                await install_async(client, AgentSpec(**spec["agent"]))
                launch(client, spec)
            logger.info("keeper: started the loop of run %s", run_id)
            launched.append(run_id)
        return launched


@click.command()
@click.option(
    "--keeper-store-url",
    default=None,
    help="Parameter store to watch (default: cluster-app.store.url).",
)
@click.option("--keeper-interval", type=float, default=5.0, show_default=True)
def dask_setup(scheduler, keeper_store_url: str | None, keeper_interval: float) -> None:
    """Preload entry point: ``dask scheduler --preload cluster_app.runs.keeper``."""
    scheduler.add_plugin(
        RunKeeper(keeper_store_url or config.get("store.url"), interval=keeper_interval)
    )
