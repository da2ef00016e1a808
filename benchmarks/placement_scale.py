"""Placement decision cost at scale (S1): 8 to 1024 simulated workers, a queue of 10k tasks.

Drives the plugin's pure core (:class:`~cluster_app.placement.dispatch.Dispatcher` with the
default :class:`~cluster_app.placement.dispatch.ScorePolicy`, :class:`Fleet`, aging queue)
through a discrete-event simulation of a heterogeneous fleet: workers with 1, 2 or 4 threads,
speeds 1x / 1.5x / 3x, round trips of 1, 2 or 50 ms; two kinds of task (rounds of 1 s,
evaluations of 0.2 s) with priorities 0, 5 and 10, all 10k queued at t=0. Every completion
is reported to the dispatcher and followed by a dispatch pass, exactly as the plugin does on
the scheduler. Only the time spent inside the dispatcher is measured (wall clock), divided
by the number of placements it made; held-task evaluations are part of that cost.

    python benchmarks/placement_scale.py            # full run (3 repeats)
    python benchmarks/placement_scale.py --quick    # < 1 minute
    python benchmarks/placement_scale.py --out PATH # JSON path (PNG written beside it)
"""

from __future__ import annotations

import heapq
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, write_result

from cluster_app.placement.fleet import Fleet
from cluster_app.placement.queue import QueuedTask
from cluster_app.placement.settings import PlacementSettings

SIZES = (8, 64, 256, 1024)
KINDS = {"agent-round": 1.0, "agent-eval": 0.2}  # base seconds


def params(quick: bool) -> dict:
    return {
        "sizes": list(SIZES),
        "n_tasks": 2_000 if quick else 10_000,
        "repeats": 1 if quick else 3,
    }


def simulate(n_workers: int, n_tasks: int, seed: int) -> dict:
    """Run one simulated fleet to completion; return the dispatcher's cost figures."""
    rng = np.random.default_rng(seed)
    d = PlacementSettings().build()
    fleet: Fleet = d.fleet
    threads = rng.choice([1, 1, 2, 4], n_workers)
    for i in range(n_workers):
        fleet.add(f"tcp://10.{i // 250}.{i % 250}.1:8786", int(threads[i]))
    speed = rng.choice([1.0, 1.0, 1.5, 3.0], n_workers)
    rtt = rng.choice([0.001, 0.002, 0.05], n_workers)
    fleet.refresh(
        cpu=rng.random(n_workers) * 0.2,
        accel=np.zeros(n_workers),
        rtt=rtt,
        other=np.zeros(n_workers),
        eligible=np.ones(n_workers, bool),
    )
    for i in range(n_workers):  # what a short warm-up would have taught it
        for kind, base in KINDS.items():
            fleet.record_duration(i, kind, base * speed[i])
        fleet.record_overhead(i, rtt[i] + 0.004)
    kinds = list(KINDS)
    for j in range(n_tasks):
        d.submit(
            QueuedTask(
                key=j,
                priority=float(rng.choice([0, 0, 0, 5, 10])),
                kind=kinds[j % 2] if rng.random() < 0.5 else kinds[0],
                enqueued=0.0,
            )
        )
    # per worker: when each thread frees (simulated worker clock)
    free_at = [[0.0] * int(t) for t in threads]
    events: list[tuple[float, int, str, float]] = []  # (result time, key, addr, compute s)
    cost, placements, calls, worst = 0.0, 0, 0, 0.0

    def place(now: float) -> None:
        nonlocal cost, placements, calls, worst
        t0 = time.perf_counter()
        out = d.dispatch(now)
        dt = time.perf_counter() - t0
        cost, calls, worst = cost + dt, calls + 1, max(worst, dt)
        placements += len(out)
        for a in out:
            i = fleet.index[a.addr]
            compute = KINDS[a.task.kind] * speed[i] * rng.uniform(0.9, 1.1)
            threads_i = free_at[i]
            k = int(np.argmin(threads_i))
            start = max(now + rtt[i] / 2, threads_i[k])
            threads_i[k] = start + compute
            heapq.heappush(events, (start + compute + rtt[i] / 2, a.task.key, a.addr, compute))

    now = 0.0
    place(now)
    while events:
        now, key, _, compute = heapq.heappop(events)
        t0 = time.perf_counter()
        d.finished(key, compute, now)
        cost += time.perf_counter() - t0
        place(now)
    if placements != n_tasks or len(d.queue):
        raise RuntimeError(f"{n_workers} workers placed {placements} of {n_tasks} tasks")
    return {
        "ms_per_decision": cost / placements * 1e3,
        "max_pass_ms": worst * 1e3,
        "passes": calls,
        "holds": d.holds_total,
        "simulated_makespan_s": now,
    }


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) over log(x)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def plot(med: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(med)
    ys = [med[x] for x in xs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(xs, ys, "o-", label="ms per placement (median)")
    ax.loglog(xs, [ys[0] * x / xs[0] for x in xs], "--", color="gray", label="linear growth")
    ax.axhline(1.0, color="red", ls=":", label="target: 1 ms at 1024 workers")
    ax.set_xlabel("simulated workers")
    ax.set_ylabel("ms per placement decision")
    ax.set_title("placement decision cost, queue of 10k tasks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args("placement_scale", __doc__.splitlines()[0])
    p = params(args.quick)
    raw: dict[str, list[dict]] = {str(n): [] for n in p["sizes"]}
    for r in range(p["repeats"]):
        for n in p["sizes"]:
            raw[str(n)].append(simulate(n, p["n_tasks"], seed=r))
    med = {int(n): statistics.median(x["ms_per_decision"] for x in v) for n, v in raw.items()}
    worst = {int(n): max(x["max_pass_ms"] for x in v) for n, v in raw.items()}
    headline = {
        "ms_per_decision_1024": med[1024],
        "cost_growth_exponent": slope(list(med), list(med.values())),
        **{f"ms_per_decision_{n}": v for n, v in med.items() if n != 1024},
        "max_pass_ms_1024": worst[1024],
    }
    png = write_result(args.out, "placement_scale", args.quick, p, raw, headline)
    plot(med, Path(png))
    print_table(
        f"placement decision cost ({'quick' if args.quick else 'full'}), "
        f"queue of {p['n_tasks']} tasks",
        ["workers", "ms/decision (median)", "max pass ms", "holds (median)"],
        [
            [n, med[n], worst[n], statistics.median(x["holds"] for x in raw[str(n)])]
            for n in sorted(med)
        ],
    )
    print_table("headline", ["key", "value"], [[k, v] for k, v in headline.items()])


if __name__ == "__main__":
    main()
