"""Fault injection on a running cluster whose processes are on this machine.

- :func:`kill_worker`: ``kill -9`` a worker process (its nanny restarts it: a crashed process)
  or the worker and its nanny together (a lost node: nothing restarts it);
- :func:`controller_worker`: where a run's controller task is running, to kill exactly that;
- :func:`corrupt_latest_checkpoint`: flip bytes in the newest Orbax checkpoint of a run;
- :func:`restart_scheduler` lives in the tests' subprocess cluster helper: a ``LocalCluster``'s
  scheduler shares the client's process and cannot be restarted on its own.

These act on real processes and files; use them on clusters you own.
"""

from __future__ import annotations

import os
import random
import signal

from distributed import Client

__all__ = ["controller_worker", "corrupt_latest_checkpoint", "kill_worker", "worker_pids"]


def _pids() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def worker_pids(client: Client) -> dict[str, tuple[int, int]]:
    """``{worker address: (worker pid, nanny pid)}`` for every worker."""
    # (Client.run is typed coroutine-or-value; a synchronous client returns the value)
    return client.run(_pids)  # pyright: ignore[reportReturnType]


def controller_worker(client: Client, run_id: str) -> str | None:
    """The address of the worker running ``run_id``'s controller task, if any."""
    key = f"controller-{run_id}"

    def where(dask_scheduler, key=key):
        ts = dask_scheduler.tasks.get(key)
        return ts.processing_on.address if ts is not None and ts.processing_on else None

    # (typed coroutine-or-value, like Client.run; a synchronous client returns the value)
    return client.run_on_scheduler(where)  # pyright: ignore[reportReturnType]


def kill_worker(
    client: Client,
    address: str | None = None,
    with_nanny: bool = False,
    rng: random.Random | None = None,
    exclude: set[str] | None = None,
) -> str:
    """SIGKILL one worker (a random one unless ``address``); returns its address.

    ``with_nanny=True`` kills its nanny first, so nothing restarts it (a lost node).
    """
    pids = worker_pids(client)
    candidates = sorted(set(pids) - (exclude or set()))
    if address is None:
        if not candidates:
            raise RuntimeError("no worker to kill")
        address = (rng or random.Random()).choice(candidates)
    pid, nanny = pids[address]
    if with_nanny:
        if nanny == os.getpid():
            _disarm_local_nanny(address)
        elif nanny != 1:
            os.kill(nanny, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    return address


def _disarm_local_nanny(address: str) -> None:
    # A LocalCluster's nannies live in this very process, so they cannot be killed without
    # killing us: tell the worker's nanny not to restart it instead (the same outcome for the
    # scheduler as a lost node: the worker vanishes and nothing brings it back).
    from distributed.nanny import Nanny

    for nanny in list(Nanny._instances):
        if nanny.worker_address == address:
            nanny.close_gracefully(reason="chaos: node lost")
            return
    raise RuntimeError(f"no nanny in this process owns {address}")


def corrupt_latest_checkpoint(directory: str, n_bytes: int = 64) -> list[str]:
    """Overwrite bytes in every array data file of the newest checkpoint; returns the files.

    The data files are tensorstore OCDBT ``d/`` files; metadata is left intact, so Orbax
    believes the checkpoint is complete and only reading its arrays can reveal the damage.
    """
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {directory}")
    newest = os.path.join(directory, str(steps[-1]))
    files = [
        os.path.join(root, f)
        for root, _, fs in os.walk(newest)
        for f in fs
        if os.path.basename(root) == "d"
    ]
    if not files:
        raise FileNotFoundError(f"no array data files under {newest}")
    for target in files:
        size = os.path.getsize(target)
        with open(target, "r+b") as f:
            f.seek(max(0, size // 2 - n_bytes // 2))
            f.write(os.urandom(min(n_bytes, size)))
    return files
