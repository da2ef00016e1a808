"""A chaos soak: keep killing workers during a durable run, then prove nothing was lost.

``cluster-app chaos --minutes N`` runs :func:`soak`: it submits a durable run, kills a random
worker every ``kill_every`` seconds (kill -9; the nanny restarts the process), sometimes the
one running the controller, once corrupts the newest checkpoint and then kills the controller
so that the resumption must fall back past it, and at the end reads back every committed
version. MTTR is measured from each kill to the first round that completed, after it, with the
fleet back at full strength (as many agents as before the kill, none dropped).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from cluster_app.errors import ClusterAppError
from cluster_app.sync.store import ParamStore
from cluster_app.testing.chaos import controller_worker, corrupt_latest_checkpoint, kill_worker

__all__ = ["mttrs", "soak", "verify_versions"]


def mttrs(kills: list[float], history: list[dict]) -> list[float | None]:
    """Seconds from each kill time to the first later round at full strength (None: never)."""
    out = []
    for t in kills:
        before = [h for h in history if h["ended"] <= t]
        strength = max((h["launched"] for h in before[-3:]), default=1)
        after = (
            h for h in history if h["ended"] > t and h["agents"] >= strength and not h["dropped"]
        )
        first = next(after, None)
        out.append(None if first is None else first["ended"] - t)
    return out


def verify_versions(run_url: str) -> tuple[int, list[int]]:
    """Read back every committed version; returns (how many, the unreadable ones)."""
    store = ParamStore(run_url)
    bad = []
    versions = store.versions()
    for v in versions:
        store._cache = None  # a cold read of each version, not the previous one's cache
        try:
            store.read(v)
        except ClusterAppError:
            bad.append(v)
    return len(versions), bad


def soak(
    ac,
    minutes: float,
    kill_every: float = 45.0,
    seed: int = 0,
    log: Callable[[str], None] = print,
    **run_kwargs,
) -> dict:
    """Run a durable training run for ``minutes`` under repeated worker kills; return figures."""
    rng = random.Random(seed)
    handle = ac.submit(rounds=10**9, max_seconds=minutes * 60.0, **run_kwargs)
    log(f"run {handle.run_id}: killing a worker every ~{kill_every:.0f}s for {minutes:g} min")
    t0 = time.time()
    next_kill = t0 + kill_every
    kills: list[dict] = []
    corrupted = False
    while handle.status().get("phase") not in ("finished", "stopped", "failed"):
        now = time.time()
        if now >= next_kill and now - t0 < minutes * 60.0 - 5:
            ctrl = controller_worker(ac.client, handle.run_id)
            ckpt_dir = f"{handle.run_url}/checkpoints"
            kind = "worker"
            if not corrupted and now - t0 > minutes * 30.0:
                try:
                    corrupt_latest_checkpoint(ckpt_dir)
                    corrupted, kind = True, "corrupt-checkpoint+controller"
                except FileNotFoundError:
                    pass
            if kind != "worker" or (ctrl is not None and rng.random() < 0.25):
                target = ctrl
                kind = kind if kind != "worker" else "controller"
            else:
                target = None
            try:
                addr = kill_worker(ac.client, target, rng=rng)
                kills.append({"time": time.time(), "worker": addr, "kind": kind})
                log(f"  t+{now - t0:5.0f}s  kill -9 {addr} ({kind})")
            except Exception as e:  # a worker vanishing mid-call is part of the game
                log(f"  t+{now - t0:5.0f}s  kill skipped: {e!r}")
            next_kill = now + kill_every * rng.uniform(0.7, 1.3)
        time.sleep(0.2)
    status = handle.status()
    history = handle.record.history()
    times = mttrs([k["time"] for k in kills], history)
    n_versions, unreadable = verify_versions(handle.run_url)
    return {
        "run_id": handle.run_id,
        "phase": status["phase"],
        "rounds": len(history),
        "version": status.get("version"),
        "kills": kills,
        "mttr_s": times,
        "goodput": status.get("goodput", {}),
        "versions": n_versions,
        "unreadable_versions": unreadable,
        "lost_workers": status.get("lost_workers"),
        "checkpoint_errors": status.get("checkpoint_errors", []),
    }
