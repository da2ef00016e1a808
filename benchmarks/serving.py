"""Serving latency and throughput over HTTP while the fleet trains, against two baselines.

Setup: a local cluster of 3 workers on the 2 cores (2 training agents and 1 hot standby, which
serves; the gateway sends batches to workers that run no training round) and the default code
model, trained briefly and committed to ``prod``. A durable training run keeps
going during the measurements (``ac.submit``). Closed-loop HTTP clients, in a separate process
(httpx), each ask for a 16-character completion of a real held-out code prompt, again as soon
as the last one is answered, for a fixed time at each concurrency (1, 10, 50, 200).

Conditions, in the same run:

- ``batched``: the gateway as shipped, during training;
- ``unbatched`` (**baseline**): the same gateway with batching off: one Dask task per request;
- ``paused`` (**baseline**): batched, with the training run paused;
- ``ab``: batched during training, with an A/B split (prod 0.9 / feature/good 0.1) active.

Reported per condition and level: p50/p99 latency, requests/s, the share answered (200) and the
share answered or failed with a clear error (a JSON error body). Then the **rollback**: with 10
clients on a split ``prod`` 0.5 / ``feature/bad`` 0.5 (prod made worse on purpose), the seconds
from the split starting to its automatic rollback.

Targets (``docs/serving.md``): ``p99_ms_50_clients`` < 100 ms during training; the same with
A/B (``p99_ms_50_clients_ab``); ``throughput_ratio_vs_unbatched`` >= 5 at 50 clients;
``answered_fraction`` 1.0; ``rollback_s`` <= 10.

    python benchmarks/serving.py [--quick] [--out PATH]
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, percentile, print_table, write_result

CONDITIONS = ("batched", "unbatched", "paused", "ab")


def _load(url: str, concurrency: int, seconds: float, prompts: list[str], tag: str, q) -> None:
    """Closed-loop clients (a process of its own, aiohttp: a client that is not itself the
    bottleneck at 200 connections): ``[(start, seconds, status, clear), ...]``."""
    import aiohttp

    async def client(i: int, http, out: list, end: float) -> None:
        k = i
        while time.monotonic() < end:
            body = {"prompt": prompts[k % len(prompts)], "max_tokens": 16, "user": f"{tag}-{i}"}
            k += concurrency
            t0 = time.monotonic()
            try:
                async with http.post(f"{url}/v1/completions", json=body) as r:
                    payload = await r.json(content_type=None)
                    clear = r.status == 200 or "error" in payload
                    out.append((t0, time.monotonic() - t0, r.status, clear))
            except Exception as e:  # a dropped connection or a body that is not JSON: unclear
                out.append((t0, time.monotonic() - t0, 0, False, repr(e)[:200]))

    async def main() -> list:
        out: list = []
        connector = aiohttp.TCPConnector(limit=concurrency + 8)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            end = time.monotonic() + seconds
            await asyncio.gather(*(client(i, http, out, end) for i in range(concurrency)))
        return out

    q.put(asyncio.run(main()))


def load(url: str, concurrency: int, seconds: float, prompts: list[str], tag: str) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_load, args=(url, concurrency, seconds, prompts, tag, q))
    proc.start()
    rows = q.get(timeout=seconds + 300)
    proc.join(60)
    lat = [r[1] for r in rows if r[2] == 200]
    failures = sorted({r[4] for r in rows if len(r) > 4})
    n = len(rows)
    return {
        "concurrency": concurrency,
        "requests": n,
        "ok": len(lat),
        "answered_fraction": len(lat) / n if n else 0.0,
        "clear_fraction": sum(1 for r in rows if r[3]) / n if n else 0.0,
        "failures": failures[:5],
        "statuses": {
            str(s): sum(1 for r in rows if r[2] == s) for s in sorted({r[2] for r in rows})
        },
        "rps": len(lat) / seconds,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "latencies_ms": [round(x * 1e3, 2) for x in lat[:: max(1, len(lat) // 2000)]],
    }


def prompts_from_heldout(n: int = 256) -> list[str]:
    """Real held-out code: ``n`` 40-character windows ending where a completion would start."""
    from cluster_app.agent.data import decode, load_dataset
    from cluster_app.agent.spec import AgentSpec

    spec = AgentSpec.from_config(model="codelm")
    data = load_dataset(spec.dataset, **spec.data_kwargs)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(data.eval) - 40, size=n)
    return [decode(data.eval[s : s + 40]) for s in starts]


def setup(ac, p: dict):

    v = ac.versions
    run = ac.train(rounds=p["setup_rounds"], local_steps=p["local_steps"], progress=False)
    prod = v.commit_run(run.run_id, branch="prod", message="benchmark model")
    params = v.params("prod")
    rng = np.random.default_rng(0)
    for name, scale in (("feature/good", 1e-4), ("feature/bad", 0.5)):
        changed = {
            k: x + rng.normal(0, scale, x.shape).astype(np.float32) for k, x in params.items()
        }
        v.commit(changed, branch=name, config=prod.config, message=name, evaluate=False)
    return prod


def warmed(*handles, timeout: float = 600) -> None:
    """Wait until each gateway's workers hold its split's versions, compiled."""
    deadline = time.monotonic() + timeout
    while not all(h.gateway.warmed for h in handles) and time.monotonic() < deadline:
        time.sleep(0.2)


def measure(ac, p: dict, prompts: list[str]) -> dict:
    from cluster_app.serving.gateway import Gateway
    from cluster_app.serving.server import ServingHandle
    from cluster_app.serving.spec import ServeSpec

    train = ac.submit(rounds=100_000, local_steps=p["local_steps"], standby=1)
    while train.status().get("round", -1) < 1:  # training is under way
        time.sleep(0.5)
    out: dict = {c: [] for c in CONDITIONS}
    address = ac.scheduler_address
    batched = ac.serve("prod", port=0)
    unbatched = ServingHandle(
        Gateway(
            address, ac.store_url, "prod", ServeSpec.from_config(name="unbatched"), batching=False
        ),
        port=0,
    )
    warmed(batched, unbatched)  # the served version is loaded and compiled on every worker
    for level in p["levels"]:
        for cond, handle in (("batched", batched), ("unbatched", unbatched)):
            r = load(handle.url, level, p["seconds"], prompts, f"{cond}{level}")
            out[cond].append(r)
            print(
                f"{cond:>9} x{level:<3}: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                f"{r['rps']:.0f} req/s, answered {r['answered_fraction']:.1%} {r['statuses']} "
                f"{r['failures'][:1]}",
                flush=True,
            )
    batched.set_split({"prod": 0.9, "feature/good": 0.1})
    warmed(batched)
    for level in p["levels"]:
        r = load(batched.url, level, p["seconds"], prompts, f"ab{level}")
        out["ab"].append(r)
        print(
            f"{'ab':>9} x{level:<3}: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms", flush=True
        )
    train.pause()
    while train.status().get("phase") not in ("paused", "finished", "stopped", "failed"):
        time.sleep(0.5)
    batched.set_split({"prod": 1.0})
    for level in p["levels"]:
        r = load(batched.url, level, p["seconds"], prompts, f"paused{level}")
        out["paused"].append(r)
        print(
            f"{'paused':>9} x{level:<3}: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
            flush=True,
        )
    train.resume()
    # the rollback: a made-worse candidate under 10 clients, during training
    rollbacks = []
    for rep in range(p["rollback_repeats"]):
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        proc = ctx.Process(
            target=_load, args=(batched.url, 10, p["rollback_window"], prompts, f"rb{rep}", q)
        )
        proc.start()
        time.sleep(1.0)
        started = time.time()
        split = batched.set_split({"prod": 0.5, "feature/bad": 0.5})
        while batched.split()["state"] == "active" and time.time() - started < p["rollback_window"]:
            time.sleep(0.05)
        now = batched.split()
        event = next(
            (e for e in now["events"] if e["kind"] == "rollback" and e["split"] == split["id"]),
            None,
        )
        rollbacks.append(
            {
                "rolled_back": now["state"] == "rolled_back",
                "seconds": (event["time"] - started) if event else None,
                "reason": now.get("reason"),
            }
        )
        q.get(timeout=p["rollback_window"] + 120)
        proc.join(60)
        print(f" rollback {rep}: {rollbacks[-1]}", flush=True)
    train.stop()
    unbatched.stop()
    batched.stop()
    ac.serving = None
    return {"load": out, "rollbacks": rollbacks}


def plot(raw: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for cond in CONDITIONS:
        rows = raw["load"][cond]
        levels = [r["concurrency"] for r in rows]
        axes[0].plot(levels, [r["p99_ms"] for r in rows], marker="o", label=f"{cond} p99")
        axes[0].plot(levels, [r["p50_ms"] for r in rows], marker=".", ls=":", label=f"{cond} p50")
        axes[1].plot(levels, [r["rps"] for r in rows], marker="o", label=cond)
    axes[0].axhline(100, color="k", lw=0.8, ls="--", label="p99 target")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="concurrent clients",
        ylabel="ms",
        title="latency (16-char completions, training on)",
    )
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].set(
        xscale="log",
        xlabel="concurrent clients",
        ylabel="answered requests / s",
        title="throughput",
    )
    axes[1].legend(fontsize=8)
    rb = [r["seconds"] for r in raw["rollbacks"] if r["seconds"] is not None]
    axes[2].bar(range(len(rb)), rb, color="C3")
    axes[2].axhline(10, color="k", lw=0.8, ls="--", label="target")
    axes[2].set(xlabel="repeat", ylabel="s", title="split start -> automatic rollback")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    import dask

    from cluster_app import AgentCluster

    args = parse_args("serving", __doc__.splitlines()[0])
    q = args.quick
    p = {
        "levels": [1, 10, 50] if q else [1, 10, 50, 200],
        "seconds": 3.0 if q else 10.0,
        "setup_rounds": 2 if q else 4,
        "local_steps": 20 if q else 50,
        "rollback_repeats": 1 if q else 3,
        "rollback_window": 30.0,
        "workers": 3,
    }
    tmp = tempfile.mkdtemp(prefix="bench-serving-", dir=os.environ.get("BENCH_TMP"))
    prompts = prompts_from_heldout()
    try:
        with (
            dask.config.set({"cluster-app.cluster.dashboard-address": ":0"}),
            AgentCluster(
                n_workers=p["workers"], store_url=os.path.join(tmp, "store"), quiet=True
            ) as ac,
        ):
            prod = setup(ac, p)
            raw = measure(ac, p, prompts)
            raw["prod"] = {"id": prod.id, "metrics": prod.metrics}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by = {c: {r["concurrency"]: r for r in raw["load"][c]} for c in CONDITIONS}
    top = 50
    rb = [r["seconds"] for r in raw["rollbacks"]]
    everything = [r for c in CONDITIONS for r in raw["load"][c]]
    total = sum(r["requests"] for r in everything)
    headline = {
        "p99_ms_50_clients": by["batched"][top]["p99_ms"],
        "p50_ms_50_clients": by["batched"][top]["p50_ms"],
        "p99_ms_50_clients_ab": by["ab"][top]["p99_ms"],
        "p99_ms_50_clients_paused": by["paused"][top]["p99_ms"],
        "p99_ms_50_clients_unbatched": by["unbatched"][top]["p99_ms"],
        "throughput_ratio_vs_unbatched": by["batched"][top]["rps"]
        / max(by["unbatched"][top]["rps"], 1e-9),
        "rps_50_clients": by["batched"][top]["rps"],
        "answered_fraction": sum(r["ok"] for r in everything) / total,
        "clear_fraction": sum(r["clear_fraction"] * r["requests"] for r in everything) / total,
        "rollback_s": float(np.median(rb)) if rb and all(x is not None for x in rb) else None,
        "rollback_s_max": max(rb) if rb and all(x is not None for x in rb) else None,
    }
    png = write_result(args.out, "serving", q, p, raw, headline)
    plot(raw, png)
    rows = [
        [
            c,
            lv,
            by[c][lv]["p50_ms"],
            by[c][lv]["p99_ms"],
            by[c][lv]["rps"],
            by[c][lv]["answered_fraction"],
        ]
        for c in CONDITIONS
        for lv in p["levels"]
    ]
    print_table("serving", ["condition", "clients", "p50 ms", "p99 ms", "req/s", "answered"], rows)
    print_table("headline", ["key", "value"], [[k, v] for k, v in headline.items()])


if __name__ == "__main__":
    main()
