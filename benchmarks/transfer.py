"""Transfer: the code model pre-trained on the standard library, adapted to another code
corpus (NumPy's own Python source, an installed package), against training from scratch on
the same cluster.

Setup (a 2-agent LocalCluster, the default code model: 2 layers, d-model 96, context 64):

1. **pre-train** on the standard library's source (``--pretrain-rounds`` rounds of 50 local
   steps per agent); that run's final version is the pre-trained model;
2. **scratch**: a fresh model trained on NumPy's source for ``--rounds`` rounds;
3. **transfer**: a transfer run from the pre-trained version (``init_from="run:<id>"``,
   ``prior_tasks`` = the standard library, re-warm-up over 50 steps), the same rounds;
4. **transfer + replay**: the same with a replay buffer of 1,000 standard-library windows,
   a quarter of each batch (fixed before the runs).

Every run evaluates its held-out loss on NumPy's held-out modules after every round (and, for
the transfer runs, on the standard library's).

Measured, with the definition fixed before the runs:

- ``transfer_speedup``: training seconds (evaluations excluded) for scratch to reach the
  target over those for transfer, where the **target** is the held-out NumPy loss scratch
  reaches at the end of its budget (its last evaluation). Median over the seeds; target
  (issue 19) >= 4. Rounds to the target are reported beside it;
- ``stdlib_forgetting_with_replay`` (and ``_without_replay``): the rise of the standard
  library's held-out loss (nats per character) from the pre-trained version to the end of
  adaptation, medians over the seeds.

    python benchmarks/transfer.py [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import dask.config
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, write_result
from rich.progress import Progress

from cluster_app import AgentCluster
from cluster_app.agent.spec import AgentSpec
from cluster_app.learning import ContinualSpec, Task


def numpy_root() -> str:
    import numpy

    return os.path.dirname(numpy.__file__)


def curve(res, task: int) -> list[tuple[float, int, float]]:
    """(training seconds, round, held-out loss on task ``task``) after every round."""
    out = []
    for r in res.rounds:
        for t in r.task_eval or []:
            if t["task"] == task:
                out.append((r.train_seconds, r.round, t["loss"]))
    return out


def time_to(points, target: float) -> tuple[float | None, int | None]:
    for seconds, rnd, loss in points:
        if loss <= target:
            return seconds, rnd + 1
    return None, None


def main() -> None:
    def extra(p):
        p.add_argument("--pretrain-rounds", type=int, default=40)
        p.add_argument("--rounds", type=int, default=20)
        p.add_argument("--seeds", type=int, default=2)

    args = parse_args("transfer", __doc__, extra)
    quick = args.quick
    pre_rounds, rounds, seeds = (
        (16, 4, 1) if quick else (args.pretrain_rounds, args.rounds, args.seeds)
    )
    steps = 20 if quick else 50
    limits = {"max_train_chars": 300_000, "max_eval_chars": 50_000} if quick else {}
    stdlib = Task("stdlib", ({**limits},))
    target_corpus = Task("numpy", ({"root": numpy_root(), **limits},))
    store = tempfile.mkdtemp(prefix="bench-transfer-", dir=os.environ.get("BENCH_TMP"))
    raw: dict = {"seeds": []}
    try:
        with (
            dask.config.set({"cluster-app.train.progress": False}),
            AgentCluster(
                n_workers=2,
                agent=AgentSpec.from_config(model="codelm"),
                store_url=store,
                quiet=True,
            ) as ac,
        ):
            common = dict(local_steps=steps, standby=0, checkpoint_every_rounds=None)
            with Progress() as bar:
                job = bar.add_task("transfer runs", total=seeds * 4)
                for seed in range(seeds):
                    pre = ac.train(
                        continual=ContinualSpec(
                            tasks=(stdlib,), rounds_per_task=pre_rounds, seed=seed
                        ),
                        seed=seed,
                        **common,
                    )
                    bar.advance(job)
                    scratch = ac.train(
                        continual=ContinualSpec(
                            tasks=(target_corpus,), rounds_per_task=rounds, seed=seed
                        ),
                        seed=seed,
                        **common,
                    )
                    bar.advance(job)
                    runs = {}
                    for name, replay in (("transfer", 0), ("transfer+replay", 1000)):
                        cs = ContinualSpec(
                            mode="transfer",
                            prior_tasks=(stdlib,),
                            tasks=(target_corpus,),
                            rounds_per_task=rounds,
                            rewarm_steps=50,
                            replay_size=replay,
                            replay_fraction=0.25,
                            seed=seed,
                        )
                        runs[name] = ac.train(
                            continual=cs, init_from=f"run:{pre.run_id}", seed=seed, **common
                        )
                        bar.advance(job)
                    s_curve = curve(scratch, 0)
                    target = s_curve[-1][2]
                    t_scratch, r_scratch = time_to(s_curve, target)
                    entry = {
                        "seed": seed,
                        "pretrain_heldout_stdlib": curve(pre, 0)[-1][2],
                        "pretrain_train_seconds": pre.train_seconds,
                        "target_loss": target,
                        "scratch": {
                            "curve": s_curve,
                            "seconds_to_target": t_scratch,
                            "rounds_to_target": r_scratch,
                        },
                    }
                    for name, res in runs.items():
                        c = curve(res, 1)
                        t, r = time_to(c, target)
                        start = res.continual["start"][0]["loss"]
                        end = curve(res, 0)[-1][2]
                        entry[name] = {
                            "curve": c,
                            "stdlib_curve": curve(res, 0),
                            "seconds_to_target": t,
                            "rounds_to_target": r,
                            "stdlib_start": start,
                            "stdlib_end": end,
                            "stdlib_forgetting": end - start,
                            "final_loss": c[-1][2],
                            "consolidation_seconds": [
                                x["seconds"] for x in res.continual["consolidations"]
                            ],
                        }
                    raw["seeds"].append(entry)
    finally:
        shutil.rmtree(store, ignore_errors=True)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return float(np.median(xs)) if xs else None

    speedups = [
        e["scratch"]["seconds_to_target"] / e["transfer"]["seconds_to_target"]
        if e["transfer"]["seconds_to_target"]
        else None
        for e in raw["seeds"]
    ]
    round_ratio = [
        e["scratch"]["rounds_to_target"] / e["transfer"]["rounds_to_target"]
        if e["transfer"]["rounds_to_target"]
        else None
        for e in raw["seeds"]
    ]
    headline = {
        "transfer_speedup": med(speedups),
        "transfer_speedup_per_seed": speedups,
        "rounds_to_target_ratio": med(round_ratio),
        "stdlib_forgetting_with_replay": med(
            [e["transfer+replay"]["stdlib_forgetting"] for e in raw["seeds"]]
        ),
        "stdlib_forgetting_without_replay": med(
            [e["transfer"]["stdlib_forgetting"] for e in raw["seeds"]]
        ),
        "target_loss": med([e["target_loss"] for e in raw["seeds"]]),
        # after one round of adaptation: where each starts from
        "first_eval_loss_scratch": med([e["scratch"]["curve"][0][2] for e in raw["seeds"]]),
        "first_eval_loss_transfer": med([e["transfer"]["curve"][0][2] for e in raw["seeds"]]),
        "seeds": seeds,
    }
    headline["targets_met"] = {
        "transfer_speedup >= 4": headline["transfer_speedup"] is not None
        and headline["transfer_speedup"] >= 4
    }
    params = {
        "pretrain_rounds": pre_rounds,
        "rounds": rounds,
        "local_steps": steps,
        "agents": 2,
        "seeds": seeds,
        "second_corpus": "numpy source (" + numpy_root() + ")",
        "replay_size": 1000,
        "replay_fraction": 0.25,
        "rewarm_steps": 50,
        "limits": limits,
    }
    png = write_result(args.out, "transfer", quick, params, raw, headline)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    for e in raw["seeds"]:
        for name, style in (("scratch", "-"), ("transfer", "--"), ("transfer+replay", ":")):
            c = e[name]["curve"]
            a.plot([p[0] for p in c], [p[2] for p in c], style, label=f"{name} (seed {e['seed']})")
        a.axhline(e["target_loss"], color="grey", lw=0.8)
        for name in ("transfer", "transfer+replay"):
            c = e[name]["stdlib_curve"]
            b.plot([p[1] + 1 for p in c], [p[2] for p in c], label=f"{name} (seed {e['seed']})")
        b.axhline(e["transfer"]["stdlib_start"], color="grey", lw=0.8)
    a.set_xlabel("training seconds (evaluations excluded)")
    a.set_ylabel("held-out loss on NumPy's source (nats/char)")
    speedup = headline["transfer_speedup"]
    a.set_title(
        "time to the target (grey): "
        + ("not reached" if speedup is None else f"transfer {speedup:.1f}x faster")
    )
    a.legend(fontsize=7)
    b.set_xlabel("adaptation round")
    b.set_ylabel("held-out loss on the standard library")
    b.set_title("forgetting of the pre-training domain (grey: before adaptation)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    rows = [
        [
            e["seed"],
            e["target_loss"],
            e["scratch"]["seconds_to_target"],
            e["transfer"]["seconds_to_target"],
            e["transfer"]["stdlib_forgetting"],
            e["transfer+replay"]["stdlib_forgetting"],
        ]
        for e in raw["seeds"]
    ]
    print_table(
        "transfer vs scratch",
        ["seed", "target", "scratch s", "transfer s", "forget", "forget+replay"],
        rows,
    )
    print_table("headline", ["figure", "value"], [[k, str(v)] for k, v in headline.items()])


if __name__ == "__main__":
    main()
