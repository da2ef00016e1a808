"""``cluster-app runs ...``: durable runs in the store, watched and steered from the shell.

Everything reads and writes the runs' records in the store (``--store``), so ``list``,
``show``, ``pause`` and ``stop`` need no cluster: the run's loop reads its requested state
before every round. ``resume`` of a run whose loop has ended (stopped, failed, or its cluster
gone) and the liveness check of ``attach`` need the cluster (``--scheduler``).

Exit codes: 0 done; 1 an error (an unknown run, a failed run, a timeout, a scheduler that
cannot be reached); 2 a bad argument (a malformed run id, ``resume`` of an ended run without
``--scheduler``); 3 refused (pausing, stopping or resuming a run that has finished).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

import click

from cluster_app.cli._common import (
    Refused,
    as_json_option,
    connect,
    echo_json,
    errors,
    find_run,
    list_runs,
    scheduler_option,
    store_option,
    store_url,
)
from cluster_app.cli._runs import (
    DONE,
    end_line,
    follow,
    history,
    n_rounds,
    round_line,
    run_id_of,
    summary,
)
from cluster_app.errors import ClusterAppError

__all__ = ["runs"]

INTERRUPTED = 130

_run = click.argument("run", metavar="RUN")
_wait = click.option("--wait", is_flag=True, help="Wait until the run's loop has done it.")
_timeout = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Give up (exit 1) after this many seconds (default: no limit; 120 with --wait).",
)


def _writer(record):
    """A record that may write (``find_run`` gives one for reading)."""
    from cluster_app.runs.record import RunRecord

    return RunRecord(record.url)


def _when(t) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _fmt(x, spec=".4f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def _wait_for(record, phases: tuple[str, ...], timeout: float | None) -> dict:
    limit = 120.0 if timeout is None else timeout
    deadline = time.monotonic() + limit
    while True:
        status = record.status()
        if status.get("phase") in phases:
            return status
        if time.monotonic() > deadline:
            raise ClusterAppError(
                f"run {run_id_of(record)} still {status.get('phase')} after {limit:g}s "
                "(is its loop running? `cluster-app runs resume RUN --scheduler ADDRESS`)"
            )
        time.sleep(0.25)


@click.group()
def runs() -> None:
    """Durable runs: list, show, attach, pause, resume, stop."""


@runs.command(name="list")
@store_option
@as_json_option
@errors
def list_runs_command(store, as_json) -> None:
    """Every run in the store, oldest first: phase, requested state, rounds, version, loss,
    goodput and when its status last changed."""
    url = store_url(store)
    rows = [summary(r) for r in list_runs(url)]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"no runs in {url}")
        return
    click.echo(
        f"{'run':<28} {'phase':<9} {'control':<8} {'rounds':>11} {'version':>7} "
        f"{'model':<7} {'loss':>8} {'goodput':>7}  updated"
    )
    for s in rows:
        version = s["version"] if s["version"] is not None else "-"
        click.echo(
            f"{s['run_id']:<28} {s['phase']:<9} {s['control']:<8} "
            f"{s['rounds_done']:>5}/{s['rounds'] or '?':<5} {version:>7} "
            f"{s['model'] or '-':<7} {_fmt(s['loss']):>8} {_fmt(s['goodput'], '.1%'):>7}  "
            f"{_when(s['updated'])}"
        )


@runs.command()
@_run
@click.option(
    "-n",
    "--last",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Rounds to show.",
)
@store_option
@as_json_option
@errors
def show(run, last, store, as_json) -> None:
    """RUN's status and its last rounds: loss, version, and each round's goodput (the share of
    its launched agents whose work was kept)."""
    record = find_run(store_url(store), run)
    spec, status = record.spec(), record.status()
    rounds = history(record, last=last)
    if as_json:
        echo_json(
            {
                "run_id": spec["run_id"],
                "control": record.control(),
                "status": status,
                "rounds_recorded": n_rounds(record),
                "rounds": rounds,
                "spec": spec,
            }
        )
        return
    s = summary(record)
    g = status.get("goodput") or {}
    agent = spec.get("agent") or {}
    click.echo(f"run {s['run_id']}  {s['phase']} (requested: {s['control']})")
    click.echo(
        f"model {agent.get('model')} on {agent.get('dataset')}, rounds {s['rounds_done']}/"
        f"{spec.get('rounds')} of {spec.get('local_steps')} local steps, version "
        f"{status.get('version', '-')}, updated {_when(status.get('updated'))}"
    )
    if g:
        click.echo(
            f"goodput {_fmt(g.get('goodput'), '.1%')} "
            f"(productive {_fmt(g.get('productive'), '.0f')}s of {_fmt(g.get('wall'), '.0f')}s; "
            f"recovery {_fmt(g.get('recovery'), '.0f')}s, "
            f"checkpoints {_fmt(g.get('checkpoint'), '.1f')}s)"
        )
    if status.get("active") is not None:
        click.echo(
            f"agents: {len(status.get('active') or [])} active, "
            f"{len(status.get('standby') or [])} standby, {status.get('lost_workers', 0)} lost"
        )
    ev = status.get("eval_end") or {}
    if ev.get("loss") is not None:
        click.echo(f"held-out loss {_fmt(ev['loss'])} (baseline {_fmt(ev.get('baseline_loss'))})")
    if status.get("checkpoint_errors"):
        click.echo(f"checkpoint errors: {len(status['checkpoint_errors'])}")
    if status.get("error"):
        click.echo(f"error: {status['error']}")
    for h in rounds:
        click.echo(round_line(h))


@runs.command()
@_run
@scheduler_option
@click.option(
    "--last",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Recorded rounds to print before following.",
)
@_timeout
@store_option
@errors
def attach(run, scheduler, last, timeout, store) -> None:
    """Follow RUN's rounds until it finishes, stops or fails (Ctrl-C detaches; the run goes on).

    With --scheduler it also checks that the run's loop is on that cluster, and fails (exit 1)
    if it is gone while the run has not ended. Exit 0 once the run has finished or stopped;
    1 if it failed.
    """
    record = find_run(store_url(store), run)
    alive = None
    client = None
    if scheduler is not None:
        from cluster_app.runs.handle import RunHandle

        client = connect(scheduler)
        alive = RunHandle(client, record.url).controller_alive
    try:
        follow(record, alive=alive, timeout=timeout, skip=max(0, n_rounds(record) - last))
    except KeyboardInterrupt:
        click.echo(f"detached from run {run}", err=True)
        sys.exit(INTERRUPTED)
    finally:
        if client is not None:
            client.close()


@runs.command()
@_run
@_wait
@_timeout
@store_option
@errors
def pause(run, wait, timeout, store) -> None:
    """Pause RUN before its next round (its loop stays, holding its state; `resume` goes on).

    Refused (exit 3) if the run has ended.
    """
    record = find_run(store_url(store), run)
    phase = record.status().get("phase")
    if phase in DONE:
        raise Refused(f"run {run} has {_ended(phase)}: there is nothing to pause")
    if record.control() == "paused":
        click.echo(f"run {run} is paused already ({phase})")
    else:
        _writer(record).set_control("paused")
        click.echo(f"pausing run {run} (its loop pauses before its next round)")
    if wait:
        status = _wait_for(record, ("paused", *DONE), timeout)
        click.echo(f"run {run} {status['phase']} at round {status.get('round')}")


@runs.command()
@_run
@_wait
@_timeout
@store_option
@errors
def stop(run, wait, timeout, store) -> None:
    """Stop RUN after its current round (final version and checkpoint kept; `resume
    --scheduler` restarts it). Refused (exit 3) if it has finished."""
    record = find_run(store_url(store), run)
    phase = record.status().get("phase")
    if phase == "finished":
        raise Refused(f"run {run} has finished: there is nothing to stop")
    if phase == "stopped" or record.control() == "stopped":
        click.echo(f"run {run} is stopped already ({phase})")
    else:
        _writer(record).set_control("stopped")
        click.echo(f"stopping run {run} (after its current round)")
    if wait and phase not in DONE:
        status = _wait_for(record, DONE, timeout)
        click.echo(end_line(run, status, n_rounds(record)))


@runs.command()
@_run
@scheduler_option
@store_option
@errors
def resume(run, scheduler, store) -> None:
    """Resume RUN: a paused run goes on; with --scheduler, a run whose loop has ended (stopped,
    failed, its cluster gone) gets a new loop there, which resumes from the store and the
    newest valid checkpoint. Refused (exit 3) if the run has finished all its rounds."""
    record = find_run(store_url(store), run)
    phase = record.status().get("phase")
    if phase == "finished":
        raise Refused(f"run {run} has finished all its rounds")
    if scheduler is None:
        if phase in DONE:
            raise click.UsageError(
                f"run {run} has {_ended(phase)}: its loop must be relaunched on a cluster; "
                "pass --scheduler ADDRESS"
            )
        if record.control() == "running":
            click.echo(f"run {run} is {phase} and was not paused (a lost loop needs --scheduler)")
            return
        _writer(record).set_control("running")
        click.echo(f"resuming run {run}")
        return
    from cluster_app.runs.handle import RunHandle
    from cluster_app.runs.install import install

    client = connect(scheduler)
    try:
        handle = RunHandle(client, record.url)
        alive = handle.controller_alive()
        if not alive:  # a bare or restarted scheduler has no plugins: the loop needs them
            install(client, handle.spec.agent)
        handle.resume()
        how = "its loop goes on" if alive else f"a new loop on {scheduler}"
        click.echo(f"resumed run {run} ({how})")
    finally:
        client.close()


def _ended(phase: str) -> str:
    return {"finished": "finished", "stopped": "been stopped", "failed": "failed"}.get(phase, phase)
