"""A durable run: its loop as a long-running task on the cluster, under a key that names it.

``AgentCluster.submit`` (through :class:`~cluster_app.runs.handle.RunHandle`) and the
:class:`~cluster_app.runs.keeper.RunKeeper` submit :func:`controller_task` under
:func:`controller_key` and release it with ``fire_and_forget``. It secedes from the worker's
thread pool while it waits; when its worker dies Dask runs it again elsewhere, and the new
incarnation resumes from the store and the newest valid checkpoint.
"""

from __future__ import annotations

from distributed import Client, fire_and_forget

from cluster_app.runs.loop import RunLoop
from cluster_app.runs.spec import spec_from_dict

__all__ = ["controller_key", "controller_task", "launch"]


def controller_key(run_id: str) -> str:
    """The task key of ``run_id``'s loop on the cluster (one per run, so never two)."""
    return f"controller-{run_id}"


def controller_task(spec_dict: dict) -> dict:
    """Run (or resume) a run from inside the cluster; returns its summary."""
    from distributed import worker_client

    spec = spec_from_dict(spec_dict)
    with worker_client(separate_thread=True) as client:
        result = RunLoop(client, spec, progress=False).run()
    return result.summary()


def launch(client: Client, spec_dict: dict):
    """Submit the run's loop and let it go (``fire_and_forget``); it outlives ``client``.
    Returns the future (awaitable ``submit`` result with an asynchronous client)."""
    fut = client.submit(
        controller_task,
        spec_dict,
        key=controller_key(spec_dict["run_id"]),
        pure=False,
        retries=100,
    )
    fire_and_forget(fut)
    return fut
