"""Hybrid sync: time to a target held-out loss, bytes moved, final loss, on a local cluster.

Trains the code model with (a) synchronous averaging after every step (H=1, fp32), (b) the
hybrid schedule H=100 / K=1000 uncompressed (fp32 deltas), (c) the same hybrid schedule with
each lossy codec (error feedback), and (i) the *ideal synchronous* baseline: one process
training on the combined batch of all agents (batch size x agents, as many steps as one agent
of (b) takes: equal data), with no communication at all, the upper bound of synchronous data
parallelism (DiLoCo's comparison). (b), (c) and (i) run once per seed (model initialisation and data
order; seeds 0-7 by default), and a codec's final-loss cost is its relative change against (b)
of the same seed. A codec perturbs the trajectory, and from then on (b) and (c) are two draws of
the same training noise (a near-lossless int8 run drifts off (b) too; docs/sync.md), so one
seed's difference measures (b)'s luck as much as the codec. The criterion is therefore the
mean change over the seeds, at the upper end of its 95% t-interval (the single difference with
one seed, as in ``--quick``); the worst seed and the mean are reported beside it. Bytes are
nearly deterministic: a codec's bytes ratio is its worst over the seeds. The best codec is the
one that moves the fewest bytes while that upper end stays within 1% (if none does, the one
closest to it). Held-out loss is
evaluated every 100 local steps (evaluation time is excluded from the clock). Against (i) the
loss at equal data is reported (``loss_rel_diff_vs_ideal_sync``: the mean over seeds of (c)'s
final held-out loss relative to (i) of the same seed), with the bytes a synchronous
data-parallel run would move to train the same way (every agent sends its fp32 gradient and
receives the average, every step) over what (c) moves. The time to target is read on the
evaluations linearly interpolated, per seed, and its median over the seeds is the headline
(``time_to_target_speedup_*_median``); the first seed's figure, the earlier headline, stays
beside it under its own name. (b) and (c) run
the same number of rounds so their final losses compare at equal data; (a) runs until it
reaches the target or its time budget. Bytes moved count every byte through the store, each
way: agents' pushes, the coordinator reading them back, its commits, and agents' pulls, each
object with its zarr metadata and each version with its commit record (only ~55-byte seals and
directory listings are left out). Every run ends with an exact fp32 snapshot of the master.
The inner AdamW's rate is warmup-stable-decay: a flat 3e-3, then a linear cooldown to 0 over
the last 20% of the rounds * H steps of (b) and (c), in (a) too, step for step (of the three
schedules it trains (b) best: the strongest baseline); ``--lr-schedule constant`` keeps it
flat, as a perpetual run would, and ``cosine`` is DiLoCo's inner schedule.

    python benchmarks/hybrid.py [--quick] [--out PATH] [--seeds 0 1 ...] [--codecs int4 ...]
                                [--lr-schedule wsd|cosine|constant] [--reuse JSON]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile

import dask
import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, write_result

from cluster_app import AgentCluster, AgentSpec


def run_config(ac, name: str, **kw) -> dict:
    res = ac.train(progress=False, **kw)
    curve = [
        (r.train_seconds, r.heldout_loss, r.version)
        for r in res.rounds
        if r.heldout_loss is not None
    ]
    return {
        "name": name,
        "rounds": len(res.rounds),
        "train_seconds": res.train_seconds,
        "final_heldout": res.eval_end["loss"],
        "baseline": res.eval_end["baseline_loss"],
        "bytes_moved": res.bytes_moved,
        "curve": curve,
        "push_bytes": sum(r.push_bytes for r in res.rounds),
        "fold_bytes": sum(r.fold_bytes for r in res.rounds),
        "pull_bytes": sum(r.pull_bytes for r in res.rounds),
        "commit_bytes": sum(r.commit_bytes for r in res.rounds),
        "kinds": [r.kind for r in res.rounds],
    }


def _options(parser) -> None:
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="seeds of (b) and (c) (default 0 to 7)"
    )
    parser.add_argument("--codecs", nargs="+", help="the (c) codecs (default int4)")
    parser.add_argument(
        "--reuse",
        metavar="JSON",
        help="take the (a), (b) and (c) runs from this earlier result of the same parameters "
        "and run only what it lacks (the ideal baseline); the JSON says so",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=["wsd", "cosine", "constant"],
        default="wsd",
        help="the inner rate over the (b)/(c) budget of rounds * H steps (default wsd)",
    )


def _key(codec: str, seed: int) -> str:
    name = "hybrid" if codec == "fp32" else f"compressed-{codec}"
    return name if seed == 0 else f"{name}-seed{seed}"


def _progress(key: str, r: dict) -> str:
    return (
        f"{key}: final held-out {r['final_heldout']:.4f}, {r['bytes_moved'] / 1e6:.1f} MB moved, "
        f"{r['train_seconds']:.0f} s"
    )


def _without_fold(result: dict) -> int:
    return result["bytes_moved"] - result["fold_bytes"]


def reused(path: str, p: dict) -> dict:
    """The (a), (b) and (c) runs of an earlier result with the same parameters (training is
    deterministic: a re-run gives the same losses and bytes; only its times differ)."""
    with open(path) as f:
        prev = json.load(f)
    same = {k: v for k, v in prev["params"].items() if k in p and k != "reused_from"}
    if any(p[k] != v for k, v in same.items()):
        diff = {k: (v, p[k]) for k, v in same.items() if p[k] != v}
        raise SystemExit(f"--reuse {path}: its parameters differ (earlier, now): {diff}")
    p["reused_from"] = {"path": path, "created": prev.get("created")}
    return {k: v for k, v in prev["raw"].items() if not k.startswith("ideal-")}


def ci95_high(x: list[float]) -> float:
    """Upper end of the 95% t-interval of the mean of ``x`` (nan for fewer than two)."""
    if len(x) < 2:
        return float("nan")
    return float(np.mean(x) + stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / len(x) ** 0.5)


def loss_criterion(x: list[float]) -> float:
    """The upper end of the 95% t-interval of the mean signed change; with one seed, the
    absolute change of that seed."""
    return ci95_high(x) if len(x) > 1 else abs(x[0])


def time_to(result: dict, target: float) -> float | None:
    return next((t for t, loss, _ in result["curve"] if loss <= target), None)


def time_to_interpolated(result: dict, target: float) -> float | None:
    """Training seconds at which held-out loss crossed ``target``, linear between the two
    evaluations around the crossing (the first evaluation's time if it starts below)."""
    prev = None
    for t, loss, _ in result["curve"]:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return t
            t0, l0 = prev
            return t0 + (t - t0) * (l0 - target) / (l0 - loss)
        prev = (t, loss)
    return None


def ideal_sync(agent: AgentSpec, workers: int, rounds: int, steps: int, eval_batches: int):
    """(i): one process, the combined batch of ``workers`` agents, ``rounds * steps`` steps
    (one agent's count in (b): equal data), evaluated after every ``steps``; no communication."""
    import time

    from cluster_app.agent.agent import Agent

    one = Agent(dataclasses.replace(agent, batch_size=agent.batch_size * workers))
    one.load(one.init_params(), version=0)
    curve, trained = [], 0.0
    for r in range(rounds):
        t0 = time.perf_counter()
        delta, _ = one.train(r, 0, 1, steps)
        trained += time.perf_counter() - t0
        params = {k: one.base[k] + delta[k] for k in delta}
        one.load(params, version=r + 1)
        curve.append((trained, one.evaluate(eval_batches)["loss"], r + 1))
    return {
        "name": "ideal synchronous",
        "rounds": rounds,
        "train_seconds": trained,
        "final_heldout": curve[-1][1],
        "baseline": one.evaluate(1)["baseline_loss"],
        "bytes_moved": 0,
        "curve": curve,
        "push_bytes": 0,
        "fold_bytes": 0,
        "pull_bytes": 0,
        "commit_bytes": 0,
        "kinds": [],
        "n_params": sum(v.size for v in params.values()),
    }


def main() -> None:
    args = parse_args("hybrid", __doc__.splitlines()[0], extra=_options)
    if args.quick:
        p = {
            "workers": 2,
            "H": 20,
            "K": 100,
            "hybrid_rounds": 6,
            "target": 2.9,
            "sync_budget_s": 40.0,
            "codecs": ["int4", "int3", "int2"],
            "seeds": [0],
            "d_model": 32,
            "n_layers": 1,
            "max_train_chars": 300_000,
        }
    else:
        p = {
            "workers": 2,
            "H": 100,
            "K": 1000,
            "hybrid_rounds": 20,
            "target": 2.2,
            "sync_budget_s": 300.0,
            "codecs": ["int4"],
            "seeds": list(range(8)),
            "d_model": 96,
            "n_layers": 2,
            "max_train_chars": 3_000_000,
        }
    p["seeds"] = args.seeds or p["seeds"]
    p["codecs"] = args.codecs or p["codecs"]
    # the inner rate is flat, then cools down over the last 20% of the budget of (b) and (c)
    # (the schedule that trains (b) best here); (a) follows the same rate step for step
    p["lr_schedule"] = args.lr_schedule
    p["decay_steps"] = p["hybrid_rounds"] * p["H"] if args.lr_schedule != "constant" else None
    agent = AgentSpec(
        model="codelm",
        dataset="code",
        lr_schedule=p["lr_schedule"],
        decay_steps=p["decay_steps"],
        model_kwargs={
            "context": 64,
            "d_model": p["d_model"],
            "n_layers": p["n_layers"],
            "n_heads": 4,
        },
        data_kwargs={
            "context": 64,
            "max_train_chars": p["max_train_chars"],
            "max_eval_chars": 200_000,
            "holdout_every": 10,
        },
    )
    tmp = tempfile.mkdtemp(prefix="bench-hybrid-", dir=os.environ.get("BENCH_TMP"))
    results = reused(args.reuse, p) if args.reuse else {}
    try:
        agents = (
            contextlib.nullcontext()  # every cluster run is reused: no cluster
            if results
            else AgentCluster(n_workers=p["workers"], agent=agent, store_url=tmp, quiet=True)
        )
        with dask.config.set({"cluster-app.cluster.dashboard-address": ":0"}), agents as ac:
            # every worker trains: standbys are about recovery, not this comparison (their
            # pulls would count). An evaluation pull counts as sync traffic (the evaluating
            # agent skips that pull next round) except after the last round
            common = {"eval_batches": 20, "full_every": p["K"], "standby": 0}
            hybrid = {"rounds": p["hybrid_rounds"], "local_steps": p["H"], "eval_every": 1}
            for seed in p["seeds"] if ac is not None else []:
                # (b) and every (c) once per seed (model initialisation and data order):
                # a codec's loss must hold on every seed, not on one lucky trajectory
                seeded = {"agent": dataclasses.replace(agent, seed=seed), **hybrid, **common}
                for codec in ["fp32", *p["codecs"]]:
                    key = _key(codec, seed)
                    name = f"hybrid {codec} seed {seed}"
                    results[key] = run_config(ac, name, codec=codec, **seeded)
                    results[key].update(schedule=f"hybrid {codec}", seed=seed)
                    print(_progress(key, results[key]), flush=True)
            if ac is not None:
                results["sync_every_step"] = run_config(
                    ac,
                    "sync every step",
                    rounds=10**6,
                    local_steps=1,
                    eval_every=p["H"],
                    codec="fp32",
                    max_seconds=p["sync_budget_s"],
                    target_loss=p["target"],
                    **common,
                )
                print(_progress("sync_every_step", results["sync_every_step"]), flush=True)
        for seed in p["seeds"]:  # (i): on this process, the cluster idle
            key = f"ideal-seed{seed}"
            seeded = dataclasses.replace(agent, seed=seed)
            results[key] = ideal_sync(seeded, p["workers"], p["hybrid_rounds"], p["H"], 20)
            results[key].update(schedule="ideal synchronous", seed=seed)
            print(_progress(key, results[key]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    target = p["target"]
    for seed in p["seeds"]:
        base = results[_key("fp32", seed)]["final_heldout"]
        for codec in p["codecs"]:
            r = results[_key(codec, seed)]
            r["final_loss_rel_change"] = (r["final_heldout"] - base) / base  # signed
            r["final_loss_rel_diff"] = abs(r["final_loss_rel_change"])
            r["bytes_reduction"] = results[_key("fp32", seed)]["bytes_moved"] / r["bytes_moved"]

    def over_seeds(codec: str, field: str, pick) -> float:
        return float(pick([results[_key(codec, s)][field] for s in p["seeds"]]))

    criterion = {c: over_seeds(c, "final_loss_rel_change", loss_criterion) for c in p["codecs"]}
    reduction = {c: over_seeds(c, "bytes_reduction", min) for c in p["codecs"]}
    within = [c for c in p["codecs"] if criterion[c] <= 0.01]
    best = max(within, key=reduction.get) if within else min(p["codecs"], key=criterion.get)
    first = p["seeds"][0]  # times to target: the first seed's runs, beside (a)
    b0, c0 = results[_key("fp32", first)], results[_key(best, first)]
    t_sync = time_to(results["sync_every_step"], target)
    t_b, t_c = time_to(b0, target), time_to(c0, target)
    # if synchronous averaging never got there, its budget is a lower bound on its time
    sync_time = t_sync if t_sync is not None else results["sync_every_step"]["train_seconds"]

    def median_time(codec: str) -> float | None:
        times = [time_to_interpolated(results[_key(codec, s)], target) for s in p["seeds"]]
        return float(np.median(times)) if all(t is not None for t in times) else None

    sync_interp = time_to_interpolated(results["sync_every_step"], target)
    sync_interp = sync_interp if sync_interp is not None else sync_time
    m_b, m_c = median_time("fp32"), median_time(best)
    ideal = {s: results[f"ideal-seed{s}"]["final_heldout"] for s in p["seeds"]}
    vs_ideal = {
        c: [(results[_key(c, s)]["final_heldout"] - ideal[s]) / ideal[s] for s in p["seeds"]]
        for c in ["fp32", *p["codecs"]]
    }
    # what synchronous data parallelism moves to train as (i) does: each agent sends its fp32
    # gradient and receives the average, every step
    n_params = results[f"ideal-seed{first}"]["n_params"]
    dp_bytes = p["hybrid_rounds"] * p["H"] * p["workers"] * 2 * 4 * n_params
    headline = {
        # the median over seeds, on interpolated evaluations (the headline definition)
        "time_to_target_speedup_hybrid_median": sync_interp / m_b if m_b else 0.0,
        "time_to_target_speedup_compressed_median": sync_interp / m_c if m_c else 0.0,
        # against the ideal synchronous run (i), at equal data
        "loss_rel_diff_vs_ideal_sync": float(np.mean(vs_ideal[best])),
        "loss_rel_diff_vs_ideal_sync_worst": float(max(vs_ideal[best])),
        "loss_rel_diff_vs_ideal_sync_hybrid": float(np.mean(vs_ideal["fp32"])),
        "bytes_reduction_vs_sync_dp": dp_bytes
        / max(results[_key(best, s)]["bytes_moved"] for s in p["seeds"]),  # the worst seed
        # the earlier definition: the first seed's runs, first evaluation at the target
        "time_to_target_speedup_hybrid": sync_time / t_b if t_b else 0.0,
        "time_to_target_speedup_compressed": sync_time / t_c if t_c else 0.0,
        # bytes: the worst seed; loss: the upper end of the 95% interval of the mean change
        "bytes_reduction_compressed_vs_hybrid": reduction[best],
        "final_loss_rel_diff_compressed": criterion[best],
        # the same ratio without the coordinator's reads of the pushes (the accounting before
        # those were counted), for comparison with earlier runs
        "bytes_reduction_compressed_vs_hybrid_without_fold_reads": min(
            _without_fold(results[_key("fp32", s)]) / _without_fold(results[_key(best, s)])
            for s in p["seeds"]
        ),
        "best_codec": best,
        "seeds": len(p["seeds"]),
        **{f"bytes_reduction_{c}_vs_hybrid": reduction[c] for c in p["codecs"]},
        **{f"final_loss_rel_change_{c}_ci95_high": criterion[c] for c in p["codecs"]},
        **{
            f"final_loss_rel_change_{c}_mean": over_seeds(c, "final_loss_rel_change", np.mean)
            for c in p["codecs"]
        },
        # the worst single seed, beside the criterion (one seed's (b) can be lucky)
        **{
            f"final_loss_rel_diff_{c}_worst": over_seeds(c, "final_loss_rel_diff", max)
            for c in p["codecs"]
        },
        "sync_reached_target": t_sync is not None,
        "target_loss": target,
    }
    png = write_result(args.out, "hybrid", args.quick, p, results, headline)
    plot(results, target, png)
    rows = [
        [
            r["name"],
            r["rounds"],
            time_to(r, target) or float("nan"),
            r["final_heldout"],
            r["bytes_moved"] / 1e6,
            r["push_bytes"] / 1e6,
            r["fold_bytes"] / 1e6,
            r["commit_bytes"] / 1e6,
            r["pull_bytes"] / 1e6,
        ]
        for r in results.values()
    ]
    print_table(
        f"time to held-out loss {target} (2 agents; eval time excluded)",
        [
            "schedule",
            "rounds",
            "time to target s",
            "final held-out",
            "MB moved",
            "MB pushed",
            "MB folded",
            "MB committed",
            "MB pulled",
        ],
        rows,
    )
    print_table("headline", ["key", "value"], [[k, v] for k, v in headline.items()])


def plot(results: dict, target: float, png: str) -> None:
    """Left: held-out loss over time (first seed, and (a)). Right: each (c) run's bytes ratio
    and loss difference against (b) of its seed, with the target region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=[1.25, 1])
    colors: dict[str, str] = {}  # one colour per schedule, in both panels
    first = min((r["seed"] for r in results.values() if "seed" in r), default=None)
    for r in results.values():
        color = colors.setdefault(r.get("schedule", r["name"]), f"C{len(colors)}")
        if r["curve"] and r.get("seed", first) == first:
            t, loss, _ = zip(*r["curve"])
            label = f"{r['name']} ({r['bytes_moved'] / 1e6:.1f} MB)"
            ax.plot(t, loss, marker=".", color=color, label=label)
    ax.axhline(target, color="grey", ls="--", label=f"target {target}")
    ax.axhline(
        np.mean([r["baseline"] for r in results.values()]),
        color="black",
        ls=":",
        label="unigram baseline",
    )
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("held-out loss (nats/char)")
    ax.set_title(f"time to target (seed {first})")
    ax.legend(fontsize=7)

    runs = [r for r in results.values() if "final_loss_rel_change" in r]
    for schedule in dict.fromkeys(r["schedule"] for r in runs):
        mine = [r for r in runs if r["schedule"] == schedule]
        x = [r["bytes_reduction"] for r in mine]
        y = [100 * r["final_loss_rel_change"] for r in mine]
        bx.scatter(x, y, color=colors[schedule], label=f"{schedule}, per seed")
        for r, xi, yi in zip(mine, x, y):
            bx.annotate(
                f"{r['seed']}", (xi, yi), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
        if len(y) > 1:  # the mean and its 95% interval: the criterion is the upper end
            mean, high = np.mean(y), ci95_high(y)  # in %, as y
            bx.errorbar(
                [min(x)],
                [mean],
                yerr=[[high - mean], [high - mean]],
                color=colors[schedule],
                marker="*",
                ms=12,
                capsize=4,
                label=f"{schedule}, mean and 95% interval",
            )
    x_hi = max([8.5, *(r["bytes_reduction"] * 1.05 for r in runs)])
    bx.fill_between([8.0, x_hi], -1.0, 1.0, color="green", alpha=0.1, label="target: >= 8x, <= 1%")
    bx.axvline(8.0, color="grey", ls="--", lw=0.8)
    bx.axhline(1.0, color="grey", ls="--", lw=0.8)
    bx.axhline(0.0, color="black", lw=0.5)
    bx.set_xlim(min([7.5, *(r["bytes_reduction"] * 0.97 for r in runs)]), x_hi)
    changes = [100 * r["final_loss_rel_change"] for r in runs]
    bx.set_ylim(min([-0.5, *(c * 1.1 for c in changes)]), max([1.5, *(c * 1.1 for c in changes)]))
    bx.set_xlabel("bytes moved: (b) fp32 / (c), same seed")
    bx.set_ylabel("final held-out loss vs (b) of the same seed, %")
    bx.set_title("compressed (c) against uncompressed hybrid (b), per seed")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
