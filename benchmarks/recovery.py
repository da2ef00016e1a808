"""Recovery: MTTR with and without hot standby, checkpoint cost, goodput under failures.

1. MTTR: train on a local cluster and ``kill -9`` an active agent's worker in the middle of a
   round, several times; MTTR is the time from the kill to the first round completed after it
   (the issue's definition), and, stricter, to the first round completed with the fleet back at
   full strength (no shard dropped, as many agents as before). With a hot standby (3 workers,
   1 standby) vs without (2 workers): the same number of active agents.
2. Checkpoints: blocking time of an asynchronous Orbax save and restore time of the full
   training state (master + published parameters + Nesterov momentum) for 1M and 10M params.
3. Goodput: a durable run with a worker killed every ``kill_every`` seconds (``soak``).

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


def kill_when_busy(client, victim: str, kills: list) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(str(k).startswith("agent-round") for k in client.processing([victim])[victim]):
            time.sleep(0.3)
            kills.append(time.time())
            kill_worker(client, victim)
            return
        time.sleep(0.02)


def mttr_run(agent, store, n_workers, standby, rounds, kill_rounds, local_steps) -> dict:
    kills: list[float] = []
    threads = []
    with AgentCluster(n_workers=n_workers, agent=agent, store_url=store, quiet=True) as ac:

        def hook(rec):
            if rec.round in kill_rounds:
                t = threading.Thread(target=kill_when_busy, args=(ac.client, rec.workers[0], kills))
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
    rounds_ = [
        {
            "round": r.round,
            "ended": r.ended,
            "agents": len(r.workers),
            "dropped": len(r.dropped),
            "seconds": r.seconds,
        }
        for r in res.rounds
    ]
    # the MTTR: kill -> the first round completed after it (the fleet is training
    # and committing again); the stricter one: -> the first round back at full strength
    mttr, full = [], []
    for t in kills:
        first = next((r for r in rounds_ if r["ended"] > t), None)
        mttr.append(None if first is None else first["ended"] - t)
        back = next(
            (r for r in rounds_ if r["ended"] > t and r["agents"] >= strength and not r["dropped"]),
            None,
        )
        full.append(None if back is None else back["ended"] - t)
    return {
        "kills": kills,
        "mttr_s": mttr,
        "mttr_full_strength_s": full,
        "rounds": rounds_,
        "round_s_median": float(np.median([r.seconds for r in res.rounds])),
    }


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
        "mttr_rounds": 5 if q else 22,
        "kill_rounds": [1] if q else [1, 5, 9, 13, 17],
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
            raw["standby"] = mttr_run(agent, os.path.join(tmp, "s1"), 3, 1, **kw)
            raw["no_standby"] = mttr_run(agent, os.path.join(tmp, "s0"), 2, 0, **kw)
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
        "mttr_s_median_standby": med(raw["standby"]["mttr_s"]),
        "mttr_s_median_no_standby": med(raw["no_standby"]["mttr_s"]),
        "mttr_full_strength_s_median_standby": med(raw["standby"]["mttr_full_strength_s"]),
        "mttr_full_strength_s_median_no_standby": med(raw["no_standby"]["mttr_full_strength_s"]),
        # in-run: mean blocking per checkpoint (one per round) over the median round time
        "ckpt_blocking_fraction": soak_g.get("checkpoint", 0.0)
        / saves
        / max(raw["standby"]["round_s_median"], 1e-9),
        "goodput": soak_g.get("goodput", 0.0),
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
            med(raw[name]["mttr_s"]),
            med(raw[name]["mttr_full_strength_s"]),
            raw[name]["round_s_median"],
        ]
        for name in ("standby", "no_standby")
    ]
    print_table(
        "MTTR after kill -9 of an active agent's worker (medians)",
        ["fleet", "kills", "to next round s", "to full strength s", "round s"],
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

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=False)
    for ax, name in zip(axes, ("standby", "no_standby")):
        run = raw[name]
        t0 = run["rounds"][0]["ended"] - run["rounds"][0]["seconds"]
        ax.step(
            [r["ended"] - t0 for r in run["rounds"]],
            [r["agents"] for r in run["rounds"]],
            where="post",
            label="agents whose shard was folded",
        )
        for k, m in zip(run["kills"], run["mttr_full_strength_s"]):
            ax.axvline(k - t0, color="C3", ls="--")
            if m is not None:
                ax.axvspan(k - t0, k - t0 + m, color="C3", alpha=0.15)
        ax.set_title(f"{name.replace('_', ' ')}: kill -9 (dashed), time to full strength (shaded)")
        ax.set_ylabel("agents")
        ax.set_ylim(0, 3)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
