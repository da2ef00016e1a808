"""``cluster-app checkpoints list|verify RUN``: a run's Orbax checkpoints, and whether they
restore.

``verify`` makes each checkpoint the check a resuming run makes of it
(:meth:`~cluster_app.recovery.checkpoint.Checkpointer.check`): it must restore, hold only
finite values, and its published parameters must be, bit for bit, the store's version it names
(:func:`~cluster_app.runs.resume.disagreement`). Exit codes: 0 every checkpoint is usable (or
there are none); 1 one or more are not (or an unknown run); 2 a bad argument.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import datetime
from typing import Any

import click

from cluster_app.cli._common import (
    ERROR,
    as_json_option,
    echo_json,
    errors,
    find_run,
    store_option,
    store_url,
)

__all__ = ["checkpoints"]


def checkpoint_dir(store: str, record) -> str:
    """Where the run's checkpoints are: ``<store>/<run>/checkpoints`` for a local store (the
    store given, wherever it was when the run started), else under
    ``cluster-app.recovery.checkpoint-dir`` (see ``RunSpec.checkpoint_dir``)."""
    from cluster_app.runs.spec import spec_from_dict

    spec = spec_from_dict({**record.spec(), "store_url": store})
    return spec.checkpoint_dir


def _steps(directory: str) -> list[int]:
    """The committed steps (a save in flight is ``<step>.orbax-checkpoint-tmp-*``)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(f"{directory}/{n}"))


def _describe(directory: str, step: int) -> dict[str, Any]:
    path = os.path.join(directory, str(step))
    size = 0
    for root, _, files in os.walk(path):
        for f in files:
            # a file removed meanwhile: the run keeps only its newest few checkpoints
            with contextlib.suppress(FileNotFoundError):
                size += os.path.getsize(os.path.join(root, f))
    saved = None
    try:
        with open(os.path.join(path, "_CHECKPOINT_METADATA")) as f:
            nanos = json.load(f).get("commit_timestamp_nsecs")
        saved = nanos / 1e9 if nanos else None
    except (OSError, ValueError):
        pass
    if saved is None:
        try:
            saved = os.path.getmtime(path)
        except OSError:
            saved = None
    meta: dict[str, Any] = {}
    try:
        with open(os.path.join(path, "meta", "metadata")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        pass
    return {
        "step": step,
        "round": meta.get("round", step),
        "version": meta.get("version"),
        "saved": saved,
        "bytes": size,
        "path": path,
    }


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@click.group()
def checkpoints() -> None:
    """A run's Orbax checkpoints: list them, verify that they restore."""


@checkpoints.command(name="list")
@click.argument("run", metavar="RUN")
@store_option
@as_json_option
@errors
def list_checkpoints(run, store, as_json) -> None:
    """RUN's checkpoints, oldest first: step (its round), version, when saved, size."""
    url = store_url(store)
    directory = checkpoint_dir(url, find_run(url, run))
    rows = [_describe(directory, s) for s in _steps(directory)]
    if as_json:
        echo_json({"run_id": run, "directory": directory, "checkpoints": rows})
        return
    if not rows:
        click.echo(f"run {run} has no checkpoints (in {directory})")
        return
    click.echo(f"{'step':>6} {'version':>7}  {'saved':<19} {'size':>10}")
    for r in rows:
        v = r["version"] if r["version"] is not None else "-"
        click.echo(f"{r['step']:>6} {v:>7}  {_when(r['saved']):<19} {_size(r['bytes']):>10}")
    click.echo(f"{len(rows)} checkpoints in {directory}")


@checkpoints.command()
@click.argument("run", metavar="RUN")
@click.option(
    "--step",
    "only",
    type=click.IntRange(min=0),
    multiple=True,
    help="Verify only this step (repeatable; default: every one).",
)
@store_option
@as_json_option
@errors
def verify(run, only, store, as_json) -> None:
    """Restore each of RUN's checkpoints and check it as a resuming run would: it restores,
    its values are finite, and it agrees with the store's version it names. Exit 1 if any is
    unusable (a resume then falls back to an older one, or to the store)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # verifying needs no accelerator
    url = store_url(store)
    record = find_run(url, run)
    directory = checkpoint_dir(url, record)
    steps = _steps(directory)
    if only:
        missing = sorted(set(only) - set(steps))
        if missing:
            raise click.BadParameter(
                f"run {run} has no checkpoint at step(s) {missing}; it has {steps or 'none'}",
                param_hint="--step",
            )
        steps = sorted(only)
    results = []
    if steps:
        from cluster_app.recovery.checkpoint import Checkpointer
        from cluster_app.runs.resume import disagreement
        from cluster_app.sync.store import ParamStore

        store_of_run = ParamStore(record.url)
        ckpt = Checkpointer(directory, keep=max(len(steps), 1))
        with _quiet_failed_restores():
            for step in steps:
                row = _describe(directory, step)
                reason = ckpt.check(step, validate=lambda s, m: disagreement(store_of_run, s, m))
                if reason is not None and not os.path.isdir(row["path"]):
                    row["ok"], row["problem"] = None, "removed while verifying (the run rotated it)"
                else:
                    row["ok"], row["problem"] = reason is None, reason
                results.append(row)
            ckpt.close()
    bad = [r for r in results if r["ok"] is False]
    usable = [r["step"] for r in results if r["ok"]]
    if as_json:
        echo_json(
            {
                "run_id": run,
                "directory": directory,
                "checkpoints": results,
                "unusable": [r["step"] for r in bad],
                "resume_from": max(usable) if usable else None,
            }
        )
    elif not results:
        click.echo(f"run {run} has no checkpoints (in {directory})")
    else:
        for r in results:
            state = {True: "ok", False: "UNUSABLE", None: "gone"}[r["ok"]]
            version = r["version"] if r["version"] is not None else "-"
            line = f"step {r['step']:>6}  version {version:>6}  {state}"
            if r["problem"]:
                line += f": {_one_line(r['problem'])}"
            click.echo(line)
        tail = f"newest usable: step {max(usable)}" if usable else "none usable"
        click.echo(f"{len(results)} checkpoints, {len(bad)} unusable; {tail}")
    if bad:
        sys.exit(ERROR)


@contextlib.contextmanager
def _quiet_failed_restores():
    """Keep a failed restore's late noise off stderr. When Orbax's restore of a damaged
    checkpoint fails, it closes its event loop while tensorstore still completes the other
    reads; each completion then calls ``call_soon_threadsafe`` on the closed loop from a C++
    thread, which prints a ``RuntimeError: Event loop is closed`` traceback (dozens per step),
    and asyncio logs the abandoned tasks. Both are dropped here, for this command only."""
    import asyncio
    import gc
    import logging
    import time

    original = asyncio.BaseEventLoop.call_soon_threadsafe

    def call_soon_threadsafe(self, *args, **kwargs):
        if self.is_closed():
            return None  # a read of a restore that has already failed: nobody waits for it
        return original(self, *args, **kwargs)

    log = logging.getLogger("asyncio")
    level = log.level
    asyncio.BaseEventLoop.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign]
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        time.sleep(0.05)  # the late completions arrive within milliseconds
        gc.collect()  # abandoned tasks log now, while that is silenced
        asyncio.BaseEventLoop.call_soon_threadsafe = original  # type: ignore[method-assign]
        log.setLevel(level)


def _one_line(text: str, width: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."
