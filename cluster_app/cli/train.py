"""``cluster-app train``: start a durable run and follow it (or ``--detach``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from cluster_app import config
from cluster_app.cli._common import (
    Conflict,
    connect_timeout,
    errors,
    scheduler_option,
    store_option,
    store_url,
)

__all__ = ["train"]

INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C


def build_spec(store: str, run_id: str | None, agent_fields: dict, run_fields: dict) -> Any:
    """The run's validated :class:`~cluster_app.runs.spec.RunSpec` (a bad value is a
    :class:`~cluster_app.errors.SpecError`, exit 2), before any cluster starts."""
    from cluster_app.agent.spec import AgentSpec
    from cluster_app.runs.spec import RunSpec

    agent = AgentSpec.from_config(**{k: v for k, v in agent_fields.items() if v is not None})
    fields = {k: v for k, v in run_fields.items() if v is not None}
    if run_id is not None:
        fields["run_id"] = run_id
    return RunSpec.from_config(agent=agent, store_url=store, **fields)


def load_continual(path: str) -> Any:
    """The :class:`~cluster_app.learning.spec.ContinualSpec` a YAML or JSON file describes
    (``tasks: [{name: ..., data: {...}}, ...]`` and the spec's other fields; a bad field is a
    :class:`~cluster_app.errors.SpecError`, exit 2)."""
    import yaml

    from cluster_app.errors import SpecError
    from cluster_app.learning.spec import ContinualSpec, Task

    with open(path) as f:
        doc = yaml.safe_load(f)  # JSON is YAML too
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a continual spec is a mapping of ContinualSpec fields")
    try:
        for key in ("tasks", "prior_tasks"):
            doc[key] = tuple(
                Task(t["name"], t.get("data", {})) if isinstance(t, dict) else t
                for t in doc.get(key) or ()
            )
        return ContinualSpec.from_config(**doc)
    except (KeyError, TypeError) as e:
        raise SpecError(f"{path}: not a continual spec ({e!r})") from None


@click.command()
@scheduler_option
@click.option(
    "--workers",
    "n_workers",
    type=click.IntRange(min=1),
    default=None,
    help="Workers of the local cluster (without --scheduler; default: "
    "cluster-app.cluster.n-workers).",
)
@store_option
@click.option(
    "--model",
    type=click.Choice(config.MODELS),
    default=None,
    help="The agents' model; its dataset follows (default: cluster-app.agent.model).",
)
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Rounds to run.")
@click.option(
    "--local-steps", type=click.IntRange(min=1), default=None, help="Local steps per round."
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Training time budget; the run ends after the round that passes it.",
)
@click.option(
    "--learning-rate", type=click.FloatRange(1e-7, 10.0), default=None, help="Inner rate."
)
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=None)
@click.option("--codec", type=click.Choice(config.CODECS), default=None, help="Delta codec.")
@click.option("--standby", type=click.IntRange(min=0), default=None, help="Hot standbys.")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    help="Checkpoint every N rounds (default: cluster-app.recovery.checkpoint-every-rounds).",
)
@click.option(
    "--eval-every", type=click.IntRange(min=1), default=None, help="Held-out loss every N rounds."
)
@click.option(
    "--init-from",
    default=None,
    help="Start from a registry branch, tag or commit, or run:<run-id>[@<version>].",
)
@click.option(
    "--continual",
    "continual_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A continual run: a YAML or JSON file of ContinualSpec fields (mode, tasks, "
    "rounds_per_task, replay_size, ewc_lambda, freeze, ...; docs/continual.md).",
)
@click.option("--run-id", default=None, help="The run's id (default: run-<date>-<time>-<hex>).")
@click.option(
    "--detach",
    is_flag=True,
    help="Submit, print the run id and exit; the run goes on (needs --scheduler).",
)
@errors
def train(
    scheduler,
    n_workers,
    store,
    model,
    rounds,
    local_steps,
    seconds,
    learning_rate,
    seed,
    codec,
    standby,
    checkpoint_every,
    eval_every,
    init_from,
    continual_file,
    run_id,
    detach,
) -> None:
    """Start a durable run on a cluster and follow its rounds to the end.

    The run's loop is a task on the cluster, so with --scheduler it outlives this command:
    --detach prints its id at once (for `cluster-app runs show/attach/pause/stop RUN`).
    Without --scheduler a local cluster is started for the run and closed after it.

    Exit codes: 0 the run finished or was stopped; 1 it failed or the cluster cannot be
    reached; 2 a bad argument; 4 a run with that --run-id exists; 130 interrupted (a run on
    --scheduler goes on; one on the local cluster is left to `runs resume`).
    """
    if detach and scheduler is None:
        raise click.UsageError("--detach needs --scheduler: a local cluster ends with this command")
    if scheduler is not None and n_workers is not None:
        raise click.UsageError("--workers sizes a local cluster, not one given by --scheduler")
    from cluster_app.cli._common import RUN_ID, find_run
    from cluster_app.errors import ClusterAppError

    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise click.BadParameter("letters, digits, '.', '_' and '-' only", param_hint="--run-id")
    url = store_url(store)
    spec = build_spec(
        url,
        run_id,
        {"model": model, "learning_rate": learning_rate, "seed": seed},
        {
            "rounds": rounds,
            "local_steps": local_steps,
            "max_seconds": seconds,
            "codec": codec,
            "standby": standby,
            "checkpoint_every_rounds": checkpoint_every,
            "eval_every": eval_every,
            "init_from": init_from,
            "continual": None if continual_file is None else load_continual(continual_file),
        },
    )
    try:
        find_run(url, spec.run_id)
    except ClusterAppError:
        pass  # no such run yet: good
    else:
        raise Conflict(f"a run {spec.run_id!r} exists in {url} already (runs resume it)")

    import dask.config

    from cluster_app.cli._runs import follow
    from cluster_app.cluster import AgentCluster
    from cluster_app.runs.handle import RunHandle

    try:
        with dask.config.set({"distributed.comm.timeouts.connect": connect_timeout()}):
            ac = AgentCluster(
                scheduler, n_workers=n_workers, agent=spec.agent, store_url=url, quiet=True
            )
    except (OSError, TimeoutError) as e:
        raise ClusterAppError(f"cannot reach a scheduler at {scheduler}: {e}") from None
    with ac:
        handle = RunHandle.submit(ac.client, spec)
        if detach:
            click.echo(spec.run_id)
            return
        click.echo(f"run {spec.run_id} on {ac.scheduler_address} (store {url})")
        try:
            follow(handle.record, alive=handle.controller_alive)
        except KeyboardInterrupt:
            if scheduler is None:
                how = f"cluster-app runs resume {spec.run_id} --scheduler ADDRESS continues it"
                click.echo(f"interrupted: the local cluster closes; {how}", err=True)
            else:
                click.echo(f"detached; the run goes on (cluster-app runs attach {spec.run_id})")
            sys.exit(INTERRUPTED)
