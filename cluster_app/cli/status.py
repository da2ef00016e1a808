"""``cluster-app status``: the fleet's agents as a live terminal table.

Rows come from :func:`agent_rows`, the one place that fetches them: the fleet monitor's
snapshot (``cluster_app.observe.monitor.monitor_snapshot``) where that module is installed and
the scheduler runs the monitor, else :func:`placement_rows` (the placement plugin's per-worker
signals, the agents' own metrics and the run records' active and standby lists).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from cluster_app.cli._common import (
    as_json_option,
    connect,
    echo_json,
    errors,
    list_runs,
    store_option,
    store_url,
)

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["COLUMNS", "agent_rows", "placement_rows", "status"]

# (row key, column title, format)
COLUMNS = (
    ("worker", "worker", "{}"),
    ("role", "role", "{}"),
    ("run", "run", "{}"),
    ("version", "version", "{}"),
    ("step", "step", "{}"),
    ("loss", "loss", "{:.4f}"),
    ("load", "load", "{:.2f}"),
    ("latency_ms", "latency ms", "{:.1f}"),
    ("score", "score", "{:.3f}"),
)
LIVE_PHASES = ("pending", "running", "paused")


def agent_rows(client: Client, store: str) -> list[dict[str, Any]]:
    """The status table's rows, one per agent: ``worker, role, run, version, step, loss, load,
    latency_ms, score`` (None where unknown). From the fleet monitor when there is one, else
    :func:`placement_rows`."""
    try:
        found = importlib.util.find_spec("cluster_app.observe.monitor") is not None
    except ModuleNotFoundError:
        found = False
    if found:
        monitor = importlib.import_module("cluster_app.observe.monitor")
        snap = monitor.monitor_snapshot(client)
        if isinstance(snap, dict) and "agents" in snap:  # None: the scheduler has no monitor
            return list(snap["agents"])
    return placement_rows(client, store)


def placement_rows(client: Client, store: str) -> list[dict[str, Any]]:
    """Rows without the monitor: load, round trip and score from the placement plugin's
    snapshot, version and steps from each agent's metrics, role, run and loss (and the version,
    where the agent reports none) from the records of the store's live runs (a worker in no
    live run's lists is idle)."""
    from cluster_app.cli._runs import history, run_id_of
    from cluster_app.placement.plugin import placement_snapshot
    from cluster_app.runs.agents import workers_info

    info = workers_info(client)
    snap = placement_snapshot(client)
    signals = (snap or {}).get("workers") or {}
    roles: dict[str, tuple[str, str, int | None, float | None]] = {}
    for record in list_runs(store):  # oldest first: a newer run's roles win
        status = record.status()
        if status.get("phase") not in LIVE_PHASES:
            continue
        run = run_id_of(record)
        last = history(record, last=1)
        loss = last[0].get("loss") if last else None
        version = status.get("version")
        for w in status.get("standby") or []:
            roles[w] = ("standby", run, version, None)
        for w in status.get("active") or []:
            roles[w] = ("active", run, version, loss)
    rows = []
    for addr in sorted(info):
        metrics = info[addr].get("metrics") or {}
        sig = signals.get(addr) or {}
        role, run, run_version, loss = roles.get(addr, ("idle", None, None, None))
        version = _count(metrics.get("cluster_app_version"))  # -1: the agent holds none yet
        rtt = sig.get("rtt")
        rows.append(
            {
                "worker": addr,
                "role": role,
                "run": run,
                "version": version if version is not None else run_version,
                "step": _count(metrics.get("cluster_app_steps")),
                "loss": loss,
                "load": sig.get("load"),
                "latency_ms": rtt * 1e3 if isinstance(rtt, (int, float)) else None,
                "score": sig.get("score"),
            }
        )
    return rows


def _count(x: Any) -> int | None:
    """An agent metric as a count (None where it is missing, negative or not finite)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0:
        return int(x)
    return None


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def render(rows: list[dict[str, Any]], address: str):
    """The rows as a rich ``Table``."""
    from rich.table import Table

    counts = {r: sum(row.get("role") == r for row in rows) for r in ("active", "standby", "idle")}
    table = Table(
        title=f"cluster-app agents on {address}: {counts['active']} active, "
        f"{counts['standby']} standby, {counts['idle']} idle ({time.strftime('%H:%M:%S')})",
        title_justify="left",
    )
    for key, title, _ in COLUMNS:
        table.add_column(title, justify="left" if key in ("worker", "role", "run") else "right")
    styles = {"active": "green", "standby": "yellow", "idle": "dim"}
    for row in rows:
        table.add_row(
            *[_cell(row.get(key), fmt) for key, _, fmt in COLUMNS],
            style=styles.get(row.get("role") or "", ""),
        )
    return table


@click.command()
@click.option(
    "--scheduler",
    required=True,
    metavar="ADDRESS",
    help="Scheduler address, e.g. tcp://host:8786 (`cluster-app up` prints it).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print the table once and exit (for scripts).")
@as_json_option
@store_option
@errors
def status(scheduler, interval, once, as_json, store) -> None:
    """A live table of the agents: worker, role (active/standby/idle), run, version, step,
    loss, load, latency and placement score. Ctrl-C ends it (exit 0); --once prints one
    table, --json the rows once as JSON. Exit 1 if the scheduler cannot be reached."""
    from rich.console import Console

    url = store_url(store)
    try:
        client = connect(scheduler)
    except KeyboardInterrupt:  # Ctrl-C before the first table: it still just ends
        if once or as_json:
            raise
        return
    try:
        if as_json:
            echo_json(agent_rows(client, url))
            return
        console = Console(width=None if sys.stdout.isatty() else 160)
        if once:
            console.print(render(agent_rows(client, url), scheduler))
            return
        from rich.live import Live

        try:
            with Live(render(agent_rows(client, url), scheduler), console=console) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(agent_rows(client, url), scheduler))
        except KeyboardInterrupt:
            pass
    finally:
        client.close()
