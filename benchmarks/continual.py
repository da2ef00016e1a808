"""Continual learning on the fleet: Split-Digits (class- and task-incremental) and
Permuted-Digits, five methods, five seeds, measured the way the literature measures them.

Workloads (sklearn's bundled 8x8 digits: 1,437 training / 360 test images; the digits
analogues of Split MNIST and Permuted MNIST, not MNIST itself):

- ``split-class``: 5 tasks of 2 classes (0-1, 2-3, ...), one 10-way head, no task identity
  (class-incremental, van de Ven et al. 2020's hardest scenario);
- ``split-task``: the same tasks, the head masked to each task's two classes in training and
  evaluation (task-incremental);
- ``permuted``: 5 tasks of all 10 classes, each under its own fixed pixel permutation.

Methods (every one a continual run of the public API on a 2-agent LocalCluster):
``naive`` (fine-tuning), ``ewc`` (online EWC, exact Fisher on 256 examples per task,
lambda 1000 for every workload: fixed before the runs, not tuned per workload), ``replay``
(reservoir buffer of 200 examples, half of each batch), ``replay+ewc``, and ``joint`` (one
task mixing all five, the same number of rounds: the upper bound). Each task trains
6 rounds x 15 local steps per agent (batch 32, Adam 3e-3), and every task seen so far is
evaluated after every round (the stability gap needs frequent evaluation).

Reported per workload and method, mean and standard deviation over the seeds: average accuracy
over all tasks after the last, backward transfer, forgetting, and the minimum accuracy on the
earlier tasks during each new task (beside its value right before the switch).

Targets (issue 19), fixed before the runs, class-incremental:

- ``forgetting_reduction_replay_vs_naive`` = naive's mean forgetting / replay's >= 3
  (replay+EWC reported beside it);
- ``acc_gap_replay_vs_joint`` = joint's mean average accuracy - replay's, in points, <= 10;
- ``ewc_minus_naive_acc_class`` = EWC's - naive's, in points: the published pattern is that
  EWC stays near naive in this scenario (|.| <= 5 points counts as reproduced).

    python benchmarks/continual.py [--quick] [--out PATH]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import warnings

import dask.config
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, write_result
from rich.progress import Progress

from cluster_app import AgentCluster
from cluster_app.agent.spec import AgentSpec
from cluster_app.learning import ContinualSpec, joint, permuted_digits, report, split_digits

METHODS = {
    "naive": {},
    "ewc": {"ewc_lambda": 1000.0},
    "replay": {"replay_size": 200},
    "replay+ewc": {"replay_size": 200, "ewc_lambda": 1000.0},
    "joint": None,
}
WORKLOADS = {"split-class": "class", "split-task": "task", "permuted": "domain"}


def tasks_of(workload: str, seed: int):
    return permuted_digits(5, seed=seed) if workload == "permuted" else split_digits(5)


def one(ac: AgentCluster, workload: str, method: str, seed: int, rpt: int, steps: int) -> dict:
    tasks = tasks_of(workload, seed)
    common = dict(scenario=WORKLOADS[workload], rounds_per_task=rpt, seed=seed)
    if METHODS[method] is None:  # joint: one mixed task, the same rounds; evaluated per task
        cs = ContinualSpec.from_config(
            tasks=(joint(tasks),), prior_tasks=tasks, **{**common, "rounds_per_task": rpt * 5}
        )
    else:
        cs = ContinualSpec.from_config(tasks=tasks, **common, **METHODS[method])
    t0 = time.perf_counter()
    res = ac.train(
        continual=cs, local_steps=steps, seed=seed, standby=0, checkpoint_every_rounds=None
    )
    history = [r.history() for r in res.rounds]
    commit = None
    if seed == 0:  # each mode's result as a registry commit, with its lineage and report
        branch = f"continual/{workload}-{method.replace('+', '-')}"
        commit = ac.versions.commit_run(res.run_id, branch=branch, evaluate=False).id
    evals = [
        {"round": h["round"], "task": h["task"], "acc": [t["accuracy"] for t in h["task_eval"]]}
        for h in history
        if h["task_eval"]
    ]
    if METHODS[method] is None:
        final = evals[-1]["acc"][:5]
        rep = {
            "average": float(np.mean(final)),
            "matrix": None,
            "backward_transfer": None,
            "forgetting": None,
            "min_after_switch": [],
            "stability_gap": [],
        }
    else:
        rep = report(history, len(tasks))
    return {
        "workload": workload,
        "method": method,
        "seed": seed,
        "seconds": time.perf_counter() - t0,
        "commit": commit,
        "train_seconds": res.train_seconds,
        "evals": evals,
        "consolidation_seconds": [c["seconds"] for c in res.continual.get("consolidations", [])],
        **rep,
    }


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(r["workload"], {}).setdefault(r["method"], []).append(r)
    table = {}
    for w, by in out.items():
        for m, rs in by.items():

            def stat(key, rs=rs):
                xs = [x[key] for x in rs if x[key] is not None]
                return (float(np.mean(xs)), float(np.std(xs))) if xs else (None, None)

            gaps = [float(np.mean(x["min_after_switch"])) for x in rs if x["min_after_switch"]]
            before = [
                float(np.mean([g["before"] for g in x["stability_gap"]]))
                for x in rs
                if x["stability_gap"]
            ]
            table[f"{w}/{m}"] = {
                "average": stat("average"),
                "backward_transfer": stat("backward_transfer"),
                "forgetting": stat("forgetting"),
                "min_after_switch": (float(np.mean(gaps)), float(np.std(gaps)))
                if gaps
                else (None, None),
                "before_switch": (float(np.mean(before)), float(np.std(before)))
                if before
                else (None, None),
                "seeds": len(rs),
            }
    return table


def plot(runs: list[dict], table: dict, path: str, workloads: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if m != "joint"]
    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5))
    for ax, m in zip(axes[0], methods):
        ms = [
            np.array(r["matrix"], float)
            for r in runs
            if r["workload"] == "split-class" and r["method"] == m
        ]
        if ms:
            with warnings.catch_warnings():  # the upper triangle is never evaluated
                warnings.simplefilter("ignore", RuntimeWarning)
                mat = np.nanmean(ms, axis=0)
            ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
            for i in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    if not np.isnan(mat[i, j]):
                        ax.text(
                            j,
                            i,
                            f"{mat[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="w",
                        )
        ax.set_title(f"split-class, {m}: accuracy matrix")
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
    ax = axes[1, 0]
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        means = [table.get(f"{w}/{m}", {}).get("average", (None,))[0] or 0 for w in workloads]
        sds = [table.get(f"{w}/{m}", {}).get("average", (None, None))[1] or 0 for w in workloads]
        ax.bar(np.arange(len(workloads)) + i * width, means, width, yerr=sds, label=m)
    ax.set_xticks(np.arange(len(workloads)) + 0.4 - width / 2, workloads)
    ax.set_ylabel("average accuracy (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    for ax, w in zip(axes[1, 1:], workloads):
        for m in methods:
            rs = [r for r in runs if r["workload"] == w and r["method"] == m]
            if not rs:
                continue
            r = rs[0]
            xs = [e["round"] for e in r["evals"] if e["task"] > 0]
            ys = [np.mean(e["acc"][: e["task"]]) for e in r["evals"] if e["task"] > 0]
            ax.plot(xs, ys, marker=".", label=m)
        ax.set_title(
            f"{w}: accuracy on earlier tasks, every round (seed {rs[0]['seed'] if rs else 0})"
        )
        ax.set_xlabel("round (task switches every rounds_per_task)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    def extra(p):
        p.add_argument("--reuse", help="re-summarise and re-plot the runs of this JSON")

    args = parse_args("continual", __doc__, extra)
    quick = args.quick
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    workloads = ["split-class"] if quick else list(WORKLOADS)
    methods = ["naive", "replay", "joint"] if quick else list(METHODS)
    rpt, steps = (2, 10) if quick else (6, 15)
    store = tempfile.mkdtemp(prefix="bench-continual-", dir=os.environ.get("BENCH_TMP"))
    runs: list[dict] = []
    if args.reuse:
        with open(args.reuse) as f:
            old = json.load(f)
        runs, quick = old["raw"]["runs"], old["quick"]
        seeds, workloads, methods = (old["params"][k] for k in ("seeds", "workloads", "methods"))
        rpt, steps = old["params"]["rounds_per_task"], old["params"]["local_steps"]
    else:
        try:
            with (
                dask.config.set({"cluster-app.train.progress": False}),
                AgentCluster(
                    n_workers=2,
                    agent=AgentSpec.from_config(model="mlp"),
                    store_url=store,
                    quiet=True,
                ) as ac,
            ):
                jobs = [(w, m, s) for s in seeds for w in workloads for m in methods]
                with Progress() as bar:
                    t = bar.add_task("continual runs", total=len(jobs))
                    for w, m, s in jobs:
                        runs.append(one(ac, w, m, s, rpt, steps))
                        bar.advance(t)
        finally:
            shutil.rmtree(store, ignore_errors=True)
    table = summarise(runs)
    cls = {m: table.get(f"split-class/{m}") for m in METHODS}

    def mean(m, key):
        v = cls.get(m)
        return None if v is None else v[key][0]

    naive_f, replay_f, re_f = (
        mean("naive", "forgetting"),
        mean("replay", "forgetting"),
        mean("replay+ewc", "forgetting"),
    )
    headline = {
        "forgetting_reduction_replay_vs_naive": naive_f / replay_f
        if naive_f and replay_f
        else None,
        "forgetting_reduction_replay_ewc_vs_naive": naive_f / re_f if naive_f and re_f else None,
        "acc_gap_replay_vs_joint": 100 * (mean("joint", "average") - mean("replay", "average")),
        "ewc_minus_naive_acc_class": None
        if cls.get("ewc") is None
        else 100 * (mean("ewc", "average") - mean("naive", "average")),
        "naive_acc_class": mean("naive", "average"),
        "replay_acc_class": mean("replay", "average"),
        "joint_acc_class": mean("joint", "average"),
        "seeds": len(seeds),
    }
    h = headline
    headline["targets_met"] = {
        "forgetting_reduction_replay_vs_naive >= 3": h["forgetting_reduction_replay_vs_naive"]
        is not None
        and h["forgetting_reduction_replay_vs_naive"] >= 3,
        "acc_gap_replay_vs_joint <= 10": h["acc_gap_replay_vs_joint"] <= 10,
        "|ewc_minus_naive_acc_class| <= 5": None
        if h["ewc_minus_naive_acc_class"] is None
        else abs(h["ewc_minus_naive_acc_class"]) <= 5,
    }
    params = {
        "seeds": seeds,
        "workloads": workloads,
        "methods": methods,
        "rounds_per_task": rpt,
        "local_steps": steps,
        "agents": 2,
        "replay_size": 200,
        "ewc_lambda": 1000.0,
        "fisher": "exact",
        "fisher_samples": 256,
        "batch_size": 32,
    }
    png = write_result(
        args.out, "continual", quick, params, {"runs": runs, "table": table}, headline
    )
    plot(runs, table, png, workloads)

    def fmt(v):
        return "-" if v[0] is None else f"{v[0]:.3f} ± {v[1]:.3f}"

    print_table(
        "continual learning (mean ± sd over seeds)",
        ["workload/method", "avg acc", "BWT", "forgetting", "min after switch", "before switch"],
        [
            [
                k,
                fmt(v["average"]),
                fmt(v["backward_transfer"]),
                fmt(v["forgetting"]),
                fmt(v["min_after_switch"]),
                fmt(v["before_switch"]),
            ]
            for k, v in table.items()
        ],
    )
    print_table("headline", ["figure", "value"], [[k, str(v)] for k, v in headline.items()])


if __name__ == "__main__":
    main()
