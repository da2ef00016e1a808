"""Cold start: a worker's join to its first completed agent task, with and without JAX's
persistent compilation cache and the agent's prewarm, in the same run.

- **cold** (the baseline): no compilation cache, no prewarm: the agent compiles its steps in its
  first task;
- **warm** (ours): the cache on a shared directory that an earlier worker filled (the
  ``cluster.compilation-cache`` setting, minimum compile time 0 so that our small programs are
  cached), and the prewarm: the worker compiles (from the cache) before it takes work.

Each repeat starts a fresh ``LocalCluster`` with no workers and our plugins, then times
``cluster.scale(1)`` to the result of the first agent task (the code model: load version 0's
parameters and train 5 local steps). Real worker processes. The worker's own breakdown: the
process until our setup (interpreter, Dask), JAX's import, the agent's build, compilation, and
in the task the parameter load (the "version restore") and the steps.

Target (issue 18): ``cold_start_reduction`` = 1 - warm / cold (medians) >= 0.7.

    python benchmarks/cold_start.py [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import dask.config
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, write_result
from distributed import Client, LocalCluster

from cluster_app.agent.spec import AgentSpec
from cluster_app.agent.worker import AgentPlugin, agent_cold_start
from cluster_app.cluster import worker_env
from cluster_app.runs.install import plugins_for

SPEC = AgentSpec.from_config(model="codelm")


def first_task(spec: AgentSpec, steps: int) -> dict:
    from cluster_app.agent.worker import _plugin

    t0 = time.perf_counter()
    agent = _plugin().agent_for(spec)
    agent.load(agent.init_params(), 0)
    t_load = time.perf_counter()
    agent.train(0, 0, 1, steps)
    return {"load_s": t_load - t0, "steps_s": time.perf_counter() - t_load}


def one(variant: str, cache: str) -> dict:
    with dask.config.set(
        {"cluster-app.cluster.compilation-cache": cache if variant == "warm" else None}
    ):
        env = worker_env()
    cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True, env=env,
                           dashboard_address=":0")  # fmt: skip
    try:
        with Client(cluster) as client:
            for plugin in plugins_for(SPEC):
                if isinstance(plugin, AgentPlugin):
                    plugin = AgentPlugin(SPEC, prewarm=variant == "warm")
                client.register_plugin(plugin)
            t0 = time.perf_counter()
            cluster.scale(1)
            fut = client.submit(first_task, SPEC, 5, key=f"agent-first-{variant}", pure=False)
            task = fut.result(timeout=600)
            total = time.perf_counter() - t0
            cold = client.submit(agent_cold_start, pure=False).result()
    finally:
        cluster.close()
    return {"total_s": total, **task, **cold}


def plot(raw: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ["process_to_setup_s", "import_s", "build_s", "compile_s", "load_s", "steps_s"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for row, variant in enumerate(("cold", "warm")):
        left = 0.0
        for k, part in enumerate(parts):
            width = float(np.median([r.get(part, 0.0) for r in raw[variant]]))
            ax.barh(row, width, left=left, color=f"C{k}", label=part if row == 0 else None)
            left += width
        total = float(np.median([r["total_s"] for r in raw[variant]]))
        ax.text(total, row, f"  total {total:.1f} s", va="center")
    ax.set_yticks([0, 1], ["cold: no cache, no prewarm", "warm: cache + prewarm"])
    ax.set(xlabel="seconds (medians): join to the first agent task", title="Worker cold start")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args("cold_start", (__doc__ or "").splitlines()[0])
    repeats = 2 if args.quick else 5
    tmp = tempfile.mkdtemp(prefix="bench-cold-", dir=os.environ.get("BENCH_TMP"))
    cache = os.path.join(tmp, "jax-cache")
    try:
        one("warm", cache)  # an earlier worker fills the shared cache (not measured)
        raw: dict[str, list[dict]] = {"cold": [], "warm": []}
        for _ in range(repeats):
            for variant in ("cold", "warm"):  # interleaved, so drift hits both
                raw[variant].append(one(variant, cache))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = lambda v, k: float(np.median([r.get(k, 0.0) for r in raw[v]]))  # noqa: E731
    headline = {
        "cold_start_s": med("cold", "total_s"),
        "warm_start_s": med("warm", "total_s"),
        "cold_start_reduction": 1.0 - med("warm", "total_s") / med("cold", "total_s"),
        "reduction_target_met": 1.0 - med("warm", "total_s") / med("cold", "total_s") >= 0.7,
        "first_steps_s_cold": med("cold", "steps_s"),
        "first_steps_s_warm": med("warm", "steps_s"),
        "compile_s_warm": med("warm", "compile_s"),
        "process_to_setup_s": med("cold", "process_to_setup_s"),
        "import_s": med("cold", "import_s"),
        "warm_cache_hits": all(
            r["cache_entries_after"] == r["cache_entries_before"] for r in raw["warm"]
        ),
    }
    params = {"repeats": repeats, "model": SPEC.model, "first_task_steps": 5}
    png = write_result(args.out, "cold_start", args.quick, params, raw, headline)
    plot(raw, png)
    print_table("cold_start headline", ["key", "value"], [[k, v] for k, v in headline.items()])


if __name__ == "__main__":
    main()
