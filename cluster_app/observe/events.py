"""The events our parts send to the scheduler, and how they are built (plain data; no Dask).

Each is a Dask structured event (``Client.log_event`` / ``Worker.log_event``): the scheduler keeps
the recent ones per topic (Dask's own ``/events`` page shows them), and every scheduler plugin
sees them, :class:`~cluster_app.observe.monitor.FleetMonitor` among them. Messages are
msgpack-able dicts of plain values.

===================  ==========================  =============================================
topic                sent by                     when
===================  ==========================  =============================================
``ROUND``            the run loop                a round's version is committed
``RUN``              the run loop                its status changes (each round, pause, end)
``CHECKPOINT``       the run loop                a checkpoint is saved (or fails)
``PUSH``             an agent's pusher thread    a compressed delta is written (or fails)
``SERVING``          the completion gateway      every canary check, and on rollback
``REF``              ``Versions``                a branch or tag moves
===================  ==========================  =============================================
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = [
    "CHECKPOINT",
    "PENDING_PUSHES",
    "PUSH",
    "REF",
    "ROUND",
    "RUN",
    "SERVING",
    "TOPICS",
    "finite",
]

ROUND = "cluster-app-round"
RUN = "cluster-app-run"
CHECKPOINT = "cluster-app-checkpoint"
PUSH = "cluster-app-push"
SERVING = "cluster-app-serving"
REF = "cluster-app-ref"
TOPICS = (ROUND, RUN, CHECKPOINT, PUSH, SERVING, REF)
# a worker metric (heartbeats): deltas its pusher has not written yet (scale-down waits for 0)
PENDING_PUSHES = "cluster_app_pushes_pending"


def finite(x: Any) -> float | None:
    """A float for a message (None for None, NaN and inf: msgpack and JSON both take it)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def round_event(run: str, rec: Any, results: list[Any], dense_bytes: int) -> dict[str, Any]:
    """A committed round: ``rec`` is its :class:`~cluster_app.runs.spec.RoundRecord`,
    ``results`` the agents' :class:`~cluster_app.agent.messages.RoundResult`;
    ``dense_bytes`` what the pushes would weigh uncompressed (float32)."""
    return {
        "run": run,
        "round": rec.round,
        "version": rec.version,
        "kind": rec.kind,
        "loss": finite(rec.loss),
        "heldout_loss": finite(rec.heldout_loss),
        "seconds": finite(rec.seconds),
        "push_bytes": int(rec.push_bytes),
        "pull_bytes": int(rec.pull_bytes),
        "dense_bytes": int(dense_bytes),
        "accepted": int(rec.accepted),
        "rejected": int(rec.rejected),
        "deferred": int(rec.deferred),
        "takeovers": len(rec.takeovers),
        "time": rec.ended or time.time(),
        "agents": [
            {
                "worker": x.worker,
                "steps": int(x.steps),
                "loss": finite(x.loss_last),
                "pull_seconds": finite(getattr(x, "pull_seconds", None)),
                "error": x.push.error,
            }
            for x in results
        ],
        "standby": list(rec.standby),
    }
