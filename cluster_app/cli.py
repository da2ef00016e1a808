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


@main.command(name="config")
def show_config() -> None:
    """Print the effective, validated configuration."""
    click.echo(json.dumps(config.validate(), indent=2))
