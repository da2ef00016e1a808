"""Elastic scaling on an adaptive local cluster: our adaptive target against Dask's default
``Scheduler.adaptive_target``, in the same run, on the same bursty workload.

- **Workload** (per policy and repeat, one fresh ``AgentCluster`` starting at 1 worker,
  ``cluster.adapt(minimum=1, maximum=6, interval=1s)``): a training run of the digits MLP on 2
  agents with 1 hot standby (``train.agents=2``, ``recovery.standby=1``) for the whole window,
  and two bursts of 24 evaluation-like agent tasks (0.4 s of numpy each; keys ``agent-burst-*``,
  placed by our plugin) at 10 s and 45 s. Real worker processes, real JAX training.
- **Dask's default**: the same cluster with our scaling plugin closed and removed (the
  scheduler's own target and scale-down choice), everything else ours.
- Sampled every 0.25 s: workers, queued agent tasks, workers processing nothing, standbys.

Reported per policy (median and spread over the repeats):

- ``tasks_lost``: burst tasks that did not return their value, plus rounds the run did not
  commit;
- ``scale_up_s``: from a burst's submission to the first worker that joins after it, split into
  ``decision_s`` (until the installed target first asks for more workers than there are) and
  ``worker_start_s`` (from then until the worker joins: a worker start on this machine, under
  the same load). Target: ``scale_up_s`` within the operator's 5 s poll plus one worker start,
  i.e. ``scale_up_s <= 5 + worker_start_s`` of the same episodes. ``idle_worker_start_s``
  beside it: one worker added to an idle cluster;
- ``idle_worker_seconds``: worker-seconds with nothing processing (standbys included: they are
  idle by design; ``idle_worker_seconds_less_standby`` beside it);
- ``scale_events``: changes of the worker count (flapping shows here);
- ``burst_drain_s`` (added after the first full runs, beside the others): from a burst's
  submission until no agent task waits.

Targets (issue 18): 0 tasks lost; ``idle_worker_seconds_ratio_vs_dask`` <= 1 and
``scale_events_ratio_vs_dask`` <= 1; ``scale_up_s`` <= 5 + ``worker_start_s``.

    python benchmarks/elastic.py [--quick] [--out PATH] [--reuse JSON]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time

import dask.config
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, write_result

from cluster_app import AgentCluster, AgentSpec

DIGITS = AgentSpec.from_config(model="mlp", dataset="digits")
BURST = 24
# above our standing target for the run (2 agents + 1 standby + its evaluations), so a burst
# can show a scale-up (a first full run with 4 had none to time)
MAXIMUM = 6


def _burst_task(i: int) -> int:
    rng = np.random.default_rng(i)
    t0 = time.perf_counter()
    a = rng.random((300, 300))
    while time.perf_counter() - t0 < 0.4:
        a = np.tanh(a @ a.T / 300.0)
    return i


async def _use_dask_default(dask_scheduler) -> None:
    from cluster_app.scaling.plugin import PLUGIN_NAME

    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    if plugin is not None:
        await plugin.close()  # puts the scheduler's own adaptive_target back
        dask_scheduler.remove_plugin(PLUGIN_NAME)


def _sample(dask_scheduler) -> dict:
    from cluster_app.observe.monitor import PLUGIN_NAME

    s = dask_scheduler
    monitor = s.plugins.get(PLUGIN_NAME)
    standby = sum(v.standby for v in monitor.runs.values() if v.running) if monitor else 0
    return {
        "workers": len(s.workers),
        "target": s.adaptive_target(),  # whichever policy is installed
        "queued": len(s.unrunnable) + len(s.queued),
        "idle": sum(not ws.processing for ws in s.workers.values()),
        "standby": standby,
    }


def episode(policy: str, window: float, bursts: list[float], tmp: str) -> dict:
    settings = {"cluster-app.scaling.scale-down-seconds": 20.0}
    with (
        dask.config.set(settings),
        AgentCluster(
            n_workers=1, agent=DIGITS, store_url=os.path.join(tmp, policy), quiet=True
        ) as ac,
    ):
        assert ac.cluster is not None
        if policy == "dask":
            ac.client.run_on_scheduler(_use_dask_default)
        ac.cluster.adapt(minimum=1, maximum=MAXIMUM, interval="1s", wait_count=3)
        out: dict = {"samples": [], "bursts": []}
        result: dict = {}
        rounds = 10_000  # the time budget ends it

        def train():
            result["run"] = ac.train(
                rounds=rounds, local_steps=20, agents=2, standby=1, max_seconds=window,
                progress=False,
            )  # fmt: skip

        trainer = threading.Thread(target=train, daemon=True)
        t0 = time.monotonic()
        trainer.start()
        futs, pending = [], list(bursts)
        while trainer.is_alive() or not all(f.done() for f in futs):
            now = time.monotonic() - t0
            if pending and now >= pending[0]:
                pending.pop(0)
                k = len(futs)
                futs += [
                    ac.client.submit(_burst_task, k + i, key=f"agent-burst-{k + i}", pure=False)
                    for i in range(BURST)
                ]
                out["bursts"].append(now)
            sample: dict = ac.client.run_on_scheduler(_sample)  # type: ignore[assignment]
            out["samples"].append({"t": now, **sample})
            time.sleep(0.25)
            if now > window + 240:
                break
        trainer.join(60)
        got = [f.result() if f.status == "finished" else None for f in futs]
        run = result.get("run")
        out["tasks_lost"] = sum(g != i for i, g in enumerate(got)) + (0 if run else rounds)
        out["rounds"] = len(run.rounds) if run else 0
        return out


def idle_worker_start_s(tmp: str) -> float:
    with AgentCluster(
        n_workers=1, agent=DIGITS, store_url=os.path.join(tmp, "start"), quiet=True
    ) as ac:
        assert ac.cluster is not None
        t0 = time.monotonic()
        ac.cluster.scale(2)
        ac.client.wait_for_workers(2, timeout=120)
        return time.monotonic() - t0


def summarize(ep: dict) -> dict:
    s = ep["samples"]
    t = np.array([x["t"] for x in s])
    dt = np.diff(t, append=t[-1])
    workers = np.array([x["workers"] for x in s])
    idle = np.array([x["idle"] for x in s])
    standby = np.array([x["standby"] for x in s])
    target = np.array([x["target"] for x in s])
    queued = np.array([x["queued"] for x in s])
    ups, decisions, drains = [], [], []
    for b in ep["bursts"]:
        seen = np.flatnonzero((t >= b) & (queued > 0))
        empty = np.flatnonzero((t > (t[seen[0]] if len(seen) else b)) & (queued == 0))
        drains.append(float(t[empty[0]] - b) if len(empty) else float("nan"))
        before = np.interp(b, t, workers)
        joined = np.flatnonzero((t >= b) & (workers > before))
        asked = np.flatnonzero((t >= b) & (target > before))
        ups.append(float(t[joined[0]] - b) if len(joined) else float("nan"))
        decisions.append(float(t[asked[0]] - b) if len(asked) else float("nan"))
    return {
        "tasks_lost": ep["tasks_lost"],
        "rounds": ep["rounds"],
        "scale_up_s": float(np.nanmedian(ups)) if ups else float("nan"),
        "decision_s": float(np.nanmedian(decisions)) if decisions else float("nan"),
        # from a burst's submission until no agent task waits any more
        "burst_drain_s": float(np.nanmedian(drains)) if drains else float("nan"),
        # from the target asking for more to the worker joining: a worker start, under load
        "worker_start_s": float(np.nanmedian(np.subtract(ups, decisions))) if ups else float("nan"),
        "idle_worker_seconds": float((idle * dt).sum()),
        "idle_worker_seconds_less_standby": float((np.maximum(idle - standby, 0) * dt).sum()),
        "worker_seconds": float((workers * dt).sum()),
        "scale_events": int((np.diff(workers) != 0).sum()),
        "max_workers": int(workers.max()),
    }


def plot(episodes: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for ax, policy in zip(axes, ("ours", "dask"), strict=True):
        ep = episodes[policy][0]
        t = [x["t"] for x in ep["samples"]]
        ax.step(t, [x["workers"] for x in ep["samples"]], where="post", label="workers")
        ax.step(t, [x["target"] for x in ep["samples"]], where="post", ls="--", label="target")
        ax.step(t, [x["standby"] for x in ep["samples"]], where="post", label="standbys")
        ax.plot(t, [x["queued"] for x in ep["samples"]], alpha=0.6, label="queued tasks")
        for b in ep["bursts"]:
            ax.axvline(b, color="k", ls=":", lw=1)
        name = "our adaptive target" if policy == "ours" else "Dask's default adaptive_target"
        ax.set(title=name, ylabel="count")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("seconds (dotted: bursts of 24 agent tasks)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _options(parser) -> None:
    parser.add_argument(
        "--reuse", metavar="JSON", help="recompute the figures from this result's episodes"
    )


def main() -> None:
    args = parse_args("elastic", (__doc__ or "").splitlines()[0], _options)
    window = 40.0 if args.quick else 75.0
    bursts = [8.0] if args.quick else [10.0, 45.0]
    repeats = 1 if args.quick else 2
    if args.reuse:  # recompute the figures from a result's own recorded episodes
        with open(args.reuse) as f:
            old = json.load(f)
        episodes, idle_start = old["raw"]["episodes"], old["headline"]["idle_worker_start_s"]
        window, bursts, repeats = (old["params"][k] for k in ("window_s", "bursts_at", "repeats"))
    else:
        tmp = tempfile.mkdtemp(prefix="bench-elastic-", dir=os.environ.get("BENCH_TMP"))
        idle_start = idle_worker_start_s(tmp)
        episodes = {p: [] for p in ("ours", "dask")}
        for _ in range(repeats):
            for policy in ("ours", "dask"):  # interleaved, so drift hits both
                episodes[policy].append(episode(policy, window, bursts, tmp))
    stats = {p: [summarize(e) for e in eps] for p, eps in episodes.items()}
    med = lambda p, k: float(np.median([s[k] for s in stats[p]]))  # noqa: E731
    headline = {
        "tasks_lost": int(sum(s["tasks_lost"] for s in stats["ours"])),
        "tasks_lost_dask": int(sum(s["tasks_lost"] for s in stats["dask"])),
        "scale_up_s": med("ours", "scale_up_s"),
        "scale_up_s_dask": med("dask", "scale_up_s"),
        "decision_s": med("ours", "decision_s"),
        "decision_s_dask": med("dask", "decision_s"),
        "worker_start_s": med("ours", "worker_start_s"),
        "idle_worker_start_s": idle_start,
        "scale_up_target_met": med("ours", "scale_up_s") <= 5.0 + med("ours", "worker_start_s"),
        "idle_worker_seconds": med("ours", "idle_worker_seconds"),
        "idle_worker_seconds_dask": med("dask", "idle_worker_seconds"),
        "idle_worker_seconds_ratio_vs_dask": med("ours", "idle_worker_seconds")
        / max(med("dask", "idle_worker_seconds"), 1e-9),
        "idle_less_standby_ratio_vs_dask": med("ours", "idle_worker_seconds_less_standby")
        / max(med("dask", "idle_worker_seconds_less_standby"), 1e-9),
        "scale_events": med("ours", "scale_events"),
        "scale_events_dask": med("dask", "scale_events"),
        "scale_events_ratio_vs_dask": med("ours", "scale_events")
        / max(med("dask", "scale_events"), 1e-9),
        "burst_drain_s": med("ours", "burst_drain_s"),
        "burst_drain_s_dask": med("dask", "burst_drain_s"),
        "rounds": med("ours", "rounds"),
        "rounds_dask": med("dask", "rounds"),
    }
    params = {"window_s": window, "bursts_at": bursts, "burst_tasks": BURST, "repeats": repeats}
    raw = {"stats": stats, "episodes": episodes}
    png = write_result(args.out, "elastic", args.quick, params, raw, headline)
    plot(episodes, png)
    print_table("elastic headline", ["key", "value"], [[k, v] for k, v in headline.items()])


if __name__ == "__main__":
    main()
