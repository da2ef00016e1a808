"""``cluster-app serve``: the completion gateway in the foreground (Ctrl-C stops it)."""

from __future__ import annotations

import click

from cluster_app import config

__all__ = ["serve"]


@click.command()
@click.option("--ref", default="prod", show_default=True, help="Registry ref to serve.")
@click.option("--scheduler", default=None, help="Scheduler address (default: a local cluster).")
@click.option(
    "--workers",
    "n_workers",
    type=click.IntRange(min=1),
    default=None,
    help="Workers of the local cluster (without --scheduler).",
)
@click.option("--store", default=None, help="Store URL (default: cluster-app.store.url).")
@click.option("--host", default=None, help="Listen address (default: cluster-app.serving.host).")
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Port (default: cluster-app.serving.port).",
)
def serve(ref, scheduler, n_workers, store, host, port) -> None:
    """Serve REF as an OpenAI-compatible /v1/completions API on the fleet."""
    import uvicorn

    from cluster_app.cluster import AgentCluster
    from cluster_app.errors import ClusterAppError
    from cluster_app.serving.gateway import Gateway
    from cluster_app.serving.spec import ServeSpec
    from cluster_app.versions.registry import Registry

    store_url = config.get("store.url", store)
    try:
        Registry(store_url).resolve(ref)
    except ClusterAppError as e:
        raise click.ClickException(f"cannot serve {ref!r}: {e}") from e
    spec = ServeSpec.from_config()
    ac = None
    if scheduler is None:
        ac = AgentCluster(n_workers=n_workers, store_url=store_url)
        scheduler = ac.scheduler_address
    try:
        gateway = Gateway(scheduler, store_url, ref, spec)
        click.echo(
            f"serving {ref} at http://{host or spec.host}:{spec.port if port is None else port}"
        )
        uvicorn.run(
            gateway.app,
            host=host or spec.host,
            port=spec.port if port is None else port,
            log_level="warning",
        )
    finally:
        if ac is not None:
            ac.close()
