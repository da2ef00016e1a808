"""The scaling hooks' scheduler-side cost from 8 to 1,024 **simulated** workers (issue 18, item 5).

Simulated means: no Dask workers and no scheduler process. A stand-in scheduler holds ``n``
worker states (heartbeat metrics, processing sets) and task-prefix counters the way Dask's do;
our real plugins run on it: the :class:`FleetMonitor` (fed one committed round of four runs
sharing the fleet), the :class:`PlacementPlugin` and the :class:`ScalingPlugin`. Per size,
medians over repeats of:

- ``decision``: one ``adaptive_target()`` call (what ``cluster.adapt()`` and the operator ask
  every interval): reads the prefix counters and the monitor's runs, O(prefixes + runs);
- ``downscale``: one ``valid_workers_downscaling`` over every worker as a candidate (Dask
  offers a short list; this is the worst case), O(workers);
- ``refresh``: one placement refresh, which copies every worker's heartbeat metrics into the
  fleet's arrays (the per-heartbeat work our plugins add), O(workers); reported per worker too.

Reported: each cost at 8 and 1,024 workers, and its growth 1,024 vs 8 against the fleet's
growth (128x): a hook that grows no faster than the fleet scales linearly.

    python benchmarks/scaling_sim.py [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, timed_ms, write_result

from cluster_app.observe import events
from cluster_app.observe.monitor import FleetMonitor
from cluster_app.placement.plugin import PlacementPlugin
from cluster_app.placement.settings import PlacementSettings
from cluster_app.scaling.plugin import ScalingPlugin

RUNS = 4


class _Task:  # a task state as the hooks read it (hashable by identity, as Dask's are)
    def __init__(self, key: str) -> None:
        self.key = key


class _Worker:  # a worker state as the hooks read it
    def __init__(self, addr: str, busy: bool, cpu: float) -> None:
        self.address, self.nthreads = addr, 1
        self.processing = {_Task(f"agent-round-{addr}")} if busy else set()
        self.long_running: set = set()
        self.metrics = {"cpu": cpu, "cluster_app_pushes_pending": 0}


def scheduler(n: int, rng: np.random.Generator) -> types.SimpleNamespace:
    workers = {}
    for i in range(n):
        addr = f"tcp://10.{i // 250}.{i % 250}.1:40000"
        workers[addr] = _Worker(addr, busy=bool(i % 3), cpu=float(rng.uniform(0, 100)))

    def prefix(seconds: float, **states: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(states=states, duration_average=seconds)

    prefixes = {  # as Dask keeps them: counts by state, and the mean duration seen
        "agent-round-run": prefix(8.0, processing=n // 2, **{"no-worker": 0}),
        "agent-evaluate": prefix(0.5, processing=3, **{"no-worker": 12}),
        "agent-serve": prefix(0.05, processing=2, queued=5),
        "sleep": prefix(1.0, processing=10),
    }
    return types.SimpleNamespace(
        workers=workers,
        running=set(workers.values()),
        task_prefixes=prefixes,
        plugins={},
        handlers={},
    )


def plugins(s: types.SimpleNamespace, rng: np.random.Generator):
    monitor, placement, scaling = (
        FleetMonitor(),
        PlacementPlugin(PlacementSettings()),
        ScalingPlugin(),
    )
    for p in (monitor, placement, scaling):
        p.scheduler = s  # type: ignore[assignment]
        s.plugins[p.name] = p
    addrs = list(s.workers)
    for a in addrs:
        monitor.add_worker(s, a)  # type: ignore[arg-type]
    for run in range(RUNS):
        mine = addrs[run::RUNS]
        k = max(1, int(0.9 * len(mine)))
        monitor.log_event(
            events.ROUND,
            {
                "run": f"run-{run}",
                "round": 0,
                "version": 1,
                "time": time.time(),
                "agents": [{"worker": a, "steps": 10, "loss": 1.0} for a in mine[:k]],
                "standby": mine[k : k + 1],
            },
        )
        monitor.log_event(
            events.RUN, {"run": f"run-{run}", "phase": "running", "standby_target": 1}
        )
    return monitor, placement, scaling


def measure(n: int, repeats: int) -> dict:
    rng = np.random.default_rng(n)
    s = scheduler(n, rng)
    _, placement, scaling = plugins(s, rng)
    placement._request_pass = lambda: None  # no event loop here: measure the refresh alone
    candidates = list(s.workers.values())
    placement._refresh()  # the fleet learns its workers once, as at start
    target = scaling.adaptive_target()
    return {
        "decision_ms": timed_ms(scaling.adaptive_target, repeats),
        "downscale_ms": timed_ms(lambda: scaling.valid_workers_downscaling(s, candidates), repeats),  # type: ignore[arg-type]
        "refresh_ms": timed_ms(placement._refresh, repeats),
        "target": target,
        "retirable": len(scaling.valid_workers_downscaling(s, candidates)),  # type: ignore[arg-type]
    }


def plot(results: dict, sizes: list[int], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key, label in (
        ("decision_ms", "adaptive_target() (per decision)"),
        ("downscale_ms", "valid_workers_downscaling (all workers as candidates)"),
        ("refresh_ms", "placement refresh (every worker's heartbeat metrics)"),
    ):
        ax.plot(sizes, [np.median(results[str(n)][key]) for n in sizes], "o-", label=label)
    base = np.median(results[str(sizes[0])]["refresh_ms"])
    ax.plot(sizes, [base * n / sizes[0] for n in sizes], "k:", lw=1, label="linear in workers")
    ax.set(xscale="log", yscale="log", xlabel="simulated workers", ylabel="ms (median)",
           title="Scaling hooks on the scheduler vs fleet size")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args("scaling_sim", (__doc__ or "").splitlines()[0])
    sizes = [8, 32, 128, 512, 1024]
    repeats = 30 if args.quick else 200
    results = {str(n): measure(n, repeats) for n in sizes}
    med = lambda n, k: float(np.median(results[str(n)][k]))  # noqa: E731
    headline = {
        "decision_ms_8": med(8, "decision_ms"),
        "decision_ms_1024": med(1024, "decision_ms"),
        "decision_growth_1024_vs_8": med(1024, "decision_ms") / med(8, "decision_ms"),
        "downscale_ms_1024": med(1024, "downscale_ms"),
        "downscale_growth_1024_vs_8": med(1024, "downscale_ms") / med(8, "downscale_ms"),
        "refresh_ms_1024": med(1024, "refresh_ms"),
        "refresh_us_per_worker_1024": med(1024, "refresh_ms") * 1e3 / 1024,
        "refresh_growth_1024_vs_8": med(1024, "refresh_ms") / med(8, "refresh_ms"),
        "fleet_growth_1024_vs_8": 128.0,
    }
    png = write_result(
        args.out, "scaling_sim", args.quick, {"sizes": sizes, "repeats": repeats}, results, headline
    )
    plot(results, sizes, png)
    print_table("scaling_sim headline", ["key", "value"], [[k, v] for k, v in headline.items()])


if __name__ == "__main__":
    main()
