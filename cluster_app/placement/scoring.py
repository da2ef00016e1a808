"""The placement score: one pure function, vectorised over workers (numpy only).

The source document scores a node as ``0.6 (1 - load) + 0.3 (1 - latency) + 0.1 priority``.
This module keeps that shape with configurable :class:`Weights` and defines every signal so
that it is measured, normalised to ``[0, 1]`` and comparable across a heterogeneous fleet:

``load``
    ``u = max(cpu, accel, (busy + 1) / slots)`` is the worker's utilisation *if this task
    were placed on it*: CPU utilisation, accelerator utilisation (0 where there is none) and
    the fraction of agent slots that would be busy, counting tasks already assigned to it in
    the same batch (the *projected* load, fix 2: without it every task of a batch sees the
    same stale load and herds onto one node). ``u`` is scaled by the worker's measured
    slowness ``s`` (its recent durations for this kind of task over the fleet median for that
    kind, 1 = median) so that a slow machine looks more loaded than a fast one at the same
    utilisation, and ``x = u * s``, which is unbounded, is mapped onto ``[0, 1)`` by
    ``x / (1 + x)``: monotone, free of a fleet-dependent reference, and equal to 0.5 for a
    median machine about to fill its last slot.
``latency``
    ``min(1, rtt / latency_ref)``: the worker's measured round trip to the scheduler over a
    configurable reference (a worker at or beyond the reference scores 1).
``priority``
    The source formula adds ``w_p * priority`` to every node's score for a given task, a
    constant that can never change which node wins (flaw 1). Priority therefore orders the
    *queue* (see :mod:`cluster_app.placement.queue`); here it only enters
    :func:`score` when a caller asks for the source document's value (``priority=``), which
    the naive baseline does and reports.

The score is higher-is-better; :func:`placement_key` turns it into an ascending sort key with
a deterministic tie-break, and :func:`best` picks the winner among eligible workers in O(n).
Nothing here imports Dask or JAX: the scheduler plugin snapshots state into arrays and calls
these functions.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cluster_app.errors import SpecError

__all__ = ["Signals", "Weights", "best", "latency", "load", "placement_key", "score"]

# scores closer than this are ties; without it float noise would decide them
_TIE_DECIMALS = 12


class Weights(NamedTuple):
    """Weights of the three terms of the source formula (default 0.6 / 0.3 / 0.1)."""

    load: float = 0.6
    latency: float = 0.3
    priority: float = 0.1

    def validated(self) -> Weights:
        """Return self, or raise ``ValueError`` naming the bad weight."""
        for name, value in self._asdict().items():
            if not (np.isfinite(value) and value >= 0):
                raise SpecError(f"placement weight {name}={value!r} must be finite and >= 0")
        if self.load + self.latency <= 0:
            raise SpecError(
                f"placement weights load={self.load} and latency={self.latency} are both 0; "
                "at least one must be positive or every worker scores the same"
            )
        return self


class Signals(NamedTuple):
    """Per-worker signals, one array element per worker (all arrays the same length).

    Attributes
    ----------
    cpu : ndarray of float
        CPU utilisation in [0, 1] (values outside are clipped).
    accel : ndarray of float
        Accelerator utilisation in [0, 1]; 0 where the worker has none.
    busy : ndarray of float
        Agent slots in use, including tasks already assigned in this batch (projected).
    slots : ndarray of float
        Agent slots of the worker (>= 1).
    slowness : ndarray of float
        Recent duration for this kind of task over the fleet median for that kind (> 0;
        1 where unknown).
    rtt : ndarray of float
        Measured round trip to the scheduler, seconds (>= 0).
    tiebreak : ndarray of int
        Distinct per worker; among equal scores the lowest wins.
    """

    cpu: np.ndarray
    accel: np.ndarray
    busy: np.ndarray
    slots: np.ndarray
    slowness: np.ndarray
    rtt: np.ndarray
    tiebreak: np.ndarray


def load(sig: Signals, *, include_task: bool = True) -> np.ndarray:
    """The load term in [0, 1): ``x / (1 + x)`` with ``x = max(cpu, accel, busy') * slowness``.

    ``busy' = (busy + 1) / slots`` when ``include_task`` (the utilisation this task would
    cause), else ``busy / slots`` (the current utilisation, as the source document reads it).
    """
    slots = np.maximum(sig.slots, 1.0)
    occupied = (sig.busy + (1.0 if include_task else 0.0)) / slots
    u = np.clip(np.maximum(np.maximum(sig.cpu, sig.accel), occupied), 0.0, 1.0)
    x = u * np.maximum(sig.slowness, 0.0)
    return x / (1.0 + x)


def latency(sig: Signals, latency_ref: float) -> np.ndarray:
    """The latency term in [0, 1]: ``min(1, rtt / latency_ref)``."""
    if not latency_ref > 0:
        raise SpecError(f"latency_ref={latency_ref!r} must be > 0 seconds")
    return np.clip(sig.rtt / latency_ref, 0.0, 1.0)


def score(
    sig: Signals,
    weights: Weights,
    *,
    latency_ref: float,
    include_task: bool = True,
    priority: float | None = None,
) -> np.ndarray:
    """Score every worker for one task (higher is better).

    Parameters
    ----------
    sig : Signals
        The workers' signals; ``busy`` must already count tasks assigned earlier in the same
        batch (the caller's projected load).
    weights : Weights
    latency_ref : float
        Round trip (seconds) that maps to latency 1.
    include_task : bool
        Count the task being placed in the utilisation (default). ``False`` reproduces the
        source document's reading of load.
    priority : float, optional
        If given, add the source document's ``weights.priority * priority`` term. It is the
        same for every worker and never changes the ranking; it exists so the naive
        baseline can report the document's score.

    Returns
    -------
    ndarray of float
        ``w_load * (1 - load) + w_latency * (1 - latency) [+ w_priority * priority]``.
    """
    s = weights.load * (1.0 - load(sig, include_task=include_task))
    s = s + weights.latency * (1.0 - latency(sig, latency_ref))
    if priority is not None:
        s = s + weights.priority * float(priority)
    return s


def placement_key(scores: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """An ascending sort key: ``np.sort(key)`` / ``np.argsort(key)`` put the best worker first.

    A structured array with fields ``neg_score`` (the score negated and rounded, so float
    noise cannot break ties) and ``tiebreak``; numpy sorts structured arrays field by field.
    """
    key = np.empty(len(scores), dtype=[("neg_score", "f8"), ("tiebreak", "i8")])
    key["neg_score"] = -np.round(scores, _TIE_DECIMALS)
    key["tiebreak"] = tiebreak
    return key


def best(scores: np.ndarray, tiebreak: np.ndarray, eligible: np.ndarray | None = None) -> int:
    """Index of the best eligible worker under :func:`placement_key`'s order, or -1 if none.

    O(n) (no sort), which is what keeps a decision cheap at a thousand workers.
    """
    s = np.round(scores, _TIE_DECIMALS)
    if eligible is not None:
        if not eligible.any():
            return -1
        s = np.where(eligible, s, -np.inf)
    elif len(s) == 0:
        return -1
    top = np.flatnonzero(s == s.max())
    return int(top[np.argmin(tiebreak[top])]) if len(top) > 1 else int(top[0])
