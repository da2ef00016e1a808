"""The dashboard page's cost on the scheduler's event loop against fleet size: 20, 200 and 2,000
**simulated** workers.

Simulated means: no Dask workers. The placement plugin's fleet is filled with ``n`` workers and
random signals (load, round trip), and the :class:`FleetMonitor` receives the structured events a
real fleet sends: four runs sharing the fleet (90% of the workers active, 5% standby), 30
committed rounds each, a push event per agent, a gateway report and a few branch moves. The page
object is the real one (:class:`~cluster_app.observe.dashboard.FleetPage`) in a Bokeh
``Document``, as a browser session holds it.

Per fleet size, medians over repeats of:

- ``update``: one page refresh after a new round event arrived (so the agents, runs, loss and
  sync sources really change), plus encoding every source's data with Bokeh's serializer (what
  the refresh sends is at most that);
- ``all_rows_update`` (the **baseline**, in the same run): the same page made to list every
  worker, as a per-worker table (Dask's own Workers page) does; its cost grows with the fleet;
- ``scrape``: one Prometheus scrape of our collector (``cluster_app_*`` series);
- ``event``: the monitor handling one round event of a run with ``0.9 n / 4`` agents (per event,
  not per refresh: it is O(agents in the round)).

Targets (issue 17): ``update_ms_2000`` < 5 ms, and no per-worker Python loop on a refresh, read
as ``update_growth_2000_vs_20`` <= 2.

    python benchmarks/dashboard.py [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bokeh.core.serialization import Serializer
from bokeh.document import Document
from bokeh.models import ColumnDataSource
from common import parse_args, print_table, write_result
from prometheus_client import CollectorRegistry, generate_latest

from cluster_app.observe import dashboard, events
from cluster_app.observe.monitor import FleetMonitor
from cluster_app.observe.prometheus import MonitorCollector, attach, detach
from cluster_app.placement.plugin import PLUGIN_NAME, PlacementPlugin
from cluster_app.placement.settings import PlacementSettings

RUNS = 4


def fleet(n: int, rng: np.random.Generator) -> tuple[FleetMonitor, types.SimpleNamespace]:
    plugin = PlacementPlugin(PlacementSettings.from_config())
    f = plugin.dispatcher.fleet
    addrs = [f"tcp://10.{i // 250}.{i % 250}.1:40000" for i in range(n)]
    for a in addrs:
        f.add(a, 1)
    f.refresh(
        cpu=rng.random(n),
        accel=np.zeros(n),
        rtt=rng.uniform(0.001, 0.05, n),
        other=np.zeros(n),
        eligible=np.ones(n, bool),
    )
    plugin._last_kind = "agent-round"
    scheduler = types.SimpleNamespace(plugins={PLUGIN_NAME: plugin}, workers={})
    monitor = FleetMonitor()
    monitor.scheduler = scheduler  # type: ignore[assignment]
    scheduler.plugins[monitor.name] = monitor
    for a in addrs:
        monitor.add_worker(scheduler, a)  # type: ignore[arg-type]
    return monitor, scheduler


def round_event(addrs: list[str], run: int, r: int, rng: np.random.Generator) -> dict:
    n = len(addrs)
    mine = addrs[run::RUNS]
    k = int(0.9 * len(mine))
    active, standby = mine[:k], mine[k : k + max(1, len(mine) // 20)]
    return {
        "run": f"run-{run}",
        "round": r,
        "version": r + 1,
        "loss": float(2.0 / (r + 1)),
        "heldout_loss": float(2.1 / (r + 1)) if r % 5 == 0 else None,
        "seconds": float(rng.uniform(5, 10)),
        "push_bytes": 200_000 * k,
        "pull_bytes": 150_000 * k,
        "dense_bytes": 1_000_000 * k,
        "accepted": k,
        "rejected": 0,
        "time": time.time(),
        "agents": [
            {"worker": a, "steps": 50, "loss": float(rng.uniform(0.1, 2)), "pull_seconds": 0.02}
            for a in active
        ],
        "standby": standby,
        "n": n,
    }


def fill(monitor: FleetMonitor, rng: np.random.Generator, rounds: int) -> None:
    addrs = list(monitor.agents.addrs)
    for r in range(rounds):
        for run in range(RUNS):
            monitor.log_event(events.ROUND, round_event(addrs, run, r, rng))
    for run in range(RUNS):
        monitor.log_event(
            events.RUN,
            {"run": f"run-{run}", "phase": "running", "goodput": 0.9, "standby_target": 2},
        )
        monitor.log_event(
            events.CHECKPOINT, {"run": f"run-{run}", "round": rounds - 1, "time": time.time()}
        )
    for a in addrs:
        monitor.log_event(events.PUSH, {"worker": a, "seconds": 0.03, "error": None})
    monitor.log_event(
        events.SERVING,
        {
            "name": "gw",
            "split": "s1",
            "state": "active",
            "time": time.time(),
            "arms": [
                {"ref": "prod", "weight": 0.9, "requests": 500, "p99_ms": 80.0},
                {"ref": "feature/x", "weight": 0.1, "requests": 50, "p99_ms": 90.0},
            ],
        },
    )
    for k in range(5):
        ref = {"kind": "branch", "name": f"b{k}", "commit": "c" * 64, "time": time.time()}
        monitor.log_event(events.REF, ref)


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _encode(page: dashboard.FleetPage) -> None:
    ser = Serializer()
    for value in vars(page).values():
        if isinstance(value, ColumnDataSource):
            ser.encode(dict(value.data))


def measure(n: int, repeats: int, rounds: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    monitor, scheduler = fleet(n, rng)
    fill(monitor, rng, rounds)
    addrs = list(monitor.agents.addrs)
    pages = {}
    for name, rows in (("update", dashboard.ROWS), ("all_rows_update", n)):
        page = dashboard.FleetPage(scheduler, rows=rows)  # type: ignore[arg-type]
        Document().add_root(page.root)
        pages[name] = (page, rows)
    out: dict[str, list[float]] = {
        "update_ms": [],
        "all_rows_update_ms": [],
        "event_ms": [],
        "scrape_ms": [],
    }
    registry = CollectorRegistry()
    registry.register(MonitorCollector())
    attach(monitor)
    try:
        for page, _ in pages.values():  # the first refresh builds what later ones reuse
            page.update()
        for i in range(repeats):
            ev = round_event(addrs, i % RUNS, rounds + i, rng)
            out["event_ms"].append(_ms(lambda ev=ev: monitor.log_event(events.ROUND, ev)))
            for name, (page, _) in pages.items():
                out[f"{name}_ms"].append(_ms(lambda page=page: (page.update(), _encode(page))))
            out["scrape_ms"].append(_ms(lambda: generate_latest(registry)))
    finally:
        detach(monitor)
    shown = len(pages["update"][0].agents.data["worker"])
    return {
        **out,
        "rows_shown": shown,
        "rows_all": len(pages["all_rows_update"][0].agents.data["worker"]),
    }


def plot(results: dict, sizes: list[int], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key, label, color in (
        ("update_ms", f"our page ({dashboard.ROWS} rows shown)", "C0"),
        ("all_rows_update_ms", "baseline: every worker listed", "C3"),
        ("scrape_ms", "Prometheus scrape", "C2"),
        ("event_ms", "one round event (per event)", "C7"),
    ):
        med = [np.median(results[str(n)][key]) for n in sizes]
        lo = [np.percentile(results[str(n)][key], 10) for n in sizes]
        hi = [np.percentile(results[str(n)][key], 90) for n in sizes]
        ax.plot(sizes, med, "o-", label=label, color=color)
        ax.fill_between(sizes, lo, hi, color=color, alpha=0.15)
    ax.axhline(5, ls="--", color="k", lw=1, label="target: 5 ms per refresh")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="simulated workers",
        ylabel="ms on the scheduler",
        title="Dashboard refresh cost vs fleet size (median, p10-p90)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args("dashboard", (__doc__ or "").splitlines()[0])
    sizes = [20, 200, 2000]
    repeats = 20 if args.quick else 100
    rounds = 5 if args.quick else 30
    results = {str(n): measure(n, repeats, rounds, seed=n) for n in sizes}
    med = lambda n, k: float(np.median(results[str(n)][k]))  # noqa: E731
    headline = {
        "update_ms_2000": med(2000, "update_ms"),
        "update_ms_20": med(20, "update_ms"),
        "update_growth_2000_vs_20": med(2000, "update_ms") / med(20, "update_ms"),
        "update_p90_ms_2000": float(np.percentile(results["2000"]["update_ms"], 90)),
        "all_rows_update_ms_2000": med(2000, "all_rows_update_ms"),
        "all_rows_growth_2000_vs_20": med(2000, "all_rows_update_ms")
        / med(20, "all_rows_update_ms"),
        "scrape_ms_2000": med(2000, "scrape_ms"),
        "scrape_growth_2000_vs_20": med(2000, "scrape_ms") / med(20, "scrape_ms"),
        "event_ms_2000": med(2000, "event_ms"),
        "update_target_met": med(2000, "update_ms") < 5.0,
    }
    params = {
        "sizes": sizes,
        "repeats": repeats,
        "rounds": rounds,
        "runs": RUNS,
        "rows_shown": dashboard.ROWS,
    }
    png = write_result(args.out, "dashboard", args.quick, params, results, headline)
    plot(results, sizes, png)
    print_table("dashboard headline", ["key", "value"], [[k, v] for k, v in headline.items()])


if __name__ == "__main__":
    main()
