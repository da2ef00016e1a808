"""Placement benchmark (S4): plain Dask vs the source document's pseudo-code vs our plugin.

One heterogeneous local cluster (worker processes, one thread each): two normal workers, one
3x slower (its tasks sleep 3x longer) and one 25 ms away from the scheduler each way (every
message and RPC is delayed; see ``cluster_app.testing.emulate``). On it, per repeat and per
mode (the modes take turns, so drift in the shared machine's load hits all of them alike):

* **mixed workload**: a batch of low-priority tasks submitted at once, and a stream of
  high-priority tasks (``priority=10``) submitted at a fixed interval while the batch runs.
  Reported: makespan (first submit to last result) and the completion latency (submit to
  result at the client) of the high-priority tasks, p50 / p95.
* **overhead**: ``--tiny`` no-op tasks on a separate *homogeneous* two-worker cluster, plain
  Dask vs our plugin: wall time per task (``overhead_ratio_vs_dask``; our plugin lets a worker
  hold more tasks ahead than Dask's default does, so this ratio mixes the scheduler's cost with
  the depth of prefetch).
* **scheduler cost**: the same no-op tasks on a scheduler in its own process (``dask
  scheduler``, two one-thread ``dask worker`` processes, every worker saturated in both modes):
  the scheduler process's CPU time (user + system, from ``psutil``) per task, plain Dask vs our
  plugin (``scheduler_cpu_ratio_vs_dask``, target <= 1.2).

Modes: ``dask`` (no plugin), ``naive`` (:class:`DocumentPlacementPlugin`: the document's
formula on task arrival, stale load, constant priority term) and ``ours``
(:class:`PlacementPlugin` with default settings). Each mode is registered fresh for its
turn, after a short identical warm-up, and unregistered afterwards.

    python benchmarks/placement.py            # full run
    python benchmarks/placement.py --quick    # < 1 minute
    python benchmarks/placement.py --out PATH # JSON path (PNG written beside it)
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import cast

import numpy as np
import psutil
from distributed import Client, LocalCluster, wait

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, write_result

from cluster_app.placement import PlacementPlugin, RttProbe
from cluster_app.testing.emulate import Handicap, noop, work
from cluster_app.testing.naive import DocumentPlacementPlugin

MODES = ("dask", "naive", "ours")
COLORS = {"dask": "C0", "naive": "C1", "ours": "C2"}


def params(quick: bool) -> dict:
    p = {
        "workers": 4,
        "profiles": {"2": [3.0, 0.0], "3": [1.0, 0.025]},  # name: [slowdown, one-way delay s]
        "n_low": 300,
        "low_seconds": 0.02,
        "n_high": 40,
        "high_seconds": 0.01,
        "high_priority": 10,
        "high_interval": 0.05,
        "repeats": 5,
        "n_tiny": 10_000,
        "tiny_repeats": 3,
        "warmup_tasks": 16,
    }
    if quick:
        # (3 repeats of 24 high-priority tasks: with one repeat of 12, the p95 was one task's
        # latency, and a test run saw plain Dask's 20% below ours once)
        p.update(n_low=100, n_high=24, repeats=3, n_tiny=1_000, tiny_repeats=1)
    return p


def switch(client: Client, mode: str, prev: str | None) -> None:
    """Unregister the previous mode's plugin and register this mode's (fresh) one."""
    names = {"naive": DocumentPlacementPlugin.name, "ours": PlacementPlugin.name}
    if prev in names:
        client.unregister_scheduler_plugin(names[prev])
        time.sleep(0.3)  # the plugin notices on its next refresh and hands back its tasks
    if mode == "naive":
        client.register_plugin(DocumentPlacementPlugin())
    elif mode == "ours":
        client.register_plugin(PlacementPlugin())


def turns(client: Client, repeats: int):
    """``(repeat, mode)`` for plain Dask and ours taking turns (who goes first alternates),
    each mode's plugin switched in before it is yielded."""
    prev = None
    for r in range(repeats):
        for mode in ("dask", "ours") if r % 2 == 0 else ("ours", "dask"):
            switch(client, mode, prev)
            prev = mode
            yield r, mode


def warm_up(client: Client, p: dict, tag: str) -> None:
    """The same short warm-up for every mode (lets each learn durations and round trips)."""
    n = p["warmup_tasks"]
    futs = client.map(
        work, [p["low_seconds"]] * n, key=[f"agent-low-{tag}-{i}" for i in range(n)]
    ) + client.map(work, [p["high_seconds"]] * n, key=[f"agent-high-{tag}-{i}" for i in range(n)])
    wait(futs)
    time.sleep(0.6)  # a heartbeat and a refresh, so every mode starts from current metrics


def run_mixed(client: Client, p: dict, tag: str) -> dict:
    done: dict[str, float] = {}
    lock = threading.Lock()

    def finished(fut) -> None:
        t = time.perf_counter()
        with lock:
            done[fut.key] = t

    t0 = time.perf_counter()
    low = client.map(
        work,
        [p["low_seconds"]] * p["n_low"],
        key=[f"agent-low-{tag}-{i}" for i in range(p["n_low"])],
        priority=0,
    )
    for f in low:
        f.add_done_callback(finished)
    high, submitted = [], {}
    for i in range(p["n_high"]):
        time.sleep(p["high_interval"])
        key = f"agent-high-{tag}-{i}"
        submitted[key] = time.perf_counter()
        f = client.submit(work, p["high_seconds"], key=key, priority=p["high_priority"])
        f.add_done_callback(finished)
        high.append(f)
    wait(low + high)
    deadline = time.perf_counter() + 5
    while len(done) < len(low) + len(high) and time.perf_counter() < deadline:
        time.sleep(0.01)  # the last callbacks may still be on their way
    errors = [f.key for f in low + high if f.status != "finished"]
    if errors:
        raise RuntimeError(f"{len(errors)} tasks did not finish, e.g. {errors[:3]}")
    lat = np.array([done[k] - submitted[k] for k in submitted])
    out = {
        "makespan_s": max(done.values()) - t0,
        "high_p50_s": float(np.percentile(lat, 50)),
        "high_p95_s": float(np.percentile(lat, 95)),
    }
    client.cancel(low + high)
    return out


def run_tiny(client: Client, n: int, tag: str) -> float:
    t0 = time.perf_counter()
    futs = client.map(noop, range(n), key=[f"agent-tiny-{tag}-{i}" for i in range(n)])
    wait(futs)
    per_task = (time.perf_counter() - t0) / n
    failed = [f for f in futs if f.status != "finished"]
    if failed:  # a task that errs costs the scheduler less than one that runs: never count it
        raise RuntimeError(f"{len(failed)} of {n} no-op tasks did not finish") from cast(
            BaseException, failed[0].exception()
        )
    client.cancel(futs)
    return per_task


def lower_bound(p: dict) -> float:
    """Makespan if the work were spread perfectly by speed (latency fully hidden)."""
    speeds = [1 / p["profiles"].get(str(i), [1.0, 0.0])[0] for i in range(p["workers"])]
    work_s = p["n_low"] * p["low_seconds"] + p["n_high"] * p["high_seconds"]
    return work_s / sum(speeds)


def cluster(n: int, profiles: dict | None) -> tuple[LocalCluster, Client]:
    lc = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        memory_limit="1GiB",
        env={"JAX_PLATFORMS": "cpu"},
    )
    client = Client(lc)
    client.register_plugin(RttProbe())
    if profiles:
        client.register_plugin(Handicap({k: tuple(v) for k, v in profiles.items()}))
    return lc, client


def measure(p: dict) -> dict:
    mixed: dict[str, list[dict]] = {m: [] for m in MODES}
    lc, client = cluster(p["workers"], p["profiles"])
    try:
        prev = None
        for r in range(p["repeats"]):
            for j in range(len(MODES)):
                mode = MODES[(r + j) % len(MODES)]  # rotate who goes first
                switch(client, mode, prev)
                prev = mode
                warm_up(client, p, f"{r}{j}w")
                mixed[mode].append(run_mixed(client, p, f"{r}{j}"))
                print(f"repeat {r} {mode:5s} {mixed[mode][-1]}", file=sys.stderr)
    finally:
        client.close()
        lc.close()
    tiny: dict[str, list[float]] = {"dask": [], "ours": []}
    lc, client = cluster(2, None)
    try:
        for r, mode in turns(client, p["tiny_repeats"]):
            run_tiny(client, 200, f"{r}w")
            tiny[mode].append(run_tiny(client, p["n_tiny"], str(r)))
            print(f"tiny {r} {mode:5s} {tiny[mode][-1] * 1e3:.3f} ms/task", file=sys.stderr)
    finally:
        client.close()
        lc.close()
    return {"mixed": mixed, "tiny_s_per_task": tiny, "scheduler_cpu_s_per_task": scheduler_cpu(p)}


@contextlib.contextmanager
def separate_scheduler():
    """A ``dask scheduler`` process and two one-thread ``dask worker`` processes; yields
    ``(client, scheduler process)``."""
    dask_bin = os.path.join(os.path.dirname(sys.executable), "dask")
    tmp = tempfile.mkdtemp(prefix="bench-placement-")
    sfile = os.path.join(tmp, "scheduler.json")
    opts = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    procs = [
        subprocess.Popen(
            [
                dask_bin,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--scheduler-file",
                sfile,
            ],
            **opts,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sfile):
            if time.monotonic() > deadline:
                raise RuntimeError("the scheduler did not start")
            time.sleep(0.1)
        procs.append(
            subprocess.Popen(
                [
                    dask_bin,
                    "worker",
                    "--scheduler-file",
                    sfile,
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--memory-limit",
                    "1GiB",
                ],
                env={**os.environ, "JAX_PLATFORMS": "cpu"},
                **opts,
            )
        )
        with Client(scheduler_file=sfile) as client:
            client.wait_for_workers(2, timeout=60)
            client.register_plugin(RttProbe())
            yield client, psutil.Process(procs[0].pid)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def scheduler_cpu(p: dict) -> dict[str, list[float]]:
    """Scheduler CPU seconds per no-op task, plain Dask vs ours, modes taking turns."""
    out: dict[str, list[float]] = {"dask": [], "ours": []}
    with separate_scheduler() as (client, sched):
        for r, mode in turns(client, p["tiny_repeats"]):
            run_tiny(client, 200, f"c{r}w")
            time.sleep(0.5)  # let the warm-up's last messages settle
            before = sched.cpu_times()
            run_tiny(client, p["n_tiny"], f"c{r}")
            after = sched.cpu_times()
            cpu = (after.user - before.user) + (after.system - before.system)
            out[mode].append(cpu / p["n_tiny"])
            print(
                f"scheduler cpu {r} {mode:5s} {out[mode][-1] * 1e3:.3f} ms/task",
                file=sys.stderr,
            )
    return out


def summarise(raw: dict, p: dict) -> tuple[dict, dict]:
    med = {
        m: {k: statistics.median(r[k] for r in raw["mixed"][m]) for k in raw["mixed"][m][0]}
        for m in MODES
    }
    tiny = {m: statistics.median(v) for m, v in raw["tiny_s_per_task"].items()}
    cpu = {m: statistics.median(v) for m, v in raw["scheduler_cpu_s_per_task"].items()}
    headline = {
        "hp_p95_speedup_vs_dask": med["dask"]["high_p95_s"] / med["ours"]["high_p95_s"],
        "makespan_speedup_vs_dask": med["dask"]["makespan_s"] / med["ours"]["makespan_s"],
        "makespan_speedup_vs_naive": med["naive"]["makespan_s"] / med["ours"]["makespan_s"],
        "overhead_ratio_vs_dask": tiny["ours"] / tiny["dask"],
        "scheduler_cpu_ratio_vs_dask": cpu["ours"] / cpu["dask"],
        "makespan_lower_bound_s": lower_bound(p),
        **{f"{m}_{k}": v for m in MODES for k, v in med[m].items()},
        **{f"{m}_ms_per_tiny_task": v * 1e3 for m, v in tiny.items()},
        **{f"{m}_scheduler_cpu_ms_per_task": v * 1e3 for m, v in cpu.items()},
    }
    return med, headline


def plot(raw: dict, p: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(21, 4))
    panels = (
        ("makespan_s", "makespan (s)"),
        ("high_p50_s", "high-priority p50 (s)"),
        ("high_p95_s", "high-priority p95 (s)"),
    )
    for ax, (key, title) in zip(axes[:3], panels):
        for x, m in enumerate(MODES):
            ys = [r[key] for r in raw["mixed"][m]]
            ax.scatter([x] * len(ys), ys, alpha=0.6, color=COLORS[m])
            ax.hlines(statistics.median(ys), x - 0.3, x + 0.3, color="k")
        if key == "makespan_s":
            ax.axhline(lower_bound(p), ls="--", color="gray", label="lower bound")
            ax.legend()
        ax.set_xticks(range(len(MODES)), ["plain Dask", "document", "ours"])
        ax.set_title(title)
        ax.set_yscale("log")
    for ax, key, title in (
        (axes[3], "tiny_s_per_task", f"ms per tiny task ({p['n_tiny']} no-ops, 2 workers)"),
        (axes[4], "scheduler_cpu_s_per_task", "scheduler CPU ms per tiny task (own process)"),
    ):
        for x, m in enumerate(("dask", "ours")):
            ys = [v * 1e3 for v in raw[key][m]]
            ax.scatter([x] * len(ys), ys, alpha=0.6, color=COLORS[m])
            ax.hlines(statistics.median(ys), x - 0.3, x + 0.3, color="k")
        ax.set_xticks(range(2), ["plain Dask", "ours"])
        ax.set_xlim(-0.7, 1.7)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
    fig.suptitle(
        f"{p['workers']} workers (one 3x slow, one 50 ms RTT); {p['n_low']} low + "
        f"{p['n_high']} high-priority tasks; median line, {p['repeats']} repeats"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args("placement", __doc__.splitlines()[0])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    p = params(args.quick)
    raw = measure(p)
    med, headline = summarise(raw, p)
    raw["medians"] = med
    png = write_result(args.out, "placement", args.quick, p, raw, headline)
    plot(raw, p, Path(png))
    print_table(
        f"placement ({'quick' if args.quick else 'full'}): medians of {p['repeats']} repeats",
        ["mode", "makespan s", "HP p50 ms", "HP p95 ms"],
        [
            [m, med[m]["makespan_s"], med[m]["high_p50_s"] * 1e3, med[m]["high_p95_s"] * 1e3]
            for m in MODES
        ]
        + [["lower bound", headline["makespan_lower_bound_s"], "", ""]],
    )
    print_table("headline", ["key", "value"], [[k, v] for k, v in headline.items()])


if __name__ == "__main__":
    main()
