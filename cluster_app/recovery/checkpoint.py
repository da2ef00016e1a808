"""Orbax checkpoints of a run's complete training state, with validated restore.

Each checkpoint (one Orbax step per round) holds two items:

- ``state``: the coordinator's pytrees: exact ``master`` parameters, ``published`` parameters
  (what agents reconstruct from the store) and the outer optimiser state;
- ``meta`` (JSON): round, version, steps since the last full snapshot, the run spec, pending
  deltas, and the data cursor / RNG seed (batches derive from ``(seed, round, shard)``, so the
  round number *is* the data cursor).

Saves are asynchronous (the round loop blocks only to snapshot host arrays) and the last
``keep`` are kept. A failed background save is raised on the next save or on :meth:`close`, and
recorded in :attr:`errors`; it is never silent. Orbax raises on a corrupted checkpoint and does
not fall back; :meth:`restore` tries steps newest first and returns the first that restores and
passes validation.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from cluster_app.errors import CorruptData

__all__ = ["Checkpointer", "Restored"]

logger = logging.getLogger(__name__)


class Restored(NamedTuple):
    """A checkpoint that restored and passed validation."""

    state: dict[str, Any]  # the pytrees saved, as numpy arrays
    meta: dict[str, Any]  # the JSON metadata saved beside them
    step: int  # its Orbax step (the run's round)
    skipped: list[int]  # newer steps that failed to restore or to validate


class Checkpointer:
    """An Orbax ``CheckpointManager`` for one run directory.

    Parameters
    ----------
    directory : str
        Absolute path (or an etils-supported URL) of the run's checkpoints.
    keep : int
        How many recent checkpoints to retain.
    """

    def __init__(self, directory: str, keep: int = 3) -> None:
        self.directory = directory
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, create=True
        )
        self.manager = ocp.CheckpointManager(
            directory, options=options, item_names=("state", "meta")
        )
        self.errors: list[str] = []
        self.unusable: list[int] = []
        self.blocking_seconds: list[float] = []

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def _check_background(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # the previous async save failed
            msg = f"background checkpoint save failed: {e!r}"
            logger.error(msg)
            self.errors.append(msg)

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> float:
        """Start an asynchronous save; returns the seconds the caller was blocked."""
        t0 = time.perf_counter()
        if self.manager.is_saving_in_progress():
            self._check_background()
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
        except Exception as e:
            msg = f"checkpoint save of step {step} failed: {e!r}"
            logger.error(msg)
            self.errors.append(msg)
        blocked = time.perf_counter() - t0
        self.blocking_seconds.append(blocked)
        return blocked

    def restore(self, template: dict[str, Any], validate=None) -> Restored | None:
        """The newest checkpoint that restores and passes ``validate(restored) -> str|None``.

        ``template`` is a pytree shaped like the saved ``state`` (arrays or shape/dtype
        structs). Returns None if there is no usable checkpoint (the steps that failed are
        left in :attr:`unusable`).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        skipped = []
        steps = self.steps()
        for step in reversed(steps):
            try:
                state, meta = self._load(step, abstract, validate)
            except Exception as e:
                logger.warning(
                    "checkpoint step %d of %s is unusable, falling back: %r",
                    step,
                    self.directory,
                    e,
                )
                skipped.append(step)
                continue
            return Restored(state=state, meta=meta, step=step, skipped=skipped)
        if steps:  # the caller falls back to the parameter store's newest readable version
            logger.error("no usable checkpoint in %s (tried %s)", self.directory, skipped)
        self.unusable = skipped
        return None

    def check(self, step: int, validate=None) -> str | None:
        """Why checkpoint ``step`` is unusable, or None if it restores (its arrays as saved: no
        template needed), holds only finite values and passes ``validate`` (as for
        :meth:`restore`): the check :meth:`restore` makes of each step, for one step."""
        try:
            self._load(step, None, validate)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    def _load(self, step: int, abstract: Any, validate) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore ``step`` (shaped like ``abstract``; None: as saved) and validate it; raises
        if it does not restore, holds non-finite values or ``validate`` names a reason."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        state, meta = out["state"], out["meta"]
        bad = _non_finite(state) or (validate(state, meta) if validate else None)
        if bad:
            raise CorruptData(bad)
        return state, meta

    def close(self) -> None:
        self._check_background()
        self.manager.close()


def _non_finite(state: Any) -> str | None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        a = np.asarray(leaf)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"non-finite values at {jax.tree_util.keystr(path)}"
    return None
