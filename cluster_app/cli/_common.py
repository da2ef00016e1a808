"""What the ``cluster-app`` subcommands share: exit codes, errors, the store, a scheduler.

Exit codes scripts can rely on (the same as ``cluster-app versions``): 0 done; 1 an error
(named on stderr: an unknown run, a corrupted checkpoint, a scheduler that cannot be reached);
2 bad usage or a bad argument (click's own, an invalid run id or training argument); 3 refused
(the request makes no sense for the run's state: pausing a finished run); 4 a conflict (a
different run already has that id).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from cluster_app import config
from cluster_app.errors import (
    ClusterAppError,
    CommitConflict,
    GateRefused,
    MergeConflict,
    SpecError,
)

if TYPE_CHECKING:
    from distributed import Client

    from cluster_app.runs.record import RunRecord

__all__ = [
    "CONFLICT",
    "ERROR",
    "REFUSED",
    "Conflict",
    "Refused",
    "as_json_option",
    "connect",
    "connect_timeout",
    "echo_json",
    "errors",
    "find_run",
    "list_runs",
    "scheduler_option",
    "store_option",
    "store_url",
]

ERROR, REFUSED, CONFLICT = 1, 3, 4
MAX_CONNECT_S = 10.0
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Refused(ClusterAppError):
    """The request makes no sense in the run's current state (exit 3)."""


class Conflict(ClusterAppError):
    """Something else already holds what the request would create (exit 4)."""


def errors(fn):
    """Turn our errors into a one-line message on stderr and an exit code (module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (Refused, GateRefused, MergeConflict) as e:
            click.echo(f"refused: {e}", err=True)
            sys.exit(REFUSED)
        except (Conflict, CommitConflict) as e:
            click.echo(f"conflict: {e}", err=True)
            sys.exit(CONFLICT)
        except SpecError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except ClusterAppError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(ERROR)

    return wrapper


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


store_option = click.option(
    "--store", default=None, help="Store URL (default: cluster-app.store.url)."
)
as_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
scheduler_option = click.option(
    "--scheduler", default=None, metavar="ADDRESS", help="Scheduler address, e.g. tcp://host:8786."
)


def store_url(store: str | None) -> str:
    """The store URL: ``--store`` or ``cluster-app.store.url``; a local path made absolute, so
    that workers started elsewhere (``cluster-app up`` in another directory) agree on it."""
    url = config.get("store.url", store)
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    return url.rstrip("/")


def connect_timeout() -> float:
    """Seconds to wait for a scheduler: Dask's ``distributed.comm.timeouts.connect``, at
    most 10 (a mistyped address should not hang a command for long)."""
    import dask.config
    from dask.utils import parse_timedelta

    value = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    return min(float(value), MAX_CONNECT_S) if value else MAX_CONNECT_S


def connect(address: str) -> Client:
    """A client of the scheduler at ``address``; a clear error if it cannot be reached.

    A Ctrl-C while the client starts is held until the start returns (at most the connect
    timeout), then the client is closed and ``KeyboardInterrupt`` raised: interrupted midway,
    a starting client is left half-open and its close at exit waits out a 20 s timeout.
    """
    from distributed import Client

    interrupted: list[int] = []
    # (handlers can only be set from the main thread; an inherited SIG_IGN stays ignored)
    held = threading.current_thread() is threading.main_thread()
    held = held and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    if held:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        client = Client(address, timeout=connect_timeout())
    except (OSError, TimeoutError, ValueError) as e:
        if interrupted:
            raise KeyboardInterrupt from None
        raise ClusterAppError(f"cannot reach a scheduler at {address}: {e}") from None
    finally:
        if held:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        client.close()
        raise KeyboardInterrupt
    return client


def _reader(store: str, run_dir: str | None = None) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(store)
    return fs, root if run_dir is None else f"{root.rstrip('/')}/{run_dir}"


def list_runs(store: str) -> list[RunRecord]:
    """Records (for reading) of every run in the store, oldest id first; a directory that
    holds no readable run spec (the registry, a damaged run) is skipped."""
    from cluster_app.runs.record import RunRecord

    fs, root = _reader(store)
    try:
        entries = sorted(fs.ls(root, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for run_dir in entries:
        record = RunRecord.reader(fs, run_dir)
        try:
            spec = record.spec()
        except (ClusterAppError, json.JSONDecodeError, OSError):
            continue
        if isinstance(spec, dict) and "run_id" in spec:
            out.append(record)
    return out


def find_run(store: str, run_id: str) -> RunRecord:
    """The record of ``run_id`` (for reading; it creates nothing). A malformed id is a bad
    argument (exit 2), an unknown one an error (exit 1)."""
    from cluster_app.runs.record import RunRecord

    if not RUN_ID.fullmatch(run_id):
        raise SpecError(f"{run_id!r} is not a run id (letters, digits, '.', '_' and '-')")
    fs, root = _reader(store, run_id)
    record = RunRecord.reader(fs, root)
    if not record.exists():
        raise ClusterAppError(f"no run {run_id!r} in the store {store}")
    return record
