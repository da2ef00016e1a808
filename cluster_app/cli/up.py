"""``cluster-app up``: a scheduler and workers with our plugins, in the foreground.

It is the cluster :class:`~cluster_app.cluster.AgentCluster` starts (worker environment, the
agent, placement, everything :func:`~cluster_app.runs.install.install` registers), with its
scheduler listening on a known port, so that other commands and processes connect to it
(``cluster-app train --scheduler``, ``cluster-app status``, ``AgentCluster(address)``). The
scheduler also runs the ``cluster_app.observe.preload`` preload where that module is installed
(the dashboard page) and, with ``--keeper``, the :class:`~cluster_app.runs.keeper.RunKeeper`,
which brings back the store's unfinished runs (a run left running when this command last
stopped goes on when it starts again).

It serves until SIGINT (Ctrl-C) or SIGTERM, then closes the cluster and exits 0 (a second
signal gives up on a clean close: exit 130); 1 if the cluster cannot start (a port in use);
2 a bad argument.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading

import click

from cluster_app import config
from cluster_app.cli._common import ERROR, errors, store_option, store_url

__all__ = ["OBSERVE_PRELOAD", "scheduler_preloads", "up"]

OBSERVE_PRELOAD = "cluster_app.observe.preload"
WORKER_PRELOAD = "cluster_app.cli._worker_signals"
INTERRUPTED = 130


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _causes(e: BaseException) -> str:
    """``e`` and what caused it (distributed wraps a port in use twice)."""
    parts, seen = [], set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur) or type(cur).__name__
        if not parts or text not in parts[-1]:
            parts.append(text)
        cur = cur.__cause__ or cur.__context__
    return ": ".join(parts)


def scheduler_preloads() -> list[str]:
    """The preloads the scheduler runs: the observability one where it is installed."""
    return [OBSERVE_PRELOAD] if _installed(OBSERVE_PRELOAD) else []


@click.command()
@click.option(
    "--workers",
    "n_workers",
    type=click.IntRange(min=1, max=1024),
    default=None,
    help="Worker processes, one agent each (default: cluster-app.cluster.n-workers, or one "
    "per core, 2 to 8).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1, max=64),
    default=None,
    help="Threads per worker (default: cluster-app.cluster.threads-per-worker).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the scheduler and workers listen on (0.0.0.0: every interface).",
)
@click.option(
    "--scheduler-port",
    type=click.IntRange(min=0, max=65535),
    default=8786,
    show_default=True,
    help="Scheduler port (0: any free one).",
)
@click.option(
    "--dashboard-address",
    default=None,
    help="Dashboard address, e.g. :8787 (default: cluster-app.cluster.dashboard-address; "
    ":0 any free port).",
)
@store_option
@click.option(
    "--model",
    type=click.Choice(config.MODELS),
    default=None,
    help="The agent the workers build and warm up (default: cluster-app.agent.model); a run "
    "of another model rebuilds them.",
)
@click.option(
    "--keeper/--no-keeper",
    default=False,
    show_default=True,
    help="Also run the RunKeeper scheduler plugin: it (re)starts the loop of every run in the "
    "store that should be running (one left running when this cluster last stopped, or an "
    "interrupted `train`).",
)
@errors
def up(n_workers, threads, host, scheduler_port, dashboard_address, store, model, keeper) -> None:
    """Start a scheduler and workers with the fleet's plugins and serve until Ctrl-C/SIGTERM.

    Prints the scheduler address (for --scheduler, or AgentCluster(address)) and the
    dashboard link, then keeps serving; exits 0 once stopped by SIGINT or SIGTERM.
    """
    from cluster_app.agent.spec import AgentSpec
    from cluster_app.cluster import AgentCluster

    url = store_url(store)
    agent = AgentSpec.from_config(**({"model": model} if model else {}))
    # workers ignore the terminal's Ctrl-C: this process closes them (cli/_worker_signals.py)
    kwargs: dict = {"host": host, "scheduler_port": scheduler_port, "preload": [WORKER_PRELOAD]}
    if threads is not None:
        kwargs["threads_per_worker"] = threads
    if dashboard_address is not None:
        kwargs["dashboard_address"] = dashboard_address
    preloads = scheduler_preloads()
    if preloads:
        kwargs["scheduler_kwargs"] = {"preload": preloads}

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        # the first signal asks for a clean close (once the cluster is up, if it is starting);
        # a second one stops waiting for it
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            ac = AgentCluster(n_workers=n_workers, agent=agent, store_url=url, quiet=True, **kwargs)
        except (OSError, RuntimeError) as e:
            click.echo(f"error: the cluster did not start: {_causes(e)}", err=True)
            sys.exit(ERROR)
        with ac:
            if keeper:
                from cluster_app.runs.keeper import RunKeeper

                ac.client.register_plugin(RunKeeper(url))
            link, n = ac.dashboard_link, len(ac.workers)
            click.echo(f"scheduler: {ac.scheduler_address}")
            click.echo(f"dashboard: {link or '(none)'}")
            if link and _installed("cluster_app.observe.dashboard"):
                click.echo(f"fleet:     {link.rsplit('/status', 1)[0]}/cluster-app")
            click.echo(
                f"{n} worker{'s' if n != 1 else ''} ({agent.model} agents), store {url}"
                f"{', keeper on' if keeper else ''}; Ctrl-C or SIGTERM stops"
            )
            sys.stdout.flush()
            while not stop.wait(0.5):
                pass
            click.echo("stopping")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(INTERRUPTED)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
