"""Where a run (re)starts: the three resume paths, through a small coordinator API.

Every incarnation of a run's loop starts here, a fresh run included. The store's committed
versions are the truth; a checkpoint adds what the store cannot hold (the exact master
parameters, the outer optimiser's momentum, pending pushes) and is used only if it agrees with
the store. The paths:

1. **from the store** (:func:`from_store`): no usable checkpoint (a fresh run, none saved yet,
   or every one corrupted or disagreeing with the store). Adopt the newest readable version;
   if newer versions are unreadable, build past them, never over them.
2. **from a checkpoint** (:func:`from_checkpoint`): restore the coordinator; the store has
   nothing newer, so the run goes on from the checkpoint's round.
3. **from a checkpoint, caught up** (also :func:`from_checkpoint`): versions were committed
   after the checkpoint (the loop died between checkpoints); adopt the newest readable one
   (only the master's sub-quantum residual and those rounds' momentum are lost) and build
   past any unreadable newer one.

The coordinator API used: ``template``, ``start``, ``restore``, ``catch_up``, ``version`` and
``published``. Nothing here talks to Dask.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cluster_app.errors import VersionNotFound

if TYPE_CHECKING:
    from cluster_app.recovery.checkpoint import Checkpointer, Restored
    from cluster_app.sync.coordinator import Coordinator
    from cluster_app.sync.store import ParamStore

__all__ = ["Resumed", "from_checkpoint", "from_store", "resume"]


class Resumed(NamedTuple):
    """Where a run starts: its first round, the path taken and the seconds it cost."""

    first_round: int
    path: str  # "store", "checkpoint" or "checkpoint+store"
    restore_seconds: float  # restoring a checkpoint (0.0 on the store path)
    downtime: float  # the downtime the checkpoint recorded (0.0 on the store path)


def resume(
    store: ParamStore, coordinator: Coordinator, checkpointer: Checkpointer, local_steps: int
) -> Resumed:
    """Start ``coordinator`` where the run left off (see the module docstring)."""
    params0, _ = store.read(0)
    t0 = time.perf_counter()
    restored = checkpointer.restore(
        coordinator.template(params0), validate=lambda s, m: disagreement(store, s, m)
    )
    if restored is None:
        return Resumed(from_store(store, coordinator), "store", 0.0, 0.0)
    first, path = from_checkpoint(store, coordinator, restored, local_steps)
    return Resumed(first, path, time.perf_counter() - t0, restored.meta.get("downtime", 0.0))


def disagreement(store: ParamStore, state: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """Why a restored checkpoint does not belong to ``store`` (None if it does): its
    published parameters must be the stored version it names, bit for bit."""
    try:
        stored, _ = store.read(meta["version"])
    except VersionNotFound:
        return f"version {meta['version']} is not in the store"
    for k, v in stored.items():
        if not np.array_equal(np.asarray(state["published"][k]), v):
            return f"published parameters differ from stored version {meta['version']}"
    return None


def from_store(store: ParamStore, coordinator: Coordinator) -> int:
    """Path 1: adopt the newest readable version; returns the first round to run."""
    params, rec, skipped = store.read_valid()
    coordinator.start(params, rec.version, skip_to=max(skipped, default=None))
    last = store.record(max(skipped)) if skipped else rec
    return last.meta.get("round", -1) + 1 if last.version > 0 else 0


def from_checkpoint(
    store: ParamStore, coordinator: Coordinator, restored: Restored, local_steps: int
) -> tuple[int, str]:
    """Paths 2 and 3: restore ``restored``, then catch up with any newer committed versions.

    Returns the first round to run and the path taken.
    """
    meta = restored.meta
    coordinator.restore(restored.state, meta)
    first = meta["round"] + 1
    latest = store.latest()
    if latest is None or latest <= coordinator.version:
        return first, "checkpoint"
    params, rec, skipped = store.read_valid()
    if rec.version > coordinator.version:  # committed after the checkpoint
        coordinator.catch_up(params, rec.version, local_steps)
        first = rec.meta.get("round", first - 1) + 1
    if skipped:  # a corrupted newest version: never overwrite it, build past it
        coordinator.start(coordinator.published, coordinator.version, skip_to=max(skipped))
        first = store.record(max(skipped)).meta.get("round", first - 1) + 1
    return first, "checkpoint+store"
