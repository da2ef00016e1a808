"""The coordinator: folds agents' compressed deltas into new global versions.

Per round it waits for the agents' pushes to be sealed, validates each delta against the
version it was based on (pytree keys, shapes, dtype, finiteness), weights it by staleness, takes
one outer-optimiser step on the exact fp32 *master* parameters, and commits the result:

- normally as a compressed ``delta`` version: ``encode(master - published)``, where *published*
  is what agents reconstruct from the store (snapshot + decoded deltas). Encoding against the
  published parameters carries every quantisation error into the next delta (error feedback on
  the coordinator's side);
- every ``full_every`` local steps as a ``full`` fp32 snapshot of the published parameters,
  committed together with the round's compressed delta. Every agent reloads it and resets its
  residual; an agent that holds the previous version reads just the delta, and the version's
  digest proves it now holds the snapshot bit for bit. The master's sub-quantum residual
  (``master - published``) is not thrown away at a snapshot: error feedback sends it later;
- at the end of a run (``fold(..., final=True)`` or :meth:`finish`) as a full snapshot of the
  master itself, so the run's last version is the exact model the outer optimiser holds, with
  no residual left unsent. (It carries no delta: a lossy delta cannot reach it bit for bit.)

A push that is not sealed in time is carried to the next fold as a stale delta (weighted, or
rejected past ``max_staleness``). Every rejection is logged with its reason and counted; the
global model is never updated from a bad delta.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cluster_app.errors import CorruptData, StoreError
from cluster_app.sync.codecs import get_codec
from cluster_app.sync.outer import OuterOptimizer, OuterState, staleness_weight
from cluster_app.sync.push import Push
from cluster_app.sync.spec import SyncSpec
from cluster_app.sync.store import Commit, ParamStore
from cluster_app.sync.tree import digest

__all__ = ["Coordinator", "FoldStats", "validate_delta"]

logger = logging.getLogger(__name__)


@dataclass
class FoldStats:
    """What one fold did."""

    version: int
    kind: str
    accepted: int
    rejected: Counter = field(default_factory=Counter)
    deferred: int = 0
    push_bytes: int = 0  # the accepted pushes, as agents wrote them
    fold_bytes: int = 0  # what the coordinator read back: every push it opened
    commit_bytes: int = 0
    seconds: float = 0.0


def validate_delta(delta: dict[str, np.ndarray], like: dict[str, np.ndarray]) -> str | None:
    """Why ``delta`` cannot be applied to parameters shaped like ``like`` (None if it can)."""
    if delta.keys() != like.keys():
        return f"pytree keys differ: {sorted(set(delta) ^ set(like))[:3]}"
    for k, v in delta.items():
        if v.shape != like[k].shape:
            return f"leaf {k!r} has shape {v.shape}, expected {like[k].shape}"
        if v.dtype != np.float32:
            return f"leaf {k!r} has dtype {v.dtype}, expected float32"
        if not np.isfinite(v).all():
            return f"leaf {k!r} contains NaN or Inf"
    return None


class Coordinator:
    """Owns the global parameters of one run and commits each new version."""

    def __init__(self, store: ParamStore, spec: SyncSpec) -> None:
        self.store = store
        self.spec = spec
        self.codec = get_codec(spec.codec)
        self.outer = OuterOptimizer(spec.outer, spec.outer_learning_rate, spec.outer_momentum)
        # the global state, set by start() or restore(): the committed version, the exact
        # master parameters, what agents reconstruct (published) and the outer optimiser's
        self.version: int
        self.master: dict[str, np.ndarray]
        self.published: dict[str, np.ndarray]
        self.outer_state: OuterState
        self.steps_since_full = 0
        self.pending: list[Push] = []  # pushes not yet sealed, retried at the next fold
        self._next: int | None = None  # the next version number, when it is not version + 1
        self.rejected: Counter = Counter()

    def start(
        self, params: dict[str, np.ndarray], version: int, skip_to: int | None = None
    ) -> None:
        """Adopt committed ``version`` (whose parameters are ``params``) as the starting point.

        ``skip_to``: the newest version number in the store when it is newer than ``version``
        but unreadable (corrupted); the next commit takes the number after it, with
        ``version`` as its parent, so nothing committed is ever overwritten.
        """
        self.version = version
        self._next = None if skip_to is None or skip_to <= version else skip_to + 1
        self.master = {k: v.copy() for k, v in params.items()}
        self.published = {k: v.copy() for k, v in params.items()}
        self.outer_state = self.outer.init(params)

    def checkpoint(self) -> tuple[dict, dict]:
        """``(state, meta)`` to checkpoint: pytrees for Orbax and JSON-able counters."""
        state = {
            "master": self.master,
            "published": self.published,
            "outer": self.outer_state.opt_state,
        }
        meta = {
            "version": self.version,
            "steps_since_full": self.steps_since_full,
            "outer_step": self.outer_state.step,
            "pending": [p.as_dict() for p in self.pending],
            "rejected": dict(self.rejected),
        }
        return state, meta

    def template(self, params: dict[str, np.ndarray]) -> dict:
        """A pytree shaped like :meth:`checkpoint`'s state, for restoring."""
        return {"master": params, "published": params, "outer": self.outer.init(params).opt_state}

    def restore(self, state: dict, meta: dict) -> None:
        """Resume from a checkpoint taken by :meth:`checkpoint`."""
        self.master = {k: np.asarray(v, np.float32) for k, v in state["master"].items()}
        self.published = {k: np.asarray(v, np.float32) for k, v in state["published"].items()}
        self.outer_state = OuterState(meta["outer_step"], state["outer"])
        self.version = meta["version"]
        self.steps_since_full = meta["steps_since_full"]
        self.pending = [Push.from_dict(p) for p in meta.get("pending", [])]
        self.rejected = Counter(meta.get("rejected", {}))

    def catch_up(self, params: dict[str, np.ndarray], version: int, local_steps: int) -> None:
        """Adopt a committed ``version`` newer than the checkpoint (committed before a crash),
        each version since it ``local_steps`` of training: committed versions are never
        rewritten; only the master's sub-quantum residual and the momentum of those rounds
        are lost."""
        self.steps_since_full += local_steps * (version - self.version)
        self.master = {k: v.copy() for k, v in params.items()}
        self.published = {k: v.copy() for k, v in params.items()}
        self.version = version

    def _reject(self, push: Push, reason: str, stats: FoldStats) -> None:
        logger.warning(
            "rejected delta %s from %s (round %s): %s", push.delta, push.worker, push.round, reason
        )
        key = reason.split(":")[0] if ":" in reason else reason
        stats.rejected[key] += 1
        self.rejected[key] += 1

    def fold(
        self,
        pushes: list[Push],
        local_steps: int,
        meta: dict | None = None,
        final: bool = False,
    ) -> FoldStats:
        """Fold the round's pushes (and those still pending) into the next version;
        ``final``: the run's last round, committed as an exact snapshot of the master."""
        t0 = time.perf_counter()
        stats = FoldStats(version=self._next_version(), kind="delta", accepted=0)
        deltas, weights = [], []
        todo, self.pending = self.pending + list(pushes), []
        deadline = time.monotonic() + self.spec.push_timeout
        read_before = self.store.bytes_read
        for push in todo:
            if push.delta is None:
                self._reject(push, f"invalid: {push.error or 'no delta'}", stats)
                continue
            w = staleness_weight(self.version - push.base_version, self.spec.max_staleness)
            if w == 0.0:
                self._reject(
                    push, f"stale: based on {push.base_version}, now {self.version}", stats
                )
                continue
            try:
                seal = self.store.objects.wait_sealed(
                    push.delta, max(0.0, deadline - time.monotonic()) or 0.001
                )
            except StoreError:
                self.pending.append(push)  # still being written: use it next round
                stats.deferred += 1
                continue
            try:
                delta = self.store.get_object(push.delta)
            except CorruptData as e:
                self._reject(push, f"corrupt: {e}", stats)
                continue
            reason = validate_delta(delta, self.master)
            if reason:
                self._reject(push, f"invalid: {reason}", stats)
                continue
            stats.push_bytes += int(seal["nbytes"])
            deltas.append(delta)
            weights.append(w)
        stats.accepted = len(deltas)
        stats.fold_bytes = self.store.bytes_read - read_before
        self.master, self.outer_state = self.outer.apply(
            self.master, deltas, weights, self.outer_state
        )
        self.steps_since_full += local_steps
        written_before = self.store.bytes_written
        rec = self._commit(
            dict(meta or {}, accepted=len(deltas), rejected=sum(stats.rejected.values())), final
        )
        # the version's objects (snapshot and delta) and its commit record
        stats.kind, stats.commit_bytes = rec.kind, self.store.bytes_written - written_before
        for push in todo:
            if push not in self.pending and push.delta:
                self._discard(push.delta)
        stats.seconds = time.perf_counter() - t0
        return stats

    def _next_version(self) -> int:
        return self._next if self._next is not None else self.version + 1

    def unpublished(self) -> bool:
        """Whether the master differs from the last committed (published) parameters."""
        return any(not np.array_equal(m, self.published[k]) for k, m in self.master.items())

    def finish(self, meta: dict | None = None) -> Commit | None:
        """End a run that stopped before a final fold: commit the master as a full snapshot if
        any of it is unpublished (a sub-quantum residual); None if the store has it already."""
        return self._commit(dict(meta or {}), final=True) if self.unpublished() else None

    def _commit(self, meta: dict, final: bool = False) -> Commit:
        version = self._next_version()
        self._next = None
        if final:
            rec = self.store.commit_full(
                self.master, version, parent=self.version, meta={**meta, "final": True}
            )
            self.published = {k: v.copy() for k, v in self.master.items()}
        else:
            rec = self._publish(version, meta)
        if rec.kind == "full":
            self.steps_since_full = 0
        self.version = version
        return rec

    def _publish(self, version: int, meta: dict) -> Commit:
        """Commit ``encode(master - published)``: a delta version or, every ``full_every``
        local steps, a snapshot of the published parameters that carries it."""
        enc = {}
        for k, m in self.master.items():
            enc[k], _ = self.codec.encode(m - self.published[k])
            self.published[k] = self.published[k] + self.codec.decode(enc[k])
        if self.steps_since_full >= self.spec.full_every:
            # the snapshot is the published version itself, so an agent holding the parent
            # reaches it through the small delta; the master's sub-quantum residual carries on
            return self.store.commit_full(
                self.published,
                version,
                parent=self.version,
                meta=meta,
                delta=enc,
                delta_codec=self.codec.name,
            )
        return self.store.commit_delta(
            enc,
            version,
            parent=self.version,
            params_digest=digest(self.published),
            codec=self.codec.name,
            meta=meta,
        )

    def _discard(self, name: str) -> None:
        # already gone or never written: nothing to clean
        with contextlib.suppress(StoreError, FileNotFoundError):
            self.store.delete_object(name)
