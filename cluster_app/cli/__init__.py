"""``cluster-app`` command line (also ``dask cluster-app`` through Dask's CLI entry points)."""

from __future__ import annotations

import json

import click

from cluster_app import config

__all__ = ["main"]


@click.group(name="cluster-app")
@click.version_option(package_name="cluster_app")
def main() -> None:
    """Fleets of JAX learning agents on Dask."""


@main.command()
@click.option(
    "--workers",
    "n_workers",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Agents (worker processes) in the local cluster.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Training time budget.",
)
@click.option(
    "--local-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Local steps per round (default: cluster-app.train.local-steps).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="demo-output",
    show_default=True,
    help="Where the summary, plot and store go.",
)
def demo(n_workers: int, seconds: float, local_steps: int | None, out: str) -> None:
    """Train the code-completion agents on a local cluster and show what they learned."""
    from cluster_app.demo import run_demo

    summary = run_demo(n_workers=n_workers, seconds=seconds, out=out, local_steps=local_steps)
    if summary["heldout_loss_end"] >= summary["baseline_loss"]:
        raise SystemExit(1)


@main.command()
@click.option(
    "--minutes",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="How long to keep training and killing.",
)
@click.option("--workers", "n_workers", type=click.IntRange(min=2), default=4, show_default=True)
@click.option(
    "--kill-every",
    type=click.FloatRange(min=5),
    default=45.0,
    show_default=True,
    help="Mean seconds between kills.",
)
@click.option(
    "--standby",
    type=click.IntRange(min=0),
    default=None,
    help="Hot standbys (default: cluster-app.recovery.standby).",
)
@click.option("--local-steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="chaos-output", show_default=True)
def chaos(
    minutes: float,
    n_workers: int,
    kill_every: float,
    standby: int | None,
    local_steps: int,
    seed: int,
    out: str,
) -> None:
    """Soak test: train while killing workers (kill -9), then verify every version."""
    import os

    import numpy as np

    from cluster_app.cluster import AgentCluster
    from cluster_app.testing.soak import soak

    os.makedirs(out, exist_ok=True)
    with AgentCluster(n_workers=n_workers, store_url=os.path.join(out, "store")) as ac:
        report = soak(
            ac, minutes, kill_every=kill_every, seed=seed, standby=standby, local_steps=local_steps
        )
    with open(os.path.join(out, "chaos.json"), "w") as f:
        json.dump(report, f, indent=2)
    done = [m for m in report["mttr_s"] if m is not None]
    g = report["goodput"]
    click.echo(
        f"phase {report['phase']}: {report['rounds']} rounds, version "
        f"{report['version']}, {len(report['kills'])} kills"
    )
    click.echo(
        f"MTTR (kill -> next full-strength round): median "
        f"{np.median(done) if done else float('nan'):.1f}s, max "
        f"{max(done) if done else float('nan'):.1f}s, never recovered: "
        f"{len(report['mttr_s']) - len(done)}"
    )
    click.echo(
        f"goodput {g.get('goodput', 0):.1%} (productive {g.get('productive', 0):.0f}s, "
        f"recovery {g.get('recovery', 0):.0f}s, checkpoint {g.get('checkpoint', 0):.1f}s, "
        f"startup {g.get('startup', 0):.0f}s, idle {g.get('idle', 0):.0f}s of "
        f"{g.get('wall', 0):.0f}s)"
    )
    click.echo(
        f"committed versions: {report['versions']}, unreadable: "
        f"{report['unreadable_versions'] or 'none'}; checkpoint errors: "
        f"{len(report['checkpoint_errors'])}"
    )
    if report["unreadable_versions"] or report["phase"] != "finished":
        raise SystemExit(1)


@main.command(name="config")
def show_config() -> None:
    """Print the effective, validated configuration."""
    click.echo(json.dumps(config.validate(), indent=2))


# (the commands need ``main`` defined)
from cluster_app.cli.bench import bench  # noqa: E402
from cluster_app.cli.checkpoints import checkpoints  # noqa: E402
from cluster_app.cli.runs import runs  # noqa: E402
from cluster_app.cli.serve import serve  # noqa: E402
from cluster_app.cli.status import status  # noqa: E402
from cluster_app.cli.train import train  # noqa: E402
from cluster_app.cli.up import up  # noqa: E402
from cluster_app.cli.versions import versions  # noqa: E402

for _command in (up, train, runs, checkpoints, status, bench, serve, versions):
    main.add_command(_command)
