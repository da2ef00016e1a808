"""Recovery: takeover and MTTR with and without hot standby, checkpoint cost, goodput.

1. Takeover and MTTR: train on a local cluster and ``kill -9`` an active agent's worker early in
   a round (0.3 s after its shard starts), every four rounds; with a hot standby (3 workers, 1
   standby) vs without (2 workers): the same number of active agents. The killed worker's
   nanny restarts it (a crashed process), on this machine beside the fleet. The fleets run in
   ``blocks`` short runs each, interleaved and in a rotating order (standby, none,
   failure-free, node lost; then none, failure-free, node lost, standby; ...), so that the
   machine's drift over the run reaches every fleet alike (runs before 2026-12-02 ran each
   fleet once, one after the other). Three definitions, each under its own name:
   - ``takeover_s``: from the kill to the standby running the lost shard's local steps
     (detection plus takeover; it does not depend on the round length);
   - ``mttr_full_strength_s``: from the kill to the next round completed at full strength (every
     shard folded, as many agents as before);
   - ``mttr_s`` (the first definition): from the kill to the next completed round.
   The median round length is reported with them, and the median length of the rounds a kill
   landed in (the standby's takeover round; without one, the round finished by the survivor).
   A fourth fleet, ``standby_node_lost``, is the standby fleet with the worker killed together
   with its nanny (a lost node: nothing restarts it here, so once per block): its takeover
   round shows what taking over costs when no restarting process shares the CPU.
2. Goodput by throughput: samples trained and kept per second in the run with kills, over the
   same fleet's failure-free rate measured in this run (a third run, no kills), beside the
   time-accounted goodput of the run with kills. The machine's drift between the two runs
   moves that ratio by several percent either way, so ``goodput_throughput_within_run`` is
   reported beside it: the same samples per second over the run's own median round rate
   (samples of a full round over its median round time), which no drift between runs
   touches; it charges the time between rounds to the kills too, so it errs low.
3. Checkpoints: blocking time of an asynchronous Orbax save and restore time of the full
   training state (master + published parameters + Nesterov momentum) for 1M and 10M params.
4. Goodput (time-accounted): a durable run with a worker killed every ``kill_every`` seconds
   (``soak``), sometimes the loop's own worker.

    python benchmarks/recovery.py [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time

import dask
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, percentile, print_table, write_result

from cluster_app import AgentCluster, AgentSpec
from cluster_app.recovery.checkpoint import Checkpointer
from cluster_app.testing.chaos import kill_worker
from cluster_app.testing.soak import soak


def kill_when_busy(client, victim: str, kills: list, with_nanny: bool = False) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(str(k).startswith("agent-round") for k in client.processing([victim])[victim]):
            time.sleep(0.3)
            kills.append(time.time())
            kill_worker(client, victim, with_nanny=with_nanny)
            return
        time.sleep(0.02)


def mttr_run(
    agent, store, n_workers, standby, rounds, kill_rounds, local_steps, node_lost=False
) -> dict:
    kills: list[float] = []
    threads = []
    with AgentCluster(n_workers=n_workers, agent=agent, store_url=store, quiet=True) as ac:

        def hook(rec):
            if rec.round in kill_rounds:
                victim = rec.workers[0]
                t = threading.Thread(
                    target=kill_when_busy, args=(ac.client, victim, kills, node_lost)
                )
                t.start()
                threads.append(t)

        res = ac.train(
            rounds=rounds,
            local_steps=local_steps,
            standby=standby,
            codec="int8",
            progress=False,
            on_round=hook,
        )
        for t in threads:
            t.join()
    strength = n_workers - standby
    full_round = max(r.steps for r in res.rounds) * agent.batch_size  # samples of a full round
    rounds_ = [
        {
            "round": r.round,
            "ended": r.ended,
            "agents": len(r.workers),
            "dropped": len(r.dropped),
            "seconds": r.seconds,
            "steps": r.steps,
            "takeovers": r.takeovers,
        }
        for r in res.rounds
    ]
    # the first MTTR: kill -> the first round completed after it (the fleet is training and
    # committing again); the stricter one: -> the first round back at full strength; and the
    # takeover: kill -> the standby training the lost shard
    mttr, full, takeover = [], [], []
    started = sorted(t["started"] for r in rounds_ for t in r["takeovers"] if t["started"])
    for t in kills:
        first = next((r for r in rounds_ if r["ended"] > t), None)
        mttr.append(None if first is None else first["ended"] - t)
        back = next(
            (r for r in rounds_ if r["ended"] > t and r["agents"] >= strength and not r["dropped"]),
            None,
        )
        full.append(None if back is None else back["ended"] - t)
        took = next((s for s in started if s > t), None)
        takeover.append(None if took is None else took - t)
    return {
        "kills": kills,
        "mttr_s": mttr,
        "mttr_full_strength_s": full,
        "takeover_s": takeover,
        "rounds": rounds_,
        "samples": res.steps * agent.batch_size,  # trained and kept (folded)
        "full_round": full_round,
        "train_seconds": res.train_seconds,
        "goodput_time_accounted": res.goodput["goodput"],
    }


def merge(blocks: list[dict]) -> dict:
    """One fleet's blocks as one run: kills and rounds in order (``t``: seconds on a timeline
    that puts the blocks end to end), rates over all of them."""
    out: dict = {"blocks": len(blocks)}
    for key in ("kills", "mttr_s", "mttr_full_strength_s", "takeover_s"):
        out[key] = [x for b in blocks for x in b[key]]
    rounds, kills_t, offset = [], [], 0.0
    for i, b in enumerate(blocks):
        start = b["rounds"][0]["ended"] - b["rounds"][0]["seconds"]
        rounds += [{**r, "block": i, "t": offset + r["ended"] - start} for r in b["rounds"]]
        kills_t += [offset + k - start for k in b["kills"]]
        offset += b["rounds"][-1]["ended"] - start
    out["rounds"], out["kills_t"] = rounds, kills_t
    out["round_s_median"] = float(np.median([r["seconds"] for r in rounds]))
    # a full round's samples over the median round time: the run's own failure-free rate
    full_round = max(b["full_round"] for b in blocks)
    rates = [full_round / r["seconds"] for r in rounds]
    out["samples_per_s_median_round"] = float(np.median(rates))
    out["samples"] = sum(b["samples"] for b in blocks)
    out["train_seconds"] = sum(b["train_seconds"] for b in blocks)
    out["samples_per_s"] = out["samples"] / out["train_seconds"]  # per training second
    out["goodput_time_accounted"] = float(np.mean([b["goodput_time_accounted"] for b in blocks]))
    # the rounds a kill landed in: the takeover round, or the round the survivors finished
    hit = [next((r for r in rounds if r["t"] > k), None) for k in kills_t]
    out["kill_round_s"] = [r["seconds"] for r in hit if r is not None]
    return out


def checkpoint_costs(sizes, repeats, tmp) -> dict:
    out = {}
    for n in sizes:
        rng = np.random.default_rng(0)
        leaves = {f"l{i}": rng.normal(size=n // 8).astype(np.float32) for i in range(8)}
        state = {
            "master": leaves,
            "published": leaves,
            "outer": {k: np.zeros_like(v) for k, v in leaves.items()},
        }
        ck = Checkpointer(os.path.join(tmp, f"ck-{n}"), keep=2)
        blocking, restore = [], []
        for r in range(repeats):
            blocking.append(ck.save(r, state, {"round": r}))
            ck.manager.wait_until_finished()
            t0 = time.perf_counter()
            got = ck.restore(state)
            restore.append(time.perf_counter() - t0)
            assert got.step == r
        ck.close()
        out[str(n)] = {"blocking_s": blocking, "restore_s": restore}
    return out


def main() -> None:
    args = parse_args("recovery", __doc__.splitlines()[0])
    q = args.quick
    p = {
        "local_steps": 40 if q else 100,
        "blocks": 1 if q else 3,  # short runs per fleet, interleaved
        "mttr_rounds": 5 if q else 8,  # rounds per block
        "kill_rounds": [1] if q else [1, 5],  # in each block
        "ckpt_sizes": [1_000_000, 10_000_000],
        "ckpt_repeats": 2 if q else 5,
        "soak_minutes": 0.75 if q else 5.0,
        "soak_kill_every": 20.0 if q else 100.0,
        "soak_workers": 4,
    }
    agent = AgentSpec(
        model="codelm",
        dataset="code",
        model_kwargs={"context": 64, "d_model": 64, "n_layers": 2, "n_heads": 4},
        data_kwargs={
            "context": 64,
            "max_train_chars": 1_000_000,
            "max_eval_chars": 100_000,
            "holdout_every": 10,
        },
    )
    tmp = tempfile.mkdtemp(prefix="bench-recovery-", dir=os.environ.get("BENCH_TMP"))
    raw: dict = {}
    try:
        with dask.config.set(
            {
                "cluster-app.cluster.dashboard-address": ":0",
                "cluster-app.recovery.checkpoint-every-rounds": 1,
            }
        ):
            kw = {
                "rounds": p["mttr_rounds"],
                "kill_rounds": p["kill_rounds"],
                "local_steps": p["local_steps"],
            }
            fleets = {  # workers, standbys, kills, node lost
                "standby": (3, 1, kw, False),
                "no_standby": (2, 0, kw, False),
                # the same fleet as "standby", failure-free: the rate goodput is measured against
                "failure_free": (3, 1, {**kw, "kill_rounds": []}, False),
                # a lost node: the worker and its nanny killed, nothing restarts on this
                # machine (so once per block: the pool is not refilled)
                "standby_node_lost": (3, 1, {**kw, "kill_rounds": kw["kill_rounds"][:1]}, True),
            }
            names, runs = list(fleets), {name: [] for name in fleets}
            for b in range(p["blocks"]):
                for name in names[b % 4 :] + names[: b % 4]:  # a rotating order
                    n, sb, kw_, lost = fleets[name]
                    store = os.path.join(tmp, f"{name}-{b}")
                    runs[name].append(mttr_run(agent, store, n, sb, **kw_, node_lost=lost))
            raw.update({name: merge(blocks) for name, blocks in runs.items()})
            raw["checkpoint"] = checkpoint_costs(p["ckpt_sizes"], p["ckpt_repeats"], tmp)
            with AgentCluster(
                n_workers=p["soak_workers"],
                agent=agent,
                store_url=os.path.join(tmp, "soak"),
                quiet=True,
            ) as ac:
                raw["soak"] = soak(
                    ac,
                    p["soak_minutes"],
                    kill_every=p["soak_kill_every"],
                    standby=1,
                    local_steps=p["local_steps"],
                    log=lambda s: None,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return float(np.median(xs)) if xs else float("nan")

    soak_g = raw["soak"]["goodput"]
    saves = max(1, raw["soak"]["rounds"])
    headline = {
        "takeover_s_median": med(raw["standby"]["takeover_s"]),
        "mttr_full_strength_ratio_standby_vs_none": med(raw["standby"]["mttr_full_strength_s"])
        / med(raw["no_standby"]["mttr_full_strength_s"]),
        "goodput_throughput": raw["standby"]["samples_per_s"]
        / raw["failure_free"]["samples_per_s"],
        "goodput_throughput_within_run": raw["standby"]["samples_per_s"]
        / raw["standby"]["samples_per_s_median_round"],
        "goodput_time_accounted": raw["standby"]["goodput_time_accounted"],
        "round_s_median_standby": raw["standby"]["round_s_median"],
        "round_s_median_no_standby": raw["no_standby"]["round_s_median"],
        "kill_round_s_median_standby": med(raw["standby"]["kill_round_s"]),
        "kill_round_s_median_no_standby": med(raw["no_standby"]["kill_round_s"]),
        # the standby fleet when the killed worker is not restarted on this machine: what the
        # takeover round costs without a respawning process sharing the CPU
        "kill_round_s_median_standby_node_lost": med(raw["standby_node_lost"]["kill_round_s"]),
        "round_s_median_standby_node_lost": raw["standby_node_lost"]["round_s_median"],
        "mttr_full_strength_s_median_standby_node_lost": med(
            raw["standby_node_lost"]["mttr_full_strength_s"]
        ),
        "mttr_s_median_standby": med(raw["standby"]["mttr_s"]),
        "mttr_s_median_no_standby": med(raw["no_standby"]["mttr_s"]),
        "mttr_full_strength_s_median_standby": med(raw["standby"]["mttr_full_strength_s"]),
        "mttr_full_strength_s_median_no_standby": med(raw["no_standby"]["mttr_full_strength_s"]),
        # in-run: mean blocking per checkpoint (one per round) over the median round time
        "ckpt_blocking_fraction": soak_g.get("checkpoint", 0.0)
        / saves
        / max(raw["standby"]["round_s_median"], 1e-9),
        "goodput": soak_g.get("goodput", 0.0),  # the soak's, time-accounted
        "ckpt_blocking_ms_10m": 1000 * percentile(raw["checkpoint"]["10000000"]["blocking_s"], 50),
        "restore_ms_10m": 1000 * percentile(raw["checkpoint"]["10000000"]["restore_s"], 50),
        "unreadable_versions": len(raw["soak"]["unreadable_versions"]),
    }
    png = write_result(args.out, "recovery", q, p, raw, headline)
    plot(raw, png)
    rows = [
        [
            name,
            len(raw[name]["kills"]),
            med(raw[name]["takeover_s"]),
            med(raw[name]["mttr_s"]),
            med(raw[name]["mttr_full_strength_s"]),
            raw[name]["round_s_median"],
            med(raw[name]["kill_round_s"]),
            raw[name]["samples_per_s"],
        ]
        for name in ("standby", "no_standby", "failure_free", "standby_node_lost")
    ]
    print_table(
        "after kill -9 of an active agent's worker (medians)",
        [
            "fleet",
            "kills",
            "takeover s",
            "to next round s",
            "to full strength s",
            "round s",
            "kill round s",
            "samples/s",
        ],
        rows,
    )
    rows = [
        [
            f"{int(n):,}",
            1000 * percentile(c["blocking_s"], 50),
            1000 * percentile(c["restore_s"], 50),
        ]
        for n, c in raw["checkpoint"].items()
    ]
    print_table(
        "Orbax checkpoint of the training state", ["params", "blocking ms", "restore ms"], rows
    )
    print_table("headline", ["key", "value"], [[k, v] for k, v in headline.items()])


def plot(raw: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 6.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[2.2, 1])
    for row, name in enumerate(("standby", "no_standby")):
        ax = fig.add_subplot(grid[row, 0])
        run = raw[name]
        ax.step(
            [r["t"] for r in run["rounds"]],
            [r["agents"] for r in run["rounds"]],
            where="pre",  # a round's count holds until it ended
            label="agents whose shard was folded",
        )
        for k, m in zip(run["kills_t"], run["mttr_full_strength_s"]):
            ax.axvline(k, color="C3", ls="--")
            if m is not None:
                ax.axvspan(k, k + m, color="C3", alpha=0.15)
        for k, took in zip(run["kills_t"], run["takeover_s"]):
            if took is not None:
                ax.plot(k + took, 2.5, "v", color="C2")
        ax.set_title(
            f"{name.replace('_', ' ')} ({run['blocks']} runs end to end): kill -9 (dashed), "
            "to full strength (shaded), standby takes over (triangle)",
            fontsize=9,
        )
        ax.set_ylabel("agents")
        ax.set_ylim(0, 3)
    ax.set_xlabel("seconds")
    ax = fig.add_subplot(grid[:, 1])
    labels, data = [], []
    for name in ("standby", "no_standby", "standby_node_lost"):
        for key, short in (
            ("takeover_s", "takeover"),
            ("mttr_s", "to next round"),
            ("mttr_full_strength_s", "to full strength"),
        ):
            if name == "standby_node_lost" and key == "mttr_s":
                continue  # the same as to full strength
            xs = [x for x in raw[name][key] if x is not None]
            if xs:
                labels.append(f"{short}\n({name.replace('_', ' ')})")
                data.append(xs)
    ax.boxplot(data, orientation="horizontal")
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_xlabel("seconds after the kill")
    ax.set_title(
        f"rounds ~{raw['standby']['round_s_median']:.1f} s (standby), "
        f"~{raw['no_standby']['round_s_median']:.1f} s (none)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
